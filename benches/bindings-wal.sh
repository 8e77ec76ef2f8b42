#!/usr/bin/env bash
# What a bind costs PostgreSQL's write-ahead log on a table of production size, with request
# ids spread over the whole key space (as they were before they carried the hour) against ids
# of one hour (records/src/request_id.rs: the top six bits are the hour, modulo 64).
#
#   1. a database with qrpool's own bindings schema (bindings/migrations/postgres), filled
#      with ROWS binds and their images, ids uniform over the key space (a table older than
#      64 hours looks like that either way: its rows are in every hour's range);
#   2. ROUNDS rounds of two SECONDS-long pgbench runs, one of each kind of id, each after a
#      CHECKPOINT (so both start from the same state): batches of 4 binds with their images in
#      one statement, as qrpool's group commit writes them, from CLIENTS clients;
#   3. per run: binds/s, WAL bytes and full-page images per bind (pg_stat_wal), and the size
#      of the primary-key index.
#
# The ids are 22 hexadecimal characters: what matters is the same (a fixed width, a byte-wise
# order, one hour's range being one sixty-fourth of the space: a fixed first digit and a
# second among four).
#
#   benches/bindings-wal.sh                ROWS=4000000 ROUNDS=2 SECONDS_EACH=20 CLIENTS=8
#   ROWS=1000000 ROUNDS=3 benches/bindings-wal.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"
cd "$repo"

rows=${ROWS:-4000000}
rounds=${ROUNDS:-2}
seconds=${SECONDS_EACH:-20}
clients=${CLIENTS:-8}
database=qrpool_bindings_wal_$$
work=$(mktemp -d)
psql_() { PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
cleanup() {
  psql_ -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" postgres >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

start_postgres # and with it pgbench

say "a bindings table of $rows binds with their images"
psql_ -c "CREATE DATABASE $database" postgres
for migration in bindings/migrations/postgres/*.sql; do psql_ -f "$migration" "$database"; done
psql_ "$database" <<'SQL'
CREATE FUNCTION uniform_id() RETURNS text LANGUAGE sql AS $$ SELECT substr(md5(random()::text), 1, 22) $$;
CREATE FUNCTION one_hour_id() RETURNS text LANGUAGE sql AS
  $$ SELECT '7' || floor(random() * 4)::int || substr(md5(random()::text), 1, 20) $$;
SQL
for ((filled = 0; filled < rows; filled += 200000)); do
  batch=$((rows - filled < 200000 ? rows - filled : 200000))
  psql_ "$database" <<SQL
BEGIN;
CREATE TEMP TABLE ids AS SELECT uniform_id() AS id FROM generate_series(1, $batch);
INSERT INTO bindings (request_id, tenant, params, content, issuer, version, created_at)
  SELECT id, 'bench', '{"listing": "L-1001", "n": 1}', 'https://example.com/m/' || id, 'local', 1, now() FROM ids;
INSERT INTO code_images SELECT id, 'image/png', decode(repeat(md5(random()::text), 26), 'hex') FROM ids;
COMMIT;
SQL
done
psql_ -c "VACUUM ANALYZE" "$database"

for kind in uniform one_hour; do
  cat >"$work/$kind.sql" <<SQL
WITH ids AS (SELECT ${kind}_id() AS id FROM generate_series(1, 4)),
     inserted AS (INSERT INTO bindings (request_id, tenant, params, content, issuer, version, created_at)
                  SELECT id, 'bench', '{"listing": "L-1001", "n": 1}', 'https://example.com/m/' || id, 'local', 1, now()
                  FROM ids ORDER BY id ON CONFLICT DO NOTHING RETURNING request_id)
INSERT INTO code_images SELECT request_id, 'image/png', decode(repeat(md5(random()::text), 26), 'hex') FROM inserted;
SQL
done

wal() { psql_ -F ' ' -c "SELECT wal_fpi, wal_bytes FROM pg_stat_wal" "$database"; }
say "$rounds rounds of $seconds s of each kind of id, $clients clients, batches of 4 binds"
printf '%-9s %-9s %10s %14s %14s %12s\n' round ids binds/s 'WAL B/bind' 'FPI/bind' 'pkey MB'
for ((round = 1; round <= rounds; round++)); do
  for kind in uniform one_hour; do
    psql_ -c CHECKPOINT "$database"
    read -r fpi_before bytes_before < <(wal)
    PGPASSWORD=postgres pgbench -n -h 127.0.0.1 -U postgres -T "$seconds" -c "$clients" -j 2 \
      -f "$work/$kind.sql" "$database" >"$work/pgbench.log" 2>&1 || { cat "$work/pgbench.log" >&2; exit 1; }
    read -r fpi_after bytes_after < <(wal)
    binds_done=$(awk '/^number of transactions actually processed/ {print $NF * 4}' "$work/pgbench.log")
    index_mb=$(psql_ -c "SELECT pg_relation_size('bindings_pkey') / 1048576" "$database")
    awk -v round="$round" -v kind="$kind" -v secs="$seconds" -v mb="$index_mb" \
      -v n="$binds_done" -v fpi="$((fpi_after - fpi_before))" -v bytes="$((bytes_after - bytes_before))" \
      'BEGIN {printf "%-9s %-9s %10.0f %14.0f %14.3f %12d\n", round, kind, n / secs, bytes / n, fpi / n, mb}'
  done
done
