#!/usr/bin/env bash
# Issue 18's bar: how much of a remote issuer's quota pregen uses, and whether it ever exceeds
# it, with one worker and with three sharing the quota through Redis, against windows aligned
# to the clock and sliding.
#
#   1. the stand-in mini-program code API (tests/src/bin/wechat-stand-in.rs) at QUOTA calls per
#      WINDOW_MS, counting every call as the real API does and logging when each arrived;
#   2. WORKERS `qrpool pregen fill --issuer wx` processes for SECONDS, each asked for more codes
#      than the quota allows in that time, on one embedded data folder (and one Redis for
#      several workers), then stopped with SIGTERM;
#   3. from the stand-in's own log: over-quota answers (45009), the most calls in any sliding
#      window (at most QUOTA), and the calls between the first and the last as a share of what
#      the quota allows over that time.
#
#   benches/quota.sh                       1 and 3 workers x aligned and sliding, 2 minutes each
#   SECONDS_EACH=30 CASES="3:sliding" benches/quota.sh
#
# Debug builds: the rate is 20 calls a second, far below what either program can do.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"
cd "$repo"

quota=${QUOTA:-100}
window_ms=${WINDOW_MS:-5000}
seconds=${SECONDS_EACH:-120}
cases=${CASES:-1:aligned 1:sliding 3:aligned 3:sliding}
port=${PORT:-18390}
target=${CARGO_TARGET_DIR:-$repo/target}

apt_install curl
start_redis
say "building qrpool and the stand-in issuer"
cargo build --locked --quiet -p qrpool -p tests --bin qrpool --bin wechat-stand-in
qrpool=$target/debug/qrpool
stand_in=$target/debug/wechat-stand-in

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"; [ -z "${KEEP:-}" ] || echo "kept $work"
}
trap cleanup EXIT

printf '\n| workers | window | seconds | calls | over quota (45009) | most in any %s ms (quota %s) | share of the quota used |\n' "$window_ms" "$quota"
printf '| --- | --- | --- | --- | --- | --- | --- |\n'
for case in $cases; do
  workers=${case%%:*}
  kind=${case#*:}
  run=$work/$workers-$kind
  mkdir -p "$run"
  "$stand_in" --port "$port" --quota "$quota" --window-ms "$window_ms" --window "$kind" >"$run/stand-in.log" 2>&1 &
  stand_in_pid=$!
  pids+=("$stand_in_pid")
  wait_for_port "$port" "the stand-in issuer" >/dev/null

  cat >"$run/qrpool.toml" <<TOML
[embedded]
data_dir = "$run/data"
[pregen]
issuer = "wx"
batch = 50
[pregen.issuers.wx]
kind = "wechat"
endpoint = "http://127.0.0.1:$port"
app_id = "wx-test-app"
page = "pages/middle/index"
quota = { calls = $quota, window_ms = $window_ms }
TOML
  redis_env=()
  if [ "$workers" -gt 1 ]; then
    redis_env=(QRPOOL_REDIS__URL=redis://127.0.0.1:6379 "QRPOOL_REDIS__KEY_PREFIX=quota-bench-$$-$workers-$kind:")
  fi
  # More codes than the quota allows in the time: every worker is busy until it is stopped.
  codes=$((quota * seconds * 1000 / window_ms + 100))
  fills=()
  for ((w = 0; w < workers; w++)); do
    env "${redis_env[@]}" QRPOOL_CONFIG="$run/qrpool.toml" QRPOOL_PREGEN__ISSUERS__WX__APP_SECRET=test-secret \
      QRPOOL_TELEMETRY__FILTER=warn "$qrpool" pregen fill --issuer wx --count "$codes" >"$run/worker-$w.log" 2>&1 &
    fills+=($!)
    pids+=($!)
  done
  sleep "$seconds"
  kill -TERM "${fills[@]}" 2>/dev/null || true
  for pid in "${fills[@]}"; do wait "$pid" 2>/dev/null || true; done
  curl -sf "http://127.0.0.1:$port/stand-in/calls" >"$run/calls.json"
  kill "$stand_in_pid" && wait "$stand_in_pid" 2>/dev/null || true

  python3 - "$run/calls.json" "$quota" "$window_ms" "$workers" "$kind" "$seconds" <<'PY'
import json, sys
calls = json.load(open(sys.argv[1]))
quota, window, workers, kind, seconds = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
times = calls["call_times_ms"]
most, first = 0, 0
for last, at in enumerate(times):
    while times[first] + window <= at:
        first += 1
    most = max(most, last + 1 - first)
span = times[-1] - times[0] if len(times) > 1 else 0
# n calls at the allowed rate span n - 1 intervals of window / quota.
used = (len(times) - 1) / (span / window * quota) if span else 0.0
print(f"| {workers} | {kind} | {seconds} | {len(times)} | {calls['over_quota']} | {most} | {used * 100:.1f} % |")
PY
done
