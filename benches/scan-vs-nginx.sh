#!/usr/bin/env bash
# Scan-time resolve against the static floor: wrk drives nginx answering a bare `return 302`,
# then qrpool's middle page (`/m/{id}`), scene API (`/v1/scene/{id}`) and dynamic redirect
# (`/r/{key}`), one after the other, same machine, same wrk settings: first from the
# in-process cache (the hit path), then with none, so every scan reads the database (the path
# of a Redis miss); both on `qrpool middle-page` processes over the store `qrpool up` wrote. Prints
# requests/s, p50, p99, the CPU time a request costs (the answering processes' user + system
# time over the run, divided by its requests: nginx's master and workers, qrpool's process) and
# the ratios to an nginx run made just before each target, each round, then the medians over
# all rounds. Then the cost of scan analytics on `/m/{id}`, in the same
# run: scan events off, events enriched without GeoIP, events enriched with GeoIP and a trusted
# proxy (every request comes "through" it, from a phone), and the in-process ingest on top.
# Every request carries the same phone user agent and forwarding header.
#
#   benches/scan-vs-nginx.sh      DURATION=10s ROUNDS=3 CONNECTIONS=64 THREADS=2 by default
#   ONLY=analytics                only the three /m targets of scan analytics' cost (events off,
#                                 no GeoIP, GeoIP and a trusted proxy), ROUNDS of them
#   ONLY=timeouts                 only the cached /m with and without the header read timeout
#   QRPOOL_BIN=/tmp/qrpool-before another build of qrpool (another allocator, say), same run
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"
cd "$repo"

duration=${DURATION:-10s}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
qrpool_port=18080
nginx_port=18081
uncached_port=18082
# Scan analytics' cost: events off / enriched without GeoIP / with GeoIP and a trusted proxy /
# the same with the in-process ingest.
off_port=18083
plain_port=18084
enriched_port=18085
ingest_port=18086
# The connection limits' cost: the cached /m again, with no header read timeout.
untimed_port=18087
work=$(mktemp -d)
qrpool_pid=
uncached_pid=
analytics_pids=
# Every step tolerates failure: under `set -e` a killed child's exit status would end the
# trap early and leave the servers after it running.
cleanup() {
  for pid in $analytics_pids $uncached_pid $qrpool_pid; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [ -f "$work/nginx.pid" ]; then kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A server left on one of these ports would answer in place of the one started here.
for port in $qrpool_port $nginx_port $uncached_port $off_port $plain_port $enriched_port $ingest_port $untimed_port; do
  if listening "$port"; then
    echo "127.0.0.1:$port is taken (by an earlier run?): stop what listens there first" >&2
    exit 1
  fi
done

apt_install wrk nginx-light curl bc
say "building the release binary"
cargo build --release --locked --quiet -p qrpool
qrpool_bin=${QRPOOL_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/qrpool}

say "starting nginx (return 302) on 127.0.0.1:$nginx_port"
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  server {
    listen 127.0.0.1:$nginx_port;
    location / { return 302 https://example.com/listing; }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"
wait_for_port "$nginx_port" nginx

say "starting qrpool up on 127.0.0.1:$qrpool_port, binding one code and making one link"
export QRPOOL_EMBEDDED__DATA_DIR="$work/data" QRPOOL_REDIRECT__ALLOWED_HOSTS__DEFAULT='["example.com"]'
QRPOOL_SERVER__LISTEN=127.0.0.1:$qrpool_port \
  QRPOOL_PREGEN__TARGET_DEPTH=100 QRPOOL_PREGEN__LOW_WATER=0 \
  "$qrpool_bin" up >"$work/qrpool.log" 2>&1 &
qrpool_pid=$!
for ((i = 0; i < 400; i++)); do curl -sf "http://127.0.0.1:$qrpool_port/readyz" >/dev/null && break; sleep 0.05; done
# `up` made the first API key on the empty store and printed it.
key=$(grep -o 'QRPOOL_KEY=qrp_[0-9A-Za-z_]*' "$work/qrpool.log" | cut -d= -f2)
id=$(curl -sf -X POST "http://127.0.0.1:$qrpool_port/v1/codes" -H 'content-type: application/json' \
  -H "authorization: Bearer $key" \
  -d '{"params": {"listing": "L-1001", "agent": "a-7"}}' | sed -E 's/.*"request_id":"([0-9A-Za-z]+)".*/\1/')
curl -sf -o /dev/null "http://127.0.0.1:$qrpool_port/m/$id"
link=$(curl -sf -X POST "http://127.0.0.1:$qrpool_port/v1/links" -H 'content-type: application/json' \
  -H "authorization: Bearer $key" \
  -d '{"target": {"destination": "https://example.com/listing/1001"}}' | sed -E 's/.*"key":"([0-9A-Za-z]+)".*/\1/')
curl -sf -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$qrpool_port/r/$link" | grep -q 302

# Scans are measured on `qrpool middle-page` processes, as the scan crowd is served in
# production (a thread per core; a process that also binds answers on its shared runtime), on
# the store `up` wrote: one with the in-process cache (the hit path), one without.
kill "$qrpool_pid" && wait "$qrpool_pid" 2>/dev/null || true
# The scan path is measured without the in-process ingest of the embedded analytics store
# (at scale, events go to Kafka and are ingested elsewhere); its cost is measured apart below.
export QRPOOL_ANALYTICS__ENABLED=false
say "starting qrpool middle-page on 127.0.0.1:$qrpool_port (cached) and on 127.0.0.1:$uncached_port (no in-process cache)"
QRPOOL_SERVER__LISTEN=127.0.0.1:$qrpool_port "$qrpool_bin" middle-page >"$work/cached.log" 2>&1 &
qrpool_pid=$!
QRPOOL_SERVER__LISTEN=127.0.0.1:$uncached_port QRPOOL_MIDDLE_PAGE__CACHE_CAPACITY=0 \
  "$qrpool_bin" middle-page >"$work/uncached.log" 2>&1 &
uncached_pid=$!
say "starting qrpool middle-page for scan analytics' cost on :$off_port (events off), :$plain_port (no GeoIP), :$enriched_port (GeoIP, trusted proxy), :$ingest_port (and the ingest)"
geoip=$repo/tests/data/geoip/GeoIP2-City-Test.mmdb
# Each writes (and one ingests) its own events, over a copy of the bindings `up` wrote.
for name in plain enriched ingest; do mkdir -p "$work/$name" && cp "$work"/data/*.db* "$work/$name/"; done
QRPOOL_SERVER__LISTEN=127.0.0.1:$off_port QRPOOL_SCANS__ENABLED=false \
  "$qrpool_bin" middle-page >"$work/off.log" 2>&1 &
analytics_pids="$analytics_pids $!"
QRPOOL_SERVER__LISTEN=127.0.0.1:$plain_port QRPOOL_EMBEDDED__DATA_DIR="$work/plain" \
  "$qrpool_bin" middle-page >"$work/plain.log" 2>&1 &
analytics_pids="$analytics_pids $!"
QRPOOL_SERVER__LISTEN=127.0.0.1:$enriched_port QRPOOL_EMBEDDED__DATA_DIR="$work/enriched" \
  QRPOOL_ANALYTICS__GEOIP_DB="$geoip" QRPOOL_SERVER__TRUSTED_PROXIES='["127.0.0.1"]' \
  "$qrpool_bin" middle-page >"$work/enriched.log" 2>&1 &
analytics_pids="$analytics_pids $!"
QRPOOL_SERVER__LISTEN=127.0.0.1:$ingest_port QRPOOL_EMBEDDED__DATA_DIR="$work/ingest" \
  QRPOOL_ANALYTICS__GEOIP_DB="$geoip" QRPOOL_SERVER__TRUSTED_PROXIES='["127.0.0.1"]' QRPOOL_ANALYTICS__ENABLED=true \
  "$qrpool_bin" middle-page >"$work/ingest.log" 2>&1 &
analytics_pids="$analytics_pids $!"
QRPOOL_SERVER__LISTEN=127.0.0.1:$untimed_port QRPOOL_SERVER__HEADER_READ_TIMEOUT_MS=0 \
  "$qrpool_bin" middle-page >"$work/untimed.log" 2>&1 &
analytics_pids="$analytics_pids $!"
for port in $qrpool_port $uncached_port $off_port $plain_port $enriched_port $ingest_port $untimed_port; do
  for ((i = 0; i < 400; i++)); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
  curl -sf -o /dev/null "http://127.0.0.1:$port/m/$id" || { cat "$work"/*.log; exit 1; }
done

# The CPU time (user + system, clock ticks) the processes PIDS have used so far, all threads.
cpu_ticks() {
  local pid total=0 fields
  for pid in "$@"; do
    read -r -a fields <"/proc/$pid/stat"
    # After "pid (comm)": utime and stime are fields 14 and 15 (comm holds no spaces here).
    total=$((total + fields[13] + fields[14]))
  done
  echo "$total"
}
ticks_per_second=$(getconf CLK_TCK)

# `measure URL PID...`: runs wrk on URL and prints "<requests/s> <p50 ms> <p99 ms> <µs of CPU
# a request>", the CPU being what the server's processes PID... used during the run, after a
# 2-s warm-up of the same target (connections open, caches and allocator warm, the previous
# target's work settled). Every request comes from a phone, through a proxy that names the
# client: the same bytes to every target, only those told to trust the proxy read it.
phone='Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.44(0x18002c2e) NetType/WIFI Language/zh_CN'
measure() {
  local url=$1 before after
  shift
  wrk -t"$threads" -c"$connections" -d2s -H "User-Agent: $phone" -H 'X-Forwarded-For: 81.2.69.142' "$url" >/dev/null
  before=$(cpu_ticks "$@")
  wrk -t"$threads" -c"$connections" -d"$duration" --latency -H "User-Agent: $phone" -H 'X-Forwarded-For: 81.2.69.142' "$url" >"$work/wrk.out"
  after=$(cpu_ticks "$@")
  awk -v ticks=$((after - before)) -v per_second="$ticks_per_second" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    / requests in / { requests = $1 }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx or 3xx/ { bad = $NF }
    END { if (bad > 0) { print "wrk saw " bad " error answers" > "/dev/stderr"; exit 1 }
          printf "%s %.3f %.3f %.2f\n", rps, p50, p99, ticks * 1e6 / per_second / requests }' "$work/wrk.out"
}

say "wrk -t$threads -c$connections -d$duration, $rounds rounds, one target at a time, nginx again before each"
# This machine's speed moves by a third within minutes, so each qrpool target is compared with
# an nginx run just before it, not with one run at the start, and the whole series is repeated
# `rounds` times: the summary gives each figure's median over the rounds.
nginx_url="http://127.0.0.1:$nginx_port/r/abc"
# nginx's processes: the master and its workers (one per core, as qrpool's threads).
nginx_pids="$(cat "$work/nginx.pid") $(pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' ')"
read -r off_pid plain_pid enriched_pid ingest_pid untimed_pid <<<"$analytics_pids"
labels=(
  "qrpool /m/{id} (cached, HTML)"
  "qrpool /v1/scene/{id} (cached)"
  "qrpool /r/{key} (cached, 302)"
  "qrpool /m/{id} (database, no cache)"
  "qrpool /r/{key} (database, no cache)"
  "/m/{id} scan events off"
  "/m/{id} events, no GeoIP"
  "/m/{id} events, GeoIP + proxy"
  "/m/{id} the same + ingest"
  "/m/{id} cached, no header timeout"
)
urls=(
  "http://127.0.0.1:$qrpool_port/m/$id"
  "http://127.0.0.1:$qrpool_port/v1/scene/$id"
  "http://127.0.0.1:$qrpool_port/r/$link"
  "http://127.0.0.1:$uncached_port/m/$id"
  "http://127.0.0.1:$uncached_port/r/$link"
  "http://127.0.0.1:$off_port/m/$id"
  "http://127.0.0.1:$plain_port/m/$id"
  "http://127.0.0.1:$enriched_port/m/$id"
  "http://127.0.0.1:$ingest_port/m/$id"
  "http://127.0.0.1:$untimed_port/m/$id"
)
# The process that answers each target.
pids=("$qrpool_pid" "$qrpool_pid" "$qrpool_pid" "$uncached_pid" "$uncached_pid"
  "$off_pid" "$plain_pid" "$enriched_pid" "$ingest_pid" "$untimed_pid")
# The targets measured (their indices): all, or with ONLY=analytics the three /m targets of
# scan analytics' cost.
case "${ONLY:-}" in
  analytics) chosen=(5 6 7) ;;
  timeouts) chosen=(0 9) ;;
  *) chosen=("${!urls[@]}") ;;
esac
# One line per measurement: "<target index> <req/s> <p50> <p99> <nginx req/s> <nginx p50>
# <nginx p99> <µs CPU a request> <nginx µs CPU a request>". "CPU ×" is nginx's CPU a request
# over ours: like "× nginx", 1 is parity and more is better.
results=$work/results
row='%-38s %12s %9s %9s %12s %9s %8s %8s %9s %9s %7s\n'
printf "$row" target requests/s "p50 ms" "p99 ms" "nginx req/s" "nginx p99" "× nginx" "p99 ×" "µs CPU/r" "nginx µs" "CPU ×"
for ((round = 1; round <= rounds; round++)); do
  for index in "${chosen[@]}"; do
    # shellcheck disable=SC2086 # a list of pids
    read -r nginx_rps nginx_p50 nginx_p99 nginx_cpu < <(measure "$nginx_url" $nginx_pids)
    read -r rps p50 p99 cpu < <(measure "${urls[$index]}" "${pids[$index]}")
    echo "$index $rps $p50 $p99 $nginx_rps $nginx_p50 $nginx_p99 $cpu $nginx_cpu" >>"$results"
    printf "$row" "${labels[$index]}" "$(printf '%.0f' "$rps")" "$p50" "$p99" "$(printf '%.0f' "$nginx_rps")" \
      "$nginx_p99" "$(echo "scale=2; $rps / $nginx_rps" | bc -l)" "$(echo "scale=2; $p99 / $nginx_p99" | bc -l)" \
      "$cpu" "$nginx_cpu" "$(echo "scale=2; $nginx_cpu / $cpu" | bc -l)"
  done
done

# Medians over the rounds, per target: of requests/s, p50, p99, and of the two ratios to the
# nginx run just before (the ratios are taken per round, then their median).
echo
say "medians over $rounds rounds"
printf "$row" target requests/s "p50 ms" "p99 ms" "nginx req/s" "nginx p99" "× nginx" "p99 ×" "µs CPU/r" "nginx µs" "CPU ×"
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# `of <target index> <awk expression over a results line>`: its median over the rounds.
of() { awk -v target="$1" "\$1 == target { print $2 }" "$results" | median; }
declare -a median_rps
for index in "${chosen[@]}"; do
  median_rps[$index]=$(of "$index" '$2')
  printf "$row" "${labels[$index]}" "$(printf '%.0f' "${median_rps[$index]}")" "$(of "$index" '$3')" \
    "$(of "$index" '$4')" "$(printf '%.0f' "$(of "$index" '$5')")" "$(of "$index" '$7')" \
    "$(printf '%.2f' "$(of "$index" '$2 / $5')")" "$(printf '%.2f' "$(of "$index" '$4 / $7')")" \
    "$(of "$index" '$8')" "$(of "$index" '$9')" "$(printf '%.2f' "$(of "$index" '$9 / $8')")"
done
if [ -z "${ONLY:-}" ]; then
  printf '\nthe database path against the cache hit (medians): /m %.2f×, /r %.2f× of the hit path'"'"'s requests/s\n' \
    "$(echo "${median_rps[3]} / ${median_rps[0]}" | bc -l)" "$(echo "${median_rps[4]} / ${median_rps[2]}" | bc -l)"
fi
if [ "${ONLY:-}" != timeouts ]; then
  printf 'scan analytics on /m (medians of requests/s): enriched (GeoIP + proxy) %.2f× events off, %.2f× no GeoIP; events without GeoIP %.2f× events off\n' \
  "$(echo "${median_rps[7]} / ${median_rps[5]}" | bc -l)" "$(echo "${median_rps[7]} / ${median_rps[6]}" | bc -l)" \
  "$(echo "${median_rps[6]} / ${median_rps[5]}" | bc -l)"
fi
if [ "${ONLY:-}" != analytics ]; then
  printf 'the header read timeout on cached /m (medians of requests/s): %.3f× the same without it\n' \
    "$(echo "${median_rps[0]} / ${median_rps[9]}" | bc -l)"
fi
if [ -z "${ONLY:-}" ]; then
  printf 'with the in-process ingest as well: %.2f× events off\n' "$(echo "${median_rps[8]} / ${median_rps[5]}" | bc -l)"
fi
