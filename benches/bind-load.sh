#!/usr/bin/env bash
# Measures the spine end to end, in release builds, on this machine:
#   1. how long `qrpool up` takes from start to a ready /readyz on embedded defaults
#      (including filling the pool with its default 2,000 codes);
#   2. binds/s and latency on the embedded backends;
#   3. binds/s and latency on Kafka (tansu) + Redis + PostgreSQL, as many as 64 clients get
#      (closed load), then the latency at half the 10,000 binds/s target (open load, RATE);
#   4. PostgreSQL's own single-row insert rate (pgbench), the floor.
# Each run gets a fresh data folder, database, topic and Redis prefix, and is stopped after.
#
#   benches/bind-load.sh                       REQUESTS=20000 CONCURRENCY=64 RATE=5000 by default
#   REQUESTS=5000 CONCURRENCY=32 benches/bind-load.sh
#   ONLY=kafka QRPOOL_BIN=/tmp/qrpool-before benches/bind-load.sh   step 3 only, another build
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"
cd "$repo"

requests=${REQUESTS:-20000}
concurrency=${CONCURRENCY:-64}
rate=${RATE:-5000}
port=${PORT:-18080}
base=http://127.0.0.1:$port
work=$(mktemp -d)
pid=
cleanup() {
  # Tolerates failure: under `set -e` the killed server's exit status would end the trap early.
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

say "building release binaries"
cargo build --release --locked --quiet -p qrpool -p benches
qrpool=${QRPOOL_BIN:-$repo/target/release/qrpool}
only=${ONLY:-all}
load=$repo/target/release/bind-load

# Starts `qrpool up` with the given environment and waits until /readyz answers 200.
# Leaves the seconds that took in $ready_after, and an API key of the store (one bench app,
# no rate limit to speak of) in $key.
start_up() {
  local started now
  key=$(env "$@" "$qrpool" keys create --tenant bench --scope bind,read --rate 10000000 2>/dev/null)
  started=$(date +%s.%N)
  env "$@" QRPOOL_SERVER__LISTEN=127.0.0.1:$port QRPOOL_TELEMETRY__FILTER=warn \
    "$qrpool" up >"$work/up.log" 2>&1 &
  pid=$!
  for ((i = 0; i < 1200; i++)); do
    if curl -sf "$base/readyz" >/dev/null 2>&1; then
      now=$(date +%s.%N)
      ready_after=$(echo "$now - $started" | bc)
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$work/up.log" >&2; return 1; }
    sleep 0.05
  done
  echo "qrpool did not become ready" >&2
  return 1
}

# Where the codes of the runs so far came from ($1 binds in all): a bind that found the pool's
# buffer empty drew a code on demand (rendered there and then), which is not the pool path
# this script is for.
codes_drawn() {
  local on_demand
  on_demand=$(curl -sf "$base/metrics" | awk '/^binder_on_demand_codes_total/ { sum += $2 } END { printf "%d", sum }')
  printf '%-30s %8d of %d codes drawn on demand (pool buffer empty at the bind)\n' "" "$on_demand" "$1"
}

stop_up() {
  kill -TERM "$pid" && wait "$pid" || true
  pid=
}

apt_install bc curl

depth=$((requests + 2 * concurrency + 100))
kafka_depth=$((depth + rate * 10))

if [ "$only" = all ]; then
say "time for \`qrpool up\` to serve, embedded defaults (pool filled to 2,000)"
start_up QRPOOL_EMBEDDED__DATA_DIR="$work/defaults"
printf 'up ready in %.2f s (%s)\n' "$ready_after" "$(grep -o 'topped the pool up.*' "$work/up.log")"
stop_up

say "binds on the embedded backends ($requests binds, $concurrency concurrent)"
start_up QRPOOL_EMBEDDED__DATA_DIR="$work/embedded" QRPOOL_PREGEN__TARGET_DEPTH=$depth \
  QRPOOL_PREGEN__LOW_WATER=0
"$load" --base "$base" --key "$key" --requests "$requests" --concurrency "$concurrency" --label "embedded (SQLite)"
codes_drawn "$requests"
stop_up
fi

say "binds on Kafka (tansu) + Redis + PostgreSQL ($requests binds, $concurrency concurrent)"
start_redis
start_postgres
start_kafka_protocol_broker
run_id=bench_$(date +%s)_$$
PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE qrpool_$run_id" postgres
# The producer's own batching, as in production. (The tests write single-record batches,
# because tansu reads a multi-record batch's high watermark low — see ARCHITECTURE.md — and
# they check the pool depth; here the depth is only filled once. tansu's memory engine also
# lists every stored batch of a partition at each fetch, so single-record batches make its
# fetches slower the more codes the topic holds.)
start_up QRPOOL_POOL__BACKEND=kafka QRPOOL_STORE__BACKEND=postgres \
  QRPOOL_POSTGRES__URL="postgres://postgres:postgres@127.0.0.1:5432/qrpool_$run_id" \
  QRPOOL_REDIS__URL=redis://127.0.0.1:6379 QRPOOL_REDIS__KEY_PREFIX="qrpool-$run_id:" \
  QRPOOL_KAFKA__POOL_TOPIC="qrpool-$run_id" QRPOOL_KAFKA__GROUP_ID="qrpool-$run_id" \
  QRPOOL_KAFKA__SESSION_TIMEOUT_MS=6000 \
  QRPOOL_PREGEN__TARGET_DEPTH=$kafka_depth QRPOOL_PREGEN__LOW_WATER=0
"$load" --base "$base" --key "$key" --requests "$requests" --concurrency "$concurrency" --label "Kafka + Redis + PostgreSQL"
codes_drawn "$requests"
# The same pool holds codes for this run too (see $kafka_depth); ten seconds at the rate.
"$load" --base "$base" --key "$key" --requests "$((rate * 10))" --rate "$rate" --concurrency 1024 \
  --label "Kafka + Redis + PostgreSQL"
codes_drawn "$((requests + rate * 10))"
# Group commit at work: how many transactions those binds took.
commits=$(curl -sf "$base/metrics" | awk '/^bindings_commit_batch_size_count/ { print $2 }')
printf '%-30s %8s commits for %d binds (warm-up included)\n' "" "$commits" "$((requests + rate * 10 + 2))"
stop_up
if [ "$only" = all ]; then
say "PostgreSQL's own rate of single-row durable inserts (pgbench, $concurrency clients, 10 s): the floor"
# One autocommit INSERT per transaction, a row the size of a binding: what the database does
# without qrpool's group commit. The same server, database and fsync settings as above.
PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -qc \
  "CREATE TABLE floor (request_id TEXT PRIMARY KEY, tenant TEXT, params JSONB, created_at TIMESTAMPTZ)" \
  "qrpool_$run_id"
cat >"$work/floor.sql" <<'SQL'
INSERT INTO floor VALUES (md5(random()::text || clock_timestamp()::text), 'bench', '{"listing": "L-1001", "n": 1}', now());
SQL
PGPASSWORD=postgres pgbench -n -h 127.0.0.1 -U postgres -c "$concurrency" -j 2 -T 10 \
  -f "$work/floor.sql" "qrpool_$run_id" >"$work/pgbench.log" 2>&1 || { cat "$work/pgbench.log" >&2; exit 1; }
tps=$(awk '/^tps = / { printf "%d", $3 }' "$work/pgbench.log")
latency=$(awk '/^latency average/ { print $4 }' "$work/pgbench.log")
printf '%-30s %8s inserts/s   latency average %s ms   (%s clients)\n' "pgbench single-row insert" "$tps" "$latency" "$concurrency"
fi
PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE qrpool_$run_id WITH (FORCE)" postgres
redis-cli --scan --pattern "qrpool-$run_id:*" | xargs -r redis-cli del >/dev/null
