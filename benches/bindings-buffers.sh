#!/usr/bin/env bash
# What PostgreSQL's shared buffers do to binds on a young bindings table: every id in one
# hour's range (records/src/request_id.rs: the top six bits are the hour), as a table is in
# its first hour and as the soak's is for all of its 30 minutes. Each bind inserts its id into
# two primary-key indexes (`bindings`, `code_images`) at a random leaf of that hour's range;
# once the range outgrows the shared buffers, inserts read their leaves back from the kernel
# and write dirty ones out to make room.
#
# For each size in SIZES: a PostgreSQL of its own (initdb'd on PORT, removed after) with that
# shared_buffers, qrpool's own bindings schema (bindings/migrations/postgres) filled with ROWS
# binds and their images, then SECONDS of pgbench at RATE batches a second (4 binds with their
# images in one statement, as qrpool's group commit writes them) from 8 clients. Prints each
# batch's latency percentiles (pgbench's own per-transaction log) and the blocks PostgreSQL
# read from outside its buffers during the run.
#
#   benches/bindings-buffers.sh          SIZES="128MB 2GB" ROWS=2000000 RATE=300 SECONDS_EACH=60
#   ROWS=4000000 SIZES="128MB 512MB 2GB" benches/bindings-buffers.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"
cd "$repo"

sizes=${SIZES:-128MB 2GB}
rows=${ROWS:-2000000}
rate=${RATE:-300}
seconds=${SECONDS_EACH:-60}
port=${PORT:-5433}
work=$(mktemp -d)
cluster=
stop_cluster() {
  stop_postgres_of_its_own "$cluster"
  cluster=
}
cleanup() {
  stop_cluster
  rm -rf "$work"
}
trap cleanup EXIT

start_postgres # installs PostgreSQL (and pgbench) when missing
psql_() { psql -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

printf '%-8s %9s %9s %8s %8s %8s %8s %8s %12s\n' buffers binds 'pkeys MB' batches p50_ms p99_ms p999_ms max_ms blocks_read
for size in $sizes; do
  cluster=$(start_postgres_of_its_own "$port" "$size")
  psql_ -c "CREATE DATABASE bench" postgres
  for migration in bindings/migrations/postgres/*.sql; do psql_ -f "$migration" bench; done
  # 22 hexadecimal characters of one hour's range: a fixed first digit and a second among
  # four, one sixty-fourth of the space (benches/bindings-wal.sh's ids).
  psql_ bench <<'SQL'
CREATE FUNCTION one_hour_id() RETURNS text LANGUAGE sql AS
  $$ SELECT '7' || floor(random() * 4)::int || substr(md5(random()::text), 1, 20) $$;
SQL
  for ((filled = 0; filled < rows; filled += 200000)); do
    batch=$((rows - filled < 200000 ? rows - filled : 200000))
    psql_ bench <<SQL
BEGIN;
CREATE TEMP TABLE ids AS SELECT one_hour_id() AS id FROM generate_series(1, $batch);
INSERT INTO bindings (request_id, tenant, params, content, issuer, version, created_at)
  SELECT id, 'bench', '{"listing": "L-1001", "n": 1}', 'https://example.com/m/' || id, 'local', 1, now()
  FROM ids ON CONFLICT DO NOTHING;
INSERT INTO code_images SELECT id, 'image/png', decode(repeat(md5(random()::text), 26), 'hex')
  FROM ids ON CONFLICT DO NOTHING;
COMMIT;
SQL
  done
  psql_ -c "VACUUM ANALYZE" bench
  psql_ -c CHECKPOINT bench
  cat >"$work/bind.sql" <<'SQL'
WITH ids AS (SELECT one_hour_id() AS id FROM generate_series(1, 4)),
     inserted AS (INSERT INTO bindings (request_id, tenant, params, content, issuer, version, created_at)
                  SELECT id, 'bench', '{"listing": "L-1001", "n": 1}', 'https://example.com/m/' || id, 'local', 1, now()
                  FROM ids ORDER BY id ON CONFLICT DO NOTHING RETURNING request_id)
INSERT INTO code_images SELECT request_id, 'image/png', decode(repeat(md5(random()::text), 26), 'hex') FROM inserted;
SQL
  read_before=$(psql_ -c "SELECT sum(blks_read) FROM pg_stat_database WHERE datname = 'bench'" bench)
  (cd "$work" && rm -f pgbench_log.* &&
    pgbench -n -h 127.0.0.1 -p "$port" -U postgres -R "$rate" -T "$seconds" -c 8 -j 2 -l \
      -f "$work/bind.sql" bench >"$work/pgbench.log" 2>&1) || { cat "$work/pgbench.log" >&2; exit 1; }
  read_after=$(psql_ -c "SELECT sum(blks_read) FROM pg_stat_database WHERE datname = 'bench'" bench)
  index_mb=$(psql_ -c "SELECT (pg_relation_size('bindings_pkey') + pg_relation_size('code_images_pkey')) / 1048576" bench)
  binds=$(psql_ -c "SELECT count(*) FROM bindings" bench)
  # pgbench's log: the third field is a transaction's latency in microseconds.
  cat "$work"/pgbench_log.* | awk '{print $3 / 1000}' | sort -n |
    awk -v size="$size" -v binds="$binds" -v mb="$index_mb" -v blocks="$((read_after - read_before))" '
      {ms[NR] = $1}
      END {printf "%-8s %9d %9d %8d %8.2f %8.2f %8.2f %8.2f %12d\n", size, binds, mb, NR,
        ms[int(NR * 0.5)], ms[int(NR * 0.99)], ms[int(NR * 0.999)], ms[NR], blocks}'
  stop_cluster
done
