#!/usr/bin/env bash
# The pipeline benchmark of issue 8 (README: "Benchmarks"). In one run, on the same NDJSON
# corpus, it measures wall time, peak RSS and CPU% (/usr/bin/time -v) of:
#   1. fhirhose normalize only: `fhirhose ingest --views-only` into a temporary lake (all 25
#      canonical views → zstd Parquet, the issue's "NDJSON → all canonical views → Parquet");
#      and, for reference, `fhirhose ingest` without a broker (raw copy + `resources` table +
#      the 25 views);
#   2. fhirhose full pipeline: the same plus Kafka events to a real broker (tansu);
#   3. DuckDB doing the same flattening: read_ndjson + hand-written SQL for each canonical
#      view (duckdb/<view>.sql) + COPY TO parquet (zstd), 2 threads; row counts per view are
#      checked against fhirhose's tables;
#   4. the parse ceiling: the ingest framer + simd-json tape parse alone, all cores
#      (examples/parse_ceiling.rs), and serde_json on the same lines for the simd/serde ratio;
#   5. the broker ceiling: a bare rdkafka producer sending the same lines with fhirhose's
#      producer settings (examples/bare_producer.rs);
# then prints MB/s, resources/s, peak RSS, CPU% and the issue's ratios.
#
# Usage: bash benches/pipeline/run.sh [--input DIR]
#   SIZE_GB=1          size of the generated corpus (sandbox generator, ~36 KB per patient)
#   SEED=1             generator seed
#   --input DIR        use an existing folder of .ndjson/.ndjson.gz files instead
#   SCALE=10           linearity mode: also runs normalize on a SCALE× corpus and prints the
#                      time ratio (target ≤ 1.05 × SCALE) and both peak RSS
#   KAFKA_COMPRESSION  for fhirhose and the bare producer (default zstd, fhirhose's default)
#   FHIRHOSE_TEST_KAFKA_BROKERS  a broker to use; unset: tansu (memory storage) is started on
#                      a free 127.0.0.1 port and stopped at the end
#   CHECK_CELLS=1      also compare DuckDB's and fhirhose's views cell by cell (slower)
#   BENCH_WORK=DIR     where lakes and outputs go (default: a temp dir, removed at the end)
# Generated corpora are cached under $CARGO_TARGET_DIR/bench-corpus/ for reruns.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

SIZE_GB=${SIZE_GB:-1}
SEED=${SEED:-1}
SCALE=${SCALE:-1}
KAFKA_COMPRESSION=${KAFKA_COMPRESSION:-zstd}
INPUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --input) INPUT=$(cd "$2" && pwd); shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$INPUT" ] && [ "$SCALE" != 1 ]; then
  echo "SCALE needs generated corpora (drop --input)" >&2; exit 2
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KEEP_WORK=${BENCH_WORK:+1}
WORK=${BENCH_WORK:-$(mktemp -d /tmp/fhirhose-bench.XXXXXX)}
mkdir -p "$WORK"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -z "$KEEP_WORK" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

# --- tools -----------------------------------------------------------------------------
if [ ! -x /usr/bin/time ]; then
  echo "installing GNU time"; apt-get update -qq && apt-get install -y -qq time >/dev/null
fi
if ! python3 -c 'import duckdb' 2>/dev/null; then
  echo "installing duckdb (PyPI)"; python3 -m pip install --quiet duckdb
fi
DUCKDB_VERSION=$(python3 -c 'import duckdb; print(duckdb.__version__)')

echo "== building (release)"
cargo build --release --locked --quiet -p fhirhose -p fhirhose-sandbox \
  --bin fhirhose --example gen_ndjson --example parse_ceiling --example bare_producer
BIN=$CARGO_TARGET_DIR/release
FHIRHOSE=$BIN/fhirhose

# --- corpus ----------------------------------------------------------------------------
gen_corpus() { # patients -> prints the corpus dir
  local patients=$1 dir="$CARGO_TARGET_DIR/bench-corpus/p$1-s$SEED"
  if [ ! -e "$dir/.done" ]; then
    rm -rf "$dir"
    echo "== generating $patients patients into $dir" >&2
    "$BIN/examples/gen_ndjson" "$dir" "$patients" "$SEED" | tail -1 >&2
    touch "$dir/.done"
  fi
  echo "$dir"
}
if [ -n "$INPUT" ]; then
  CORPUS=$INPUT
else
  PATIENTS=$(python3 -c "print(max(1, round($SIZE_GB * 28000)))")
  CORPUS=$(gen_corpus "$PATIENTS")
fi
echo "== corpus $CORPUS: $(du -sh "$CORPUS" | cut -f1)"

# --- broker ----------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
BROKERS=${FHIRHOSE_TEST_KAFKA_BROKERS:-}
BROKER_NOTE="given ($BROKERS)"
if [ -z "$BROKERS" ]; then
  if ! command -v tansu >/dev/null; then bash scripts/install-deps.sh; fi
  kport=$(free_port)
  tansu broker --listener-url "tcp://127.0.0.1:$kport" --advertised-listener-url "tcp://127.0.0.1:$kport" \
    --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 150); do
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1', $kport)))" && break
    sleep 0.2
  done
  BROKERS=127.0.0.1:$kport
  BROKER_NOTE="tansu $(tansu --version 2>/dev/null | head -1 | awk '{print $NF}') memory storage, started by run.sh"
fi

# --- runs ------------------------------------------------------------------------------
measure() { # NAME CMD... : stdout → NAME.out, stderr → NAME.err, /usr/bin/time -v → NAME.time
  local name=$1; shift
  echo "== $name"
  if ! /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"; then
    echo "$name failed; the end of its stderr:" >&2
    tail -20 "$WORK/$name.err" >&2
    exit 1
  fi
}
warm() { find "$1" -type f -name '*.ndjson*' -exec cat {} + >/dev/null; } # page cache, as for every run

RUN=$(date +%s)
warm "$CORPUS"
measure parse_tape "$BIN/examples/parse_ceiling" --parser tape "$CORPUS"
measure parse_serde_value "$BIN/examples/parse_ceiling" --parser serde-value "$CORPUS"
measure parse_serde_ignored "$BIN/examples/parse_ceiling" --parser serde-ignored "$CORPUS"
measure normalize env -u FHIRHOSE_KAFKA_BROKERS "$FHIRHOSE" ingest --views-only --lake "$WORK/lake-normalize" \
  --summary-json "$WORK/normalize.summary.json" --log-level warn "$CORPUS"
measure ingest env -u FHIRHOSE_KAFKA_BROKERS "$FHIRHOSE" ingest --lake "$WORK/lake-ingest" \
  --state "$WORK/state-ingest.db" --summary-json "$WORK/ingest.summary.json" --log-level warn "$CORPUS"
rm -rf "$WORK/lake-ingest"
measure duckdb python3 benches/pipeline/duckdb_views.py --input "$CORPUS" --out "$WORK/duckdb" \
  --threads 2 --counts "$WORK/duckdb.counts.json"
measure bare_producer "$BIN/examples/bare_producer" --brokers "$BROKERS" \
  --compression "$KAFKA_COMPRESSION" --topic-prefix "bare$RUN" "$CORPUS"
measure full "$FHIRHOSE" ingest --lake "$WORK/lake-full" --state "$WORK/state-full.db" \
  --kafka-brokers "$BROKERS" --topic-prefix "full$RUN" --kafka-compression "$KAFKA_COMPRESSION" \
  --summary-json "$WORK/full.summary.json" --log-level warn "$CORPUS"
rm -rf "$WORK/lake-full"

LINEARITY=""
if [ "$SCALE" != 1 ]; then
  BIG=$(gen_corpus $((PATIENTS * SCALE)))
  warm "$BIG"
  measure normalize_x$SCALE env -u FHIRHOSE_KAFKA_BROKERS "$FHIRHOSE" ingest --views-only --lake "$WORK/lake-x$SCALE" \
    --summary-json "$WORK/normalize_x$SCALE.summary.json" --log-level warn "$BIG"
  rm -rf "$WORK/lake-x$SCALE"
  LINEARITY="--scale $SCALE"
fi

CELLS=""
if [ "${CHECK_CELLS:-0}" = 1 ]; then CELLS="--cells"; fi
python3 benches/pipeline/report.py --work "$WORK" --corpus "$CORPUS" $LINEARITY $CELLS \
  --note "broker: $BROKER_NOTE; kafka compression $KAFKA_COMPRESSION; duckdb $DUCKDB_VERSION (python), 2 threads; $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM"
