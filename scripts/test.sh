#!/usr/bin/env bash
# The test command (README): installs what is missing, starts a Kafka-protocol broker (tansu,
# in-memory storage) and an S3 API endpoint (moto) on 127.0.0.1, runs the whole test suite
# against them, and stops what it started (by PID) whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

bash scripts/install-deps.sh

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
wait_port() {
  for _ in $(seq 1 150); do
    if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1', $1)))"; then return 0; fi
    sleep 0.2
  done
  echo "service on port $1 did not start; its log:" >&2
  cat "$2" >&2
  return 1
}

kport=$(free_port)
tansu broker \
  --listener-url "tcp://127.0.0.1:$kport" \
  --advertised-listener-url "tcp://127.0.0.1:$kport" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
pids+=($!)

sport=$(free_port)
moto_server -H 127.0.0.1 -p "$sport" >"$work/moto.log" 2>&1 &
pids+=($!)

wait_port "$kport" "$work/tansu.log"
wait_port "$sport" "$work/moto.log"

export FHIRHOSE_TEST_KAFKA_BROKERS="127.0.0.1:$kport"
export AWS_ENDPOINT_URL="http://127.0.0.1:$sport"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export FHIRHOSE_TEST_S3_BUCKET=fhirhose-test
python3 - <<PY
import boto3
boto3.client("s3", endpoint_url="$AWS_ENDPOINT_URL").create_bucket(Bucket="$FHIRHOSE_TEST_S3_BUCKET")
PY
echo "broker 127.0.0.1:$kport, s3 $AWS_ENDPOINT_URL bucket $FHIRHOSE_TEST_S3_BUCKET"

# The SQL-on-FHIR conformance suite through the CLI (report in target/).
mkdir -p target
cargo run --locked --quiet -- views conformance \
  tests/data/sql-on-fhir-v2/upstream-sql-on-fhir.js/tests --report target/sof-report.json
cargo run --locked --quiet -- views conformance \
  tests/data/sql-on-fhir-v2/upstream-sql-on-fhir.js/newer-indexed --report target/sof-report-newer.json

cargo nextest run --workspace --locked --no-fail-fast "$@"
