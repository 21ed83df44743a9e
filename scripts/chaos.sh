#!/usr/bin/env bash
# The chaos test with more kills: SIGKILLs fhirhose at seeded random points of a Bulk Data
# export from the sandbox (faults on) and checks the lake and the Kafka topics against a clean
# run (tests/chaos.rs). Starts a tansu broker on 127.0.0.1 unless FHIRHOSE_TEST_KAFKA_BROKERS
# is set, and stops what it started (by PID).
#
#   KILLS=50 SEED=7 bash scripts/chaos.sh        # defaults: KILLS=50, SEED=1
#   PATIENTS=40 ...                              # more data (default: scales with KILLS)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

KILLS="${KILLS:-50}"
SEED="${SEED:-1}"
PATIENTS="${PATIENTS:-$(( KILLS < 10 ? 10 : KILLS ))}"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

if [ -z "${FHIRHOSE_TEST_KAFKA_BROKERS:-}" ]; then
  command -v tansu >/dev/null || bash scripts/install-deps.sh
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 150); do
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1', $port)))" && break
    sleep 0.2
  done
  export FHIRHOSE_TEST_KAFKA_BROKERS="127.0.0.1:$port"
fi

echo "chaos: KILLS=$KILLS SEED=$SEED PATIENTS=$PATIENTS broker $FHIRHOSE_TEST_KAFKA_BROKERS"
CHAOS_KILLS="$KILLS" CHAOS_SEED="$SEED" CHAOS_PATIENTS="$PATIENTS" \
  cargo nextest run --locked --test chaos --no-capture "$@"
