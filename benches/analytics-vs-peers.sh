#!/usr/bin/env bash
# The embedded analytics store against its peers, on this machine, over the same events:
#
#   1. EVENTS realistic scan events (analytics::synthetic: TENANTS tenants, Zipf keys, phones,
#      bots, returning visitors, DAYS days), written as the scan writer writes them;
#   2. qrpool's ingest of them into Parquet by day and tenant, on ONE core (taskset), then the
#      merge of each finished day into one file;
#   3. the dashboard's queries for TENANT over the DAYS days — time series by day, top
#      countries, devices, browsers, referrers, QR vs click, top keys — RUNS times each, by
#      qrpool's engine, by chDB (ClickHouse in-process) over the same Parquet files, and by
#      SQLite over a row table with an index on (tenant, day).
#
#   benches/analytics-vs-peers.sh     EVENTS=10000000 TENANTS=50 DAYS=30 RUNS=15 by default
#   PEERS=chdb leaves SQLite out (it takes seconds a query: minutes for a run).
#   DIR=target/analytics-bench keeps the generated events between runs (GENERATE=1 remakes
#   them); INGEST=0 reuses the ingested store.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"
cd "$repo"

events=${EVENTS:-10000000}
tenants=${TENANTS:-50}
days=${DAYS:-30}
runs=${RUNS:-15}
tenant=${TENANT:-tenant-000}
first_day=${FIRST_DAY:-2026-11-01}
dir=${DIR:-$repo/target/analytics-bench/$events-$tenants}

python_with_chdb
apt_install util-linux
say "building the release binary of the bench"
cargo build --release --locked --quiet -p benches --bin analytics-bench
bench=$repo/target/release/analytics-bench

if [ "${GENERATE:-0}" = 1 ] || [ ! -d "$dir/scans" ]; then
  rm -rf "$dir"
  say "generating $events events ($tenants tenants, $days days) into $dir"
  "$bench" generate --dir "$dir" --events "$events" --tenants "$tenants" --days "$days" --first-day "$first_day"
  rm -rf "$dir/sqlite"
fi
if [ "${INGEST:-1}" = 1 ] || [ ! -d "$dir/analytics" ]; then
  rm -rf "$dir/analytics"
  say "qrpool ingest on one core (taskset -c 0, RAYON_NUM_THREADS=1)"
  taskset -c 0 env RAYON_NUM_THREADS=1 "$bench" ingest --dir "$dir"
fi
du -sh "$dir/scans" "$dir/analytics" | sed 's/^/  /'

results=$(mktemp)
trap 'rm -f "$results"' EXIT
say "the dashboard's queries for $tenant, $days days, $runs runs each"
"$bench" query --dir "$dir" --tenant "$tenant" --first-day "$first_day" --days "$days" --runs "$runs" \
  | sed 's/^{/{"engine": "qrpool", /' >>"$results"
say "chDB over the same Parquet files"
"$chdb_python" benches/peers/analytics_peers.py --dir "$dir" --tenant "$tenant" --first-day "$first_day" \
  --days "$days" --runs "$runs" --engines chdb >>"$results"
if [[ ",${PEERS:-chdb,sqlite}," == *,sqlite,* ]]; then
  say "SQLite, row table with an index on (tenant, day) (loaded once, then kept in $dir/sqlite)"
  "$chdb_python" benches/peers/analytics_peers.py --dir "$dir" --tenant "$tenant" --first-day "$first_day" \
    --days "$days" --runs "$runs" --engines sqlite >>"$results"
fi

"$chdb_python" - "$results" "$tenant" <<'PYTHON'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {}
for row in rows:
    by.setdefault(row["query"], {})[row["engine"]] = row
scans = next((r["scans"] for r in rows if r["engine"] == "qrpool"), None)
print("\n%s: %s scans in the range (bots left out)\n" % (sys.argv[2], scans))
print("| query | qrpool median (fastest) | chDB median | SQLite median | qrpool ÷ chDB | SQLite ÷ qrpool |")
print("| --- | --- | --- | --- | --- | --- |")
for query, engines in by.items():
    q, c, s = engines.get("qrpool"), engines.get("chdb"), engines.get("sqlite")
    cell = lambda r: "%.1f ms" % r["median_ms"] if r else "-"
    print("| %s | %.1f ms (%.1f) | %s | %s | %s | %s |" % (
        query, q["median_ms"], q["fastest_ms"], cell(c), cell(s),
        "%.2f×" % (q["median_ms"] / c["median_ms"]) if c else "-",
        "%.0f×" % (s["median_ms"] / q["median_ms"]) if s else "-"))
    if c and q.get("first_group") is not None and c.get("first_row") and str(c["first_row"][0]) != str(q["first_group"]):
        print("  (first groups differ: qrpool %r, chDB %r)" % (q["first_group"], c["first_row"][0]))
PYTHON
