#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, and nothing twice:
#  - C build tools for librdkafka (rdkafka-sys builds it from source) and SQLite (bundled);
#  - tansu, a Kafka-protocol broker (crates.io), with the `dynostore` feature for `memory://`;
#  - moto's S3 server (PyPI).
set -euo pipefail

TANSU_VERSION=0.6.0
MOTO_VERSION=5.2.1

have() { command -v "$1" >/dev/null 2>&1; }

if ! have cc || ! have make || ! have pkg-config; then
  if have apt-get; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends build-essential pkg-config zlib1g-dev python3-pip >/dev/null
  fi
fi

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! have tansu && [ ! -x "$CARGO_BIN/tansu" ]; then
  echo "installing tansu $TANSU_VERSION (takes about 12 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked
fi

if ! have moto_server || ! python3 -c "import moto, flask, flask_cors, boto3" 2>/dev/null; then
  echo "installing moto[server] $MOTO_VERSION"
  python3 -m pip install --quiet "moto[server]==$MOTO_VERSION" || python3 -m pip install --quiet "moto[server]"
fi
