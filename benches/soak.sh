#!/usr/bin/env bash
# The soak: `qrpool up` on Kafka (a tansu of its own) + Redis + PostgreSQL under a steady mix
# of binds, scans of codes, scans of links, link edits and analytics queries for 30 minutes,
# at half the capacity a 20-second probe of the same mix measures first. The harness
# (benches/src/bin/soak.rs) prints a line a minute and a verdict: resident memory after the
# warm-up does not grow (the median of every second over any five minutes stays within 10 % of
# the warm-up's), open descriptors stay flat, every minute's p99 is within 1.5x the first five
# minutes', no request fails, no scan event is dropped, 99 % of the binds take a pooled code. Non-zero exit when one of those fails. Its
# logs (the per-second and per-minute samples, qrpool's and the broker's own) are kept in
# target/soak/<run>/; copy nothing out of a running soak's folders: a copy of
# the data folder while it runs wrote as much to the disk as the run itself and took the p99
# with it (docs/performance.md, run H).
#
#   benches/soak.sh                          30 minutes, 5 of them warm-up
#   MINUTES=6 WARMUP=2 benches/soak.sh       a short one
#   RATE=2000 benches/soak.sh                a fixed rate instead of half the probe's (the probe
#                                            still runs: runs at one rate then compare, the
#                                            warm-up loaded alike; PROBE_SECS=0 skips it)
#   BROKER_STORAGE=memory benches/soak.sh    the broker on tansu's memory engine
#   BROKER_DIR=/dev/shm benches/soak.sh      the broker's SQLite files in a folder of their own
#                                            under /dev/shm, off PostgreSQL's disk (in
#                                            production the broker has disks of its own)
#   DATA_DIR=/dev/shm benches/soak.sh        qrpool's data folder (the analytics store) there too
#   PG_SHARED_BUFFERS=4GB benches/soak.sh    the shared_buffers of the PostgreSQL the soak runs
#                                            on, one of its own (initdb'd for it on PGPORT, 5433
#                                            unless set, removed after): 2GB by default, sized
#                                            for the binds of an hour as docs/operations.md says
#                                            (the Debian default of 128 MB is outgrown by a
#                                            young table's index inserts within minutes, and
#                                            the binds' p99 climbs with it: runs P and R)
#   PG_SHARED_BUFFERS= benches/soak.sh       the machine's PostgreSQL (PGPORT, 5432 unless set) as it is
#   SESSION_TIMEOUT_MS=6000 benches/soak.sh  the binder group's session timeout (30000 by default: below)
#   QUERY_CACHE_MB=32 benches/soak.sh        the analytics query cache's budget (MiB; 512 by default)
#   QRPOOL_BIN=/tmp/qrpool-x benches/soak.sh another build of qrpool (any name: its columns
#                                            below follow its process id)
#   HISTORY_EVENTS=0 benches/soak.sh         no history: by default the analytics store starts with
#                                            the 30 days before today (10 million scan events of
#                                            the soak's tenant, analytics-bench generate + ingest),
#                                            as a store in production does, so that the dashboard's
#                                            queries read a month from the first minute
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"
cd "$repo"

minutes=${MINUTES:-30}
warmup=${WARMUP:-5}
probe=${PROBE_SECS:-20}
port=${PORT:-18090}
kafka_port=${KAFKA_PORT:-19092}
base=http://127.0.0.1:$port
work=$(mktemp -d)
broker_dir=$(mktemp -d -p "${BROKER_DIR:-$work}" broker.XXXXXX)
data_dir=$(mktemp -d -p "${DATA_DIR:-$work}" data.XXXXXX)
pid=
broker=
own_postgres=
flush_probe=
run_id=soak_$(date +%s)_$$
# The tenant of the soak's key: the synthetic history's largest (analytics::synthetic).
tenant=tenant-000
cleanup() {
  # The samplers (started below), when the run ends early.
  kill ${sampler:-} ${second_sampler:-} ${thread_sampler:-} ${wait_sampler:-} 2>/dev/null || true
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "$broker" ]; then kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; fi
  if [ -n "$flush_probe" ]; then kill "$flush_probe" 2>/dev/null || true; wait "$flush_probe" 2>/dev/null || true; fi
  rm -f "${flush_file:-}"
  if [ -d "$work" ]; then
    mkdir -p "$repo/target/soak/$run_id"
    cp "$work"/*.log "$work"/*.toml "$repo/target/soak/$run_id/" 2>/dev/null || true
    echo "logs kept in target/soak/$run_id/" >&2
  fi
  PGPASSWORD=postgres psql -h 127.0.0.1 -p "${PGPORT:-5432}" -U postgres -qc "DROP DATABASE IF EXISTS qrpool_$run_id WITH (FORCE)" postgres >/dev/null 2>&1 || true
  if [ -n "$own_postgres" ]; then
    cp "$own_postgres/postgresql.log" "$repo/target/soak/$run_id/" 2>/dev/null || true
    stop_postgres_of_its_own "$own_postgres"
  fi
  redis-cli --scan --pattern "qrpool-$run_id:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
  rm -rf "$work" "$broker_dir" "$data_dir"
}
trap cleanup EXIT

apt_install curl procps
start_redis
start_postgres
shared_buffers=${PG_SHARED_BUFFERS-2GB}
if [ -n "$shared_buffers" ]; then
  export PGPORT=${PGPORT:-5433}
  say "a PostgreSQL of the soak's own on :$PGPORT, shared_buffers = $shared_buffers"
  own_postgres=$(start_postgres_of_its_own "$PGPORT" "$shared_buffers" "log_checkpoints = on" "log_line_prefix = '%m [%p] '")
fi
start_kafka_protocol_broker # builds tansu once, if it is missing
say "building release binaries"
cargo build --release --locked --quiet -p qrpool -p benches
qrpool=${QRPOOL_BIN:-$repo/target/release/qrpool}

# A broker of the soak's own: what the run stores is dropped with it, and no test shares it.
# On SQLite by default: tansu's memory engine lists every batch a partition ever stored on
# each fetch, so its cost grows with the log and after a quarter of an hour it takes the
# machine's CPU from qrpool (docs/performance.md#soak). BROKER_STORAGE=memory shows that.
case ${BROKER_STORAGE:-sqlite} in
  sqlite) storage=sqlite://tansu.db ;; # in the broker's working folder, $broker_dir
  memory) storage=memory://tansu/ ;;
  *) echo "BROKER_STORAGE is sqlite or memory" >&2; exit 2 ;;
esac
(cd "$broker_dir" && exec "$tansu_bin" broker --storage-engine "$storage" \
  --listener-url "tcp://127.0.0.1:$kafka_port" --advertised-listener-url "tcp://127.0.0.1:$kafka_port") \
  >"$work/tansu.log" 2>&1 &
broker=$!
wait_for_port "$kafka_port" "the soak's tansu"

PGPASSWORD=postgres psql -h 127.0.0.1 -p "${PGPORT:-5432}" -U postgres -qc "CREATE DATABASE qrpool_$run_id" postgres
# The harness stands for the load balancer in front: it names each scan's phone in
# X-Forwarded-For, and qrpool believes it from loopback.
cat >"$work/qrpool.toml" <<'TOML'
[server]
trusted_proxies = ["127.0.0.1"]

[redirect.allowed_hosts]
TOML
echo "$tenant = [\"shop.example\"]" >>"$work/qrpool.toml"
# The binder group's session timeout: 30 s, not the tests' 6 s. Under the probe's closed load
# tansu (SQLite) once left a heartbeat unanswered for over 6 s; the binder's consumer then left
# the group and joined again with a new member id, and tansu 0.6's coordinator, which keeps a
# departed leader as the leader of a group still forming, never assigned the partitions again:
# the binds after it drew their codes on demand (docs/performance.md#soak). Apache Kafka
# evicts such a leader; tansu is the stand-in here, and the harness checks that the binds took
# pooled codes (benches/src/bin/soak.rs).
settings=(
  QRPOOL_CONFIG="$work/qrpool.toml"
  QRPOOL_POOL__BACKEND=kafka QRPOOL_STORE__BACKEND=postgres
  QRPOOL_POSTGRES__URL="postgres://postgres:postgres@127.0.0.1:${PGPORT:-5432}/qrpool_$run_id"
  QRPOOL_REDIS__URL=redis://127.0.0.1:6379 QRPOOL_REDIS__KEY_PREFIX="qrpool-$run_id:"
  QRPOOL_KAFKA__BROKERS="127.0.0.1:$kafka_port"
  QRPOOL_KAFKA__POOL_TOPIC="qrpool-$run_id" QRPOOL_KAFKA__GROUP_ID="qrpool-$run_id"
  QRPOOL_KAFKA__EVENTS_TOPIC="qrpool-$run_id.scans"
  QRPOOL_KAFKA__SESSION_TIMEOUT_MS="${SESSION_TIMEOUT_MS:-30000}"
  QRPOOL_EMBEDDED__DATA_DIR="$data_dir"
  QRPOOL_PREGEN__TARGET_DEPTH=60000 QRPOOL_PREGEN__LOW_WATER=30000
)
# The analytics queries' column cache grows to its budget as the store does, by design (512 MiB
# unless QUERY_CACHE_MB says otherwise).
if [ -n "${QUERY_CACHE_MB:-}" ]; then settings+=(QRPOOL_ANALYTICS__QUERY_CACHE_MB="$QUERY_CACHE_MB"); fi
history=${HISTORY_EVENTS:-10000000}
if [ "$history" -gt 0 ]; then
  first_day=$(date -u -d '30 days ago' +%F)
  say "the analytics store's history: $history scan events over the 30 days from $first_day"
  "$repo/target/release/analytics-bench" generate --dir "$data_dir" --events "$history" \
    --tenants 1 --days 30 --first-day "$first_day"
  "$repo/target/release/analytics-bench" ingest --dir "$data_dir"
fi
key=$(env "${settings[@]}" "$qrpool" keys create --tenant "$tenant" --scope bind,read,admin --rate 10000000 2>/dev/null)
say "starting qrpool up (Kafka on :$kafka_port, Redis, PostgreSQL)"
env "${settings[@]}" QRPOOL_SERVER__LISTEN=127.0.0.1:$port QRPOOL_TELEMETRY__FILTER=warn \
  "$qrpool" up >"$work/up.log" 2>&1 &
pid=$!
for ((i = 0; i < 2400; i++)); do
  curl -sf "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/up.log" >&2; exit 1; }
  sleep 0.05
done
curl -sf "$base/readyz" >/dev/null || { echo "qrpool did not become ready" >&2; exit 1; }

# Where the machine's time, memory and disk go, a line a minute: every process on it shares
# two cores and a disk, so a stall of qrpool's answers may be another process's doing (the
# broker's, the database's, the harness's own). The disk columns: MiB written that minute,
# the mean time a write waited for it (ms), the page cache's dirty pages then (MiB: a large
# backlog flushed at once makes every fsync behind it wait), the broker's SQLite files
# (database and write-ahead log, MiB); then PostgreSQL's WAL (MiB written, flushes: each
# group commit of binds is one) and its checkpoints with the time they spent writing and
# syncing (ms); then the disk's own flush tail under the WAL (p99 and slowest ms of a 4 KiB
# append and fdatasync ten times a second, benches/disk-flush-probe.py, on the file system
# of PostgreSQL's data): when binds' commits are slow in the minutes its flushes are, it is
# the disk, not qrpool, that the p99 check measures.
disk=$(basename "$(df --output=source "$work" | tail -n 1)")
pg_data=$(PGPASSWORD=postgres psql -h 127.0.0.1 -p "${PGPORT:-5432}" -U postgres -Atc "SHOW data_directory" postgres 2>/dev/null || true)
flush_file=$work/flush-probe.dat
if [ -n "$pg_data" ] && [ -d "$pg_data/.." ] && [ "$(stat -c %d "$pg_data/..")" != "$(stat -c %d "$work")" ]; then
  flush_file=$pg_data/../qrpool-soak-flush-probe.$run_id
fi
python3 "$repo/benches/disk-flush-probe.py" "$flush_file" --each >"$work/flushes.log" &
flush_probe=$!
# p99 and slowest ms of the probe's flushes after Unix time $1 up to $2.
flush_tail() {
  awk -v since="$1" -v until="$2" '$1 > since && $1 <= until {print $2}' "$work/flushes.log" |
    sort -n | awk '{ms[NR] = $1} END {if (NR == 0) print "-", "-"; else print ms[int(NR * 0.99) + (NR * 0.99 > int(NR * 0.99))], ms[NR]}'
}
disk_writes() { awk -v disk="$disk" '$3 == disk {print $10 / 2048, $8, $11; found = 1}
  END {if (!found) print 0, 0, 0}' /proc/diskstats; }
postgres_writes() {
  PGPASSWORD=postgres psql -h 127.0.0.1 -p "${PGPORT:-5432}" -U postgres -Atc "SELECT wal_bytes / 1048576, wal_sync,
    checkpoints_timed + checkpoints_req, checkpoint_write_time, checkpoint_sync_time
    FROM pg_stat_wal, pg_stat_bgwriter" postgres 2>/dev/null | tr '|' ' ' || echo 0 0 0 0 0
}
# CPU seconds and resident KiB by process name, qrpool's found by its id (QRPOOL_BIN may be
# named anything).
by_process() {
  ps -eo pid=,comm=,cputimes=,rss= | awk -v qrpool="$pid" '{name = $1 == qrpool ? "qrpool" : $2
    cpu[name] += $3; rss[name] += $4} END {for (c in cpu) print c, cpu[c], rss[c]}'
}
# The machine's CPU ticks: all, idle (with I/O wait), and stolen by the hypervisor. This
# machine is a virtual one: in the minutes another guest takes its cores (steal, 1-14 % a
# minute on 2026-12-07), every process here answers slower, and the p99 check reads that too.
machine_ticks() {
  awk '/^cpu / {print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6, $9; exit}' /proc/stat
}
sample_processes() {
  local previous now disk_before disk_now pg_before pg_now huge cache answers lag depth broker_files dirty since until flushes cpu_before cpu_now
  previous=$(by_process)
  cpu_before=$(machine_ticks)
  disk_before=$(disk_writes)
  pg_before=$(postgres_writes)
  since=$(date +%s.%N)
  printf '%-6s %8s %8s %8s %8s %8s %8s %10s %9s %9s %11s %6s %9s %8s %8s %9s %9s %10s %7s %11s %9s %9s %6s %9s %9s %5s %10s %6s %5s\n' minute clock qrpool% tansu% \
    postgres% redis% soak% qrpool_MiB huge_MiB cache_MiB answers_MiB lag_s tansu_MiB pg_MiB disk_MiB write_ms dirty_MiB broker_MiB wal_MiB \
    wal_flushes flush_p99 flush_max ckpts ckpt_w_ms ckpt_s_ms load pool_depth steal% idle%
  for ((minute = 1; ; minute++)); do
    sleep 60
    until=$(date +%s.%N)
    flushes=$(flush_tail "$since" "$until")
    since=$until
    now=$(by_process)
    cpu_now=$(machine_ticks)
    disk_now=$(disk_writes)
    pg_now=$(postgres_writes)
    # Of qrpool's resident memory, how much is in transparent huge pages.
    huge=$(awk '/^AnonHugePages:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    # And how much the analytics queries' caches hold (decoded columns; each file's
    # answers), and how far the store is behind the scans (seconds).
    metrics=$(curl -sf --max-time 10 "$base/metrics" || true)
    cache=$(awk '/^analytics_query_cache_bytes/ {print int($2 / 1048576)}' <<<"$metrics")
    answers=$(awk '/^analytics_query_answers_bytes/ {print int($2 / 1048576)}' <<<"$metrics")
    lag=$(awk '/^analytics_lag_seconds/ {printf "%.0f", $2}' <<<"$metrics")
    # The pool's depth then: the stand-in broker's fetches read a lane's whole backlog.
    depth=$(awk '/^pool_depth_codes/ {depth += $2} END {printf "%.0f", depth}' <<<"$metrics")
    dirty=$(awk '/^Dirty:/ {print int($2 / 1024)}' /proc/meminfo)
    broker_files=$(du -cm "$broker_dir"/tansu.db* 2>/dev/null | tail -n 1 | cut -f1)
    awk -v minute="$minute" -v clock="$(date -u +%H:%M:%S)" -v loadavg="$(cut -d' ' -f1 /proc/loadavg)" \
      -v huge="${huge:-0}" -v cache="${cache:-0}" -v answers="${answers:-0}" -v lag="${lag:-0}" -v broker="${broker_files:-0}" -v dirty="${dirty:-0}" -v disk="$disk_before $disk_now" \
      -v pg="$pg_before $pg_now" -v flushes="$flushes" -v depth="${depth:-0}" -v cpu="$cpu_before $cpu_now" '
      NR == FNR {before[$1] = $2; next}
      # A process that exited took its time with it: a group never counts below 0.
      {used[$1] = ($2 - before[$1]) / 60 * 100; if (used[$1] < 0) used[$1] = 0; rss[$1] = $3 / 1024}
      END {
        split(disk, d, " "); split(pg, c, " "); split(flushes, f, " "); split(cpu, t, " ")
        ticks = t[4] - t[1]; if (ticks <= 0) ticks = 1
        writes = d[5] - d[2]
        wait_ms = 0
        if (writes > 0) wait_ms = (d[6] - d[3]) / writes
        printf "%-6s %8s %8.0f %8.0f %8.0f %8.0f %8.0f %10.0f %9.0f %9s %11s %6s %9.0f %8.0f %8.0f %9.1f %9s %10s %7.0f %11.0f %9s %9s %6s %9.0f %9.0f %5s %10s %6.0f %5.0f\n",
          minute, clock, used["qrpool"], used["tansu"], used["postgres"], used["redis-server"], used["soak"],
          rss["qrpool"], huge / 1024, cache, answers, lag, rss["tansu"], rss["postgres"], d[4] - d[1], wait_ms, dirty, broker,
          c[6] - c[1], c[7] - c[2], f[1], f[2], c[8] - c[3], c[9] - c[4], c[10] - c[5], loadavg, depth, (t[6] - t[3]) / ticks * 100, (t[5] - t[2]) / ticks * 100}' \
      <(echo "$previous") <(echo "$now")
    previous=$now disk_before=$disk_now pg_before=$pg_now cpu_before=$cpu_now
  done
}
# And a line a second of who wrote how much (MiB, from each process group's /proc/<pid>/io),
# the disk's writes and their mean wait, and the page cache's dirty and writeback pages: a
# minute's line averages a stall of a second or two away, so the seconds before each
# minute's slowest request are printed from these at the end.
written_by() {
  local pid_dir comm bytes
  for pid_dir in /proc/[0-9]*; do
    # (A process may exit between the listing and the read: its error is not worth a line.)
    { read -r comm <"$pid_dir/comm"; } 2>/dev/null || continue
    [ "$pid_dir" = "/proc/$pid" ] && comm=qrpool
    case $comm in qrpool | tansu | postgres | soak) ;; *) continue ;; esac
    # Read with builtins: an awk per matching process (PostgreSQL alone runs a dozen under
    # load) started that many processes a second, and the samplers took 4.3 % of the machine
    # in run L's profile.
    bytes=0
    { while read -r field value; do
      [ "$field" = write_bytes: ] && { bytes=$value; break; }
    done <"$pid_dir/io"; } 2>/dev/null || continue
    echo "$comm $bytes"
  done | awk '{sum[$1] += $2} END {printf "%d %d %d %d\n", sum["qrpool"], sum["tansu"], sum["postgres"], sum["soak"]}'
}
sample_seconds() {
  local before now disk_before disk_now
  before=$(written_by) disk_before=$(disk_writes)
  echo "clock qrpool_MiB tansu_MiB postgres_MiB soak_MiB disk_MiB write_ms dirty_MiB writeback_MiB"
  while sleep 1; do
    now=$(written_by) disk_now=$(disk_writes)
    awk -v clock="$(date -u +%H:%M:%S)" -v w="$before $now" -v d="$disk_before $disk_now" '
      /^Dirty:/ {dirty = $2 / 1024} /^Writeback:/ {back = $2 / 1024}
      END {
        split(w, a, " "); split(d, b, " "); writes = b[5] - b[2]
        printf "%s %.1f %.1f %.1f %.1f %.1f %.1f %.0f %.0f\n", clock, (a[5] - a[1]) / 1048576,
          (a[6] - a[2]) / 1048576, (a[7] - a[3]) / 1048576, (a[8] - a[4]) / 1048576, b[4] - b[1],
          (writes > 0 ? (b[6] - b[3]) / writes : 0), dirty, back
      }' /proc/meminfo
    before=$now disk_before=$disk_now
  done
}
# And where qrpool's own CPU goes, a line a minute: its threads' time by name (numbers
# dropped, so analytics-0 and analytics-1 are one), the busiest first, in % of one core; with
# the file answers its queries found kept and those they read from rows that minute, the
# binds that waited more than 25 ms for their code from the pool (`pool_take_seconds`) or for
# the commit that holds them (`bindings_commit_seconds`, one per group commit), and the binds
# the server took more than 100 ms over (`http_request_duration_seconds`).
by_thread() {
  # A thread's name is between the first "(" and the last ")"; its user and system ticks
  # are the 12th and 13th fields after that.
  cat /proc/"$pid"/task/*/stat 2>/dev/null | awk '{
    open = index($0, "("); end = match($0, /\) [A-Z] /)
    name = substr($0, open + 1, end - open - 1); gsub(/[-_:]?[0-9]+$/, "", name); gsub(/ /, "_", name)
    split(substr($0, end + 2), field, " "); ticks[name] += field[12] + field[13]
  } END {for (name in ticks) print name, ticks[name]}'
}
# Counters off /metrics: answers kept and read; takes and commits, all and within 25 ms;
# binds, all and answered within 100 ms by the server's own clock (the harness's latency
# counts from when a bind was due, so the two part the server's time from the harness's).
from_metrics() {
  curl -sf --max-time 10 "$base/metrics" | awk '
    /^analytics_file_answers_total/ {if ($0 ~ /from="cache"/) kept = $2; if ($0 ~ /from="rows"/) rows = $2}
    /^pool_take_seconds_count/ {takes = $2} /^pool_take_seconds_bucket\{le="0.025"\}/ {takes_fast = $2}
    /^bindings_commit_seconds_count/ {commits = $2} /^bindings_commit_seconds_bucket\{le="0.025"\}/ {commits_fast = $2}
    /^http_request_duration_seconds_count\{route="\/v1\/codes"\}/ {binds = $2}
    /^http_request_duration_seconds_bucket\{route="\/v1\/codes",le="0.1"\}/ {binds_fast = $2}
    END {printf "%d %d %d %d %d %d %d %d\n", kept, rows, takes, takes_fast, commits, commits_fast, binds, binds_fast}'
}
sample_threads() {
  local previous now metrics_before metrics_now hz minute threads since elapsed=60
  hz=$(getconf CLK_TCK)
  previous=$(by_thread) metrics_before=$(from_metrics)
  # One line for the $elapsed seconds since the last.
  threads_line() {
    now=$(by_thread) metrics_now=$(from_metrics)
    threads=$(awk -v hz="$hz" -v secs="$elapsed" 'NR == FNR {before[$1] = $2; next}
      {used = ($2 - before[$1]) / hz / secs * 100; if (used >= 0.5) printf "%.0f %s\n", used, $1}' \
      <(echo "$previous") <(echo "$now") | sort -rn | awk '{printf " %s %s", $2, $1}')
    awk -v minute="$minute" -v clock="$(date -u +%H:%M:%S)" -v threads="$threads" \
      -v counts="$metrics_before $metrics_now" 'BEGIN {
        split(counts, c, " ")
        printf "%-6s %8s %12d %12d %15d %17d %16d %s\n", minute, clock, c[9] - c[1], c[10] - c[2],
          (c[11] - c[12]) - (c[3] - c[4]), (c[13] - c[14]) - (c[5] - c[6]), (c[15] - c[16]) - (c[7] - c[8]), threads
      }'
    previous=$now metrics_before=$metrics_now
  }
  # When the run ends, a last line for the part-minute since the last one: a stall in a run's
  # last seconds is then told apart as the server's (binds over 100 ms by its own clock) or
  # the harness's (docs/performance.md, run Z).
  trap 'elapsed=$(( $(date +%s) - since )); [ "$elapsed" -gt 0 ] && minute=end && threads_line; exit 0' TERM
  echo "minute clock answers_kept answers_read takes_over_25ms commits_over_25ms binds_over_100ms  threads by CPU (% of one core)"
  for ((minute = 1; ; minute++)); do
    since=$(date +%s)
    # In the background and waited for, so that the trap above runs at once.
    sleep 60 &
    wait $!
    threads_line
  done
}
# What PostgreSQL's processes wait on, five looks a second: the soak database's active
# backends and the server's own processes (checkpointer, WAL writer, autovacuum), each by its
# wait event ("CPU" for none: running or waiting for a core), sleeping ones left out. A line
# a look; summed by second beside the slowest requests and by minute at the end, so that a
# minute of slow commits says whether they wait on the WAL, a lock, a buffer, I/O or a core.
sample_waits() {
  # exec: the sampler's process is psql itself, so that killing it ends the looks.
  PGPASSWORD=postgres exec psql -h 127.0.0.1 -p "${PGPORT:-5432}" -U postgres -At -F ' ' postgres <<SQL
SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'HH24:MI:SS'),
       coalesce(string_agg(wait || '=' || backends, ',' ORDER BY backends DESC, wait), '-')
FROM (SELECT CASE WHEN backend_type = 'client backend' THEN '' ELSE replace(backend_type, ' ', '_') || '/' END
               || coalesce(wait_event_type || ':' || wait_event, 'CPU') AS wait,
             count(*) AS backends
      FROM pg_stat_activity
      WHERE pid <> pg_backend_pid()
        AND ((backend_type = 'client backend' AND state = 'active' AND datname = 'qrpool_$run_id')
             OR (backend_type <> 'client backend' AND coalesce(wait_event_type, '') NOT IN ('Activity', 'Timeout')))
      GROUP BY 1) waits
\\watch 0.2
SQL
}
soak_started=$(date -u '+%Y-%m-%d %H:%M:%S')
sample_processes >"$work/processes.log" 2>&1 &
sampler=$!
sample_seconds >"$work/seconds.log" 2>&1 &
second_sampler=$!
sample_threads >"$work/threads.log" 2>&1 &
thread_sampler=$!
sample_waits >"$work/waits.log" 2>&1 &
wait_sampler=$!

rate_args=(--probe-secs "$probe")
[ -n "${RATE:-}" ] && rate_args+=(--rate "$RATE")
say "soak: $minutes minutes ($warmup of warm-up)"
status=0
"$repo/target/release/soak" --base "$base" --key "$key" --pid "$pid" "${rate_args[@]}" \
  --minutes "$minutes" --warmup-minutes "$warmup" --binds-by-second "$work/binds.log" \
  --resident-by-second "$work/resident.log" |
  tee "$work/soak.log" || status=$?
kill "$sampler" "$second_sampler" "$thread_sampler" "$wait_sampler" 2>/dev/null || true
wait "$thread_sampler" 2>/dev/null || true # its last line, for the last part-minute
say "CPU (% of one core) and resident memory by process, a line a minute"
cat "$work/processes.log"
say "qrpool's queries' file answers (kept, read from rows), binds' waits over 25 ms (for a code, for a commit) and its threads by CPU, a line a minute"
cat "$work/threads.log"
say "the file answers the queries kept over the run, by what the question groups by (MiB)"
curl -sf --max-time 10 "$base/metrics" |
  sed -nE 's/^analytics_query_answers_kept_bytes_total\{group_by="([a-z_]+)"\} ([0-9.e+]+)$/\2 \1/p' |
  sort -gr | awk '{printf "%-14s %9.1f\n", $2, $1 / 1048576}'
# The three slowest requests of the run other than queries (each a minute's slowest), and the
# seconds before each.
# The wait samples summed by clock cut to $1 characters (8: by second, 5: by minute): each
# wait's backends on average over that time's looks, the most first, at most six.
waits_by() {
  awk -v width="$1" '
    {clock = substr($1, 1, width); looks[clock]++}
    $2 != "-" {n = split($2, waits, ","); for (i = 1; i <= n; i++) {split(waits[i], kv, "="); sum[clock, kv[1]] += kv[2]; seen[clock, kv[1]] = 1}}
    END {for (key in seen) {split(key, part, SUBSEP); printf "%s %s %.2f\n", part[1], part[2], sum[key] / looks[part[1]]}}
  ' "$work/waits.log" | sort -k1,1 -k3,3nr |
    awk '{if ($1 != clock) {if (clock != "") print clock, line; clock = $1; line = ""; shown = 0}
          if (shown++ < 6) line = line (line == "" ? "" : ",") $2 "=" $3}
         END {if (clock != "") print clock, line}'
}
# Not when the run ended before its first minute (a failed probe): no seconds were kept.
if [ -s "$work/binds.log" ]; then
  say "the seconds before the run's three slowest requests (queries aside)"
  sed -nE 's/.*slowest: (.*) ([0-9]+) ms at ([0-9:]+)$/\2 \3 \1/p' "$work/soak.log" | sort -rn | head -n 3 |
    while read -r ms at kind; do
      echo "-- $kind, $ms ms, due at $at"
      # Each second's line from 12 before to 4 after (a clock, so across midnight too), with the
      # binds due in it (count, p50, p99 and slowest, ms) and what PostgreSQL waited on.
      awk -v at="$at" '
        function seconds(clock, part) {split(clock, part, ":"); return part[1] * 3600 + part[2] * 60 + part[3]}
        FNR == 1 {file++}
        file == 1 && FNR == 1 {next}
        file == 1 {binds[$1] = $2 " " $3 " " $4 " " $5; next}
        file == 2 {waits[$1] = $2; next}
        FNR == 1 {printf "%s binds bind_p50 bind_p99 bind_max postgres_waits\n", $0; next}
        {away = (seconds($1) - seconds(at) + 86400 + 43200) % 86400 - 43200}
        away >= -12 && away <= 4 {print $0, ($1 in binds ? binds[$1] : "0 - - -"), ($1 in waits ? waits[$1] : "-")}
      ' "$work/binds.log" <(waits_by 8) "$work/seconds.log"
    done
fi
say "what PostgreSQL's processes waited on, by minute (backends in each, on average over the looks)"
waits_by 5
# PostgreSQL logs its checkpoints (log_checkpoints is on by default since 15): when each began
# and ended, to set beside the minutes' slowest requests.
pg_log=$(ls -t /var/log/postgresql/postgresql-*-main.log 2>/dev/null | head -n 1 || true)
[ -n "$own_postgres" ] && pg_log=$own_postgres/postgresql.log
if [ -n "$pg_log" ] && [ -r "$pg_log" ]; then
  say "PostgreSQL's checkpoints during the soak"
  awk -v since="$soak_started" 'substr($0, 1, 19) >= since && /checkpoint (starting|complete)/' "$pg_log" |
    cut -c1-220
fi
if grep -qE ' (ERROR|WARN) ' "$work/up.log"; then
  say "what qrpool logged at warn and above"
  grep -E ' (ERROR|WARN) ' "$work/up.log" | sed -E 's/^[^ ]+ +//; s/depth=[0-9]+/depth=…/' | cut -c1-300 |
    sort | uniq -c | sort -rn | head -n 20
fi
exit "$status"
