# Shared by scripts/test and the benchmark scripts: installs and starts, each only when absent,
# the toolchain pieces and the backends qrpool is tested and measured against. Every server
# listens on loopback only. Source it; it defines functions and changes nothing by itself.
#
#   toolchain                     rustfmt, clippy, a C toolchain, pkg-config, zlib headers
#   start_redis                   Redis on 127.0.0.1:6379
#   start_postgres                PostgreSQL on 127.0.0.1:5432, user postgres/postgres over TCP
#   start_kafka_protocol_broker   tansu on 127.0.0.1:9092, built once into $QRPOOL_CACHE
#   python_with_chdb              a Python with chDB (ClickHouse in-process): $chdb_python
#   fault_test_tools              ip (network namespaces) and iptables, for the fault tests
#   browser_test_deps DIR         Node.js, Debian's Chromium, and DIR's npm packages (npm ci; no
#                                 browser is ever downloaded)

cache=${QRPOOL_CACHE:-$HOME/.cache/qrpool}
tansu_version=0.6.0
# memory:// for the tests' shared broker (fast, nothing to clean); sqlite:// (libsql) for the
# tests that restart a broker and need its topics and offsets to outlive it.
tansu_features=dynostore,libsql
tansu_root=$cache/tansu-$tansu_version-${tansu_features//,/-}
tansu_bin=$tansu_root/bin/tansu
mkdir -p "$cache/logs"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for_port() {
  local port=$1 name=$2 tries=${3:-120}
  for ((i = 0; i < tries; i++)); do listening "$port" && return 0; sleep 0.5; done
  echo "$name did not start listening on 127.0.0.1:$port" >&2
  return 1
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=false
apt_install() {
  local missing=()
  for package in "$@"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  if ! $apt_updated; then as_root apt-get update -qq; apt_updated=true; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

toolchain() {
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
  done
  apt_install build-essential pkg-config zlib1g-dev
}

# The fault tests put a server in a network namespace and drop its packets (tests/tests/faults).
fault_test_tools() {
  apt_install iproute2 iptables
}

start_redis() {
  listening 6379 && return 0
  apt_install redis-server
  say "starting Redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --logfile "$cache/logs/redis.log"
  wait_for_port 6379 Redis
}

start_postgres() {
  if ! listening 5432; then
    apt_install postgresql
    say "starting PostgreSQL on 127.0.0.1:5432"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(postgres_version)" main start
    wait_for_port 5432 PostgreSQL
  fi
  # The tests connect as postgres/postgres over TCP; a fresh cluster wants a password there.
  if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -tAc 'SELECT 1' postgres >/dev/null 2>&1; then
    say "setting the postgres password for TCP logins"
    as_root runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'"
  fi
}

# A PostgreSQL of a benchmark's own on 127.0.0.1:$1 with `shared_buffers = $2`, any further
# settings ("name = value" lines) after: initdb'd into a new folder under /var/tmp (PostgreSQL
# runs as its own user, who cannot enter a folder of mktemp's), trust logins as postgres.
# Prints the folder; stop_postgres_of_its_own removes it. The machine's PostgreSQL (start_postgres)
# stays as it is: the tests share it.
start_postgres_of_its_own() {
  local port=$1 buffers=$2 dir setting
  shift 2
  dir=$(mktemp -d -p /var/tmp qrpool-postgres.XXXXXX)
  as_root chown postgres "$dir"
  as_root runuser -u postgres -- "$(postgres_bin)/initdb" -D "$dir" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
  # The folder is PostgreSQL's user's now: the settings go in as root too.
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "shared_buffers = $buffers"
    for setting in "$@"; do echo "$setting"; done
  } | as_root tee -a "$dir/postgresql.conf" >/dev/null
  as_root runuser -u postgres -- "$(postgres_bin)/pg_ctl" -D "$dir" -l "$dir/postgresql.log" -w start >/dev/null
  echo "$dir"
}
stop_postgres_of_its_own() {
  [ -n "${1:-}" ] && [ -d "$1" ] || return 0
  as_root runuser -u postgres -- "$(postgres_bin)/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1 || true
  as_root rm -rf "$1"
}
postgres_bin() { echo "/usr/lib/postgresql/$(postgres_version)/bin"; }
# The newest PostgreSQL Debian installed (its clusters are under /etc/postgresql/<version>).
postgres_version() { ls /etc/postgresql | sort -V | tail -n 1; }

start_kafka_protocol_broker() {
  listening 9092 && return 0
  if [ ! -x "$tansu_bin" ]; then
    say "building tansu $tansu_version once into $cache (about 20 minutes on 2 cores)"
    cargo install --locked --quiet tansu@"$tansu_version" --features "$tansu_features" --root "$tansu_root"
  fi
  say "starting tansu (Kafka protocol) on 127.0.0.1:9092"
  nohup "$tansu_bin" broker --storage-engine memory://tansu/ \
    --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    >"$cache/logs/tansu.log" 2>&1 &
  disown || true
  wait_for_port 9092 tansu
}

# A Python that can `import chdb`: the machine's when it already can, else a virtual
# environment made once in $QRPOOL_CACHE (Debian's Python refuses system-wide pip installs).
chdb_version=4.4.0
chdb_python=python3
python_with_chdb() {
  if python3 -c 'import chdb' >/dev/null 2>&1; then
    chdb_python=$(command -v python3)
    return 0
  fi
  local venv="$cache/chdb-$chdb_version"
  if ! "$venv/bin/python" -c 'import chdb' >/dev/null 2>&1; then
    command -v python3 >/dev/null 2>&1 || apt_install python3
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv
    say "installing chdb $chdb_version (ClickHouse in-process, PyPI) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "chdb==$chdb_version"
  fi
  chdb_python="$venv/bin/python"
}

browser_test_deps() {
  local dir=$1
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  [ -x /usr/bin/chromium ] || apt_install chromium
  # npm ci again only when the lock file changed since the last install.
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    say "installing the console's browser-test packages (npm ci, no browser download)"
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  fi
}
