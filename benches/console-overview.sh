#!/usr/bin/env bash
# The console's pages over a tenant with EVENTS scan events, as a marketer opens them:
#
#   1. EVENTS realistic events of ONE tenant over the DAYS days up to today
#      (analytics-bench generate), ingested into the embedded store (analytics-bench ingest);
#   2. `qrpool up` (release) on that data folder, a key for the tenant, a console session;
#   3. each page once on a fresh server (its first load: columns decoded from the files), then
#      RUNS times more (median and fastest: columns already decoded are kept in memory,
#      `analytics.query_cache_mb`) — curl on loopback, the server's time plus a loopback
#      round trip: the overview over the last 7 and 30 days (per day, with the previous
#      period), in another time zone, over 24 hours per hour, and where-and-who over 30 days;
#   4. what a first visit transfers: the overview's HTML, stylesheet, script and icon, as
#      served and gzip-compressed.
#
#   benches/console-overview.sh      EVENTS=10000000 DAYS=30 RUNS=9 by default
#   DIR keeps the generated events between runs (GENERATE=1 remakes them).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"
cd "$repo"

events=${EVENTS:-10000000}
days=${DAYS:-30}
runs=${RUNS:-9}
port=${PORT:-18383}
first_day=$(date -u -d "-$((days - 1)) days" +%F)
dir=${DIR:-$repo/target/console-bench/$events-$first_day}
target=${CARGO_TARGET_DIR:-$repo/target}

apt_install curl util-linux
say "building the release binaries (qrpool, analytics-bench)"
cargo build --release --locked --quiet -p qrpool -p benches --bin qrpool --bin analytics-bench
bench=$target/release/analytics-bench
qrpool=$target/release/qrpool

if [ "${GENERATE:-0}" = 1 ] || [ ! -d "$dir/analytics" ]; then
  rm -rf "$dir"
  say "generating $events events of one tenant over $days days from $first_day into $dir"
  "$bench" generate --dir "$dir" --events "$events" --tenants 1 --days "$days" --first-day "$first_day"
  say "ingesting them (one core)"
  taskset -c 0 env RAYON_NUM_THREADS=1 "$bench" ingest --dir "$dir"
  # The events are in the store now; qrpool's own ingest has nothing left to read.
fi
du -sh "$dir/analytics" | sed 's/^/  /'

work=$(mktemp -d)
cleanup() {
  [ -n "${qrpool_pid:-}" ] && kill "$qrpool_pid" 2>/dev/null && wait "$qrpool_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
export QRPOOL_EMBEDDED__DATA_DIR=$dir QRPOOL_TELEMETRY__FILTER=warn
key=$("$qrpool" keys create --tenant tenant-000 --scope read,bind,admin 2>/dev/null | head -n 1)
say "starting qrpool up on 127.0.0.1:$port over $dir"
QRPOOL_SERVER__LISTEN=127.0.0.1:$port QRPOOL_PREGEN__TARGET_DEPTH=100 QRPOOL_PREGEN__LOW_WATER=0 \
  "$qrpool" up >"$work/qrpool.log" 2>&1 &
qrpool_pid=$!
for ((i = 0; i < 600; i++)); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
base=http://127.0.0.1:$port
cookie=$(curl -s -o /dev/null -D - -X POST --data-urlencode "key=$key" "$base/console/sign-in" |
  awk -F'[ ;]' 'tolower($1) == "set-cookie:" { print $2 }')
[ -n "$cookie" ] || { echo "signing in failed" >&2; exit 1; }

# `time_of PATH`: the first load, then RUNS timings (ms); prints "first median fastest bytes".
time_of() {
  local first
  first=$(curl -s -o /dev/null -w '%{time_total}' -H "cookie: $cookie" "$base$1")
  local times=() bytes
  for ((run = 0; run < runs; run++)); do
    read -r status seconds bytes < <(curl -s -o /dev/null -w '%{http_code} %{time_total} %{size_download}\n' -H "cookie: $cookie" "$base$1")
    [ "$status" = 200 ] || { echo "$1 answered $status" >&2; exit 1; }
    times+=("$(echo "$seconds * 1000" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk -v bytes="$bytes" -v first="$first" \
    '{ v[NR] = $1 } END { printf "%.1f %.1f %.1f %d\n", first * 1000, v[int((NR + 1) / 2)], v[1], bytes }'
}

printf '\n%-54s %10s %10s %9s %8s\n' page "first ms" "then: med" fastest bytes
for page in \
  "/console/overview?range=7d&tz=UTC&compare=on" \
  "/console/overview?range=30d&tz=UTC&compare=on" \
  "/console/overview?range=30d&tz=Asia/Shanghai" \
  "/console/overview?range=24h&tz=UTC&granularity=hour" \
  "/console/audience?range=30d&tz=UTC"; do
  read -r first median fastest bytes < <(time_of "$page")
  printf '%-54s %10s %10s %9s %8s\n' "$page" "$first" "$median" "$fastest" "$bytes"
done

say "a first visit's transfer (the overview over 30 days, its stylesheet, script and icon)"
curl -s -H "cookie: $cookie" "$base/console/overview?range=30d&tz=UTC" >"$work/overview.html"
raw=$(wc -c <"$work/overview.html")
gz=$(gzip -9c "$work/overview.html" | wc -c)
for asset in $(grep -o '/console/assets/[^"]*' "$work/overview.html" | sort -u); do
  curl -s "$base$asset" >"$work/asset"
  raw=$((raw + $(wc -c <"$work/asset")))
  gz=$((gz + $(gzip -9c "$work/asset" | wc -c)))
done
printf '  %d bytes as served, %d gzip-compressed\n' "$raw" "$gz"
curl -s -H "cookie: $cookie" "$base/console/audience?range=30d&tz=UTC" >"$work/audience.html"
printf '  where-and-who page: %d bytes as served, %d gzip-compressed (the world map inline)\n' \
  "$(wc -c <"$work/audience.html")" "$(gzip -9c "$work/audience.html" | wc -c)"
