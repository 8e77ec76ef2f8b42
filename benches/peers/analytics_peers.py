#!/usr/bin/env python3
"""The dashboard's queries on the peers, over the same events as qrpool's embedded store:

- chDB (ClickHouse in-process) over the very Parquet files qrpool wrote (the tenant's 30 day
  folders, as qrpool reads them);
- SQLite over a row table with an index on (tenant, day): the do-it-yourself baseline.

One JSON line per engine and query: the median and the fastest time of RUNS runs, and the
answer's first row, to check that every engine answers alike. Called by
benches/analytics-vs-peers.sh.
"""

import argparse
import datetime
import glob
import json
import os
import sqlite3
import statistics
import sys
import time

QUERIES = [
    # name, group column (None: a time series by day), limit
    ("time series by day", None, None),
    ("top countries", "country", 10),
    ("devices", "device", 10),
    ("browsers", "browser", 10),
    ("referrers", "referrer", 10),
    ("QR vs click", "via_qr", 10),
    ("top keys", "key", 10),
]


def timed(run, runs):
    times, answer = [], None
    run()  # warm-up: the OS cache, the engines' own
    for _ in range(runs):
        started = time.perf_counter()
        answer = run()
        times.append((time.perf_counter() - started) * 1e3)
    times.sort()
    return statistics.median(times), times[0], answer


def sqlite_db(directory, rebuild=False):
    path = os.path.join(directory, "sqlite", "scans.db")
    if os.path.exists(path) and not rebuild:
        return sqlite3.connect(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    db.execute(
        "CREATE TABLE scans (tenant TEXT, day TEXT, at TEXT, kind TEXT, key TEXT, outcome TEXT,"
        " device TEXT, bot INTEGER, browser TEXT, os TEXT, country TEXT, referrer TEXT,"
        " via_qr INTEGER, visitor TEXT)"
    )
    started = time.perf_counter()
    rows = 0
    for file in sorted(glob.glob(os.path.join(directory, "scans", "*.jsonl"))):
        batch = []
        with open(file, "rb") as lines:
            for line in lines:
                e = json.loads(line)
                batch.append((
                    e.get("tenant"), e["at"][:10], e["at"], e["kind"], e["key"], e["outcome"],
                    e["device"], int(e["bot"]), e.get("browser"), e.get("os"), e.get("country"),
                    e.get("referrer"), int(e["via_qr"]), e.get("visitor"),
                ))
                if len(batch) == 100_000:
                    db.executemany("INSERT INTO scans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", batch)
                    rows += len(batch)
                    batch = []
        db.executemany("INSERT INTO scans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", batch)
        rows += len(batch)
    db.execute("CREATE INDEX scans_by_tenant_day ON scans (tenant, day)")
    db.commit()
    print(json.dumps({"engine": "sqlite", "loaded": rows, "seconds": time.perf_counter() - started}),
          file=sys.stderr)
    return db


def sqlite_query(db, tenant, first, last, group, limit):
    where = "tenant = ? AND day >= ? AND day <= ? AND bot = 0"
    if group is None:
        sql = ("SELECT day, COUNT(*), COUNT(DISTINCT visitor) FROM scans WHERE " + where
               + " GROUP BY day ORDER BY day")
    else:
        column = "CASE via_qr WHEN 1 THEN 'true' ELSE 'false' END" if group == "via_qr" else group
        sql = ("SELECT %s AS g, COUNT(*) AS s, COUNT(DISTINCT day || visitor) FROM scans WHERE %s"
               " GROUP BY g ORDER BY s DESC, g IS NULL, g LIMIT %d" % (column, where, limit))
    return lambda: db.execute(sql, (tenant, first, last)).fetchall()


def chdb_query(session, files, group, limit):
    source = "file('%s', Parquet)" % files
    if group is None:
        sql = ("SELECT toDate(at) AS d, count(), uniqExact(toDate(at), visitor) FROM %s"
               " WHERE NOT bot GROUP BY d ORDER BY d" % source)
    else:
        column = "toString(via_qr)" if group == "via_qr" else group
        sql = ("SELECT %s AS g, count() AS s, uniqExact(toDate(at), visitor) FROM %s WHERE NOT bot"
               " GROUP BY g ORDER BY s DESC, isNull(g), g LIMIT %d" % (column, source, limit))
    return lambda: session.query(sql, "JSONCompact").bytes()


def first_row(engine, answer):
    if engine == "chdb":
        data = json.loads(answer)["data"]
        return data[0] if data else None
    return list(answer[0]) if answer else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--tenant", default="tenant-000")
    parser.add_argument("--first-day", default="2026-11-01")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--engines", default="chdb,sqlite")
    args = parser.parse_args()
    first = datetime.date.fromisoformat(args.first_day)
    days = [first + datetime.timedelta(days=n) for n in range(args.days)]
    last = days[-1]
    engines = args.engines.split(",")
    if "chdb" in engines:
        from chdb import session
        chdb = session.Session()
        folders = ",".join("day=%s" % day for day in days)
        files = os.path.join(os.path.abspath(args.dir), "analytics", "scans", "{%s}" % folders,
                             "tenant=%s" % args.tenant, "*.parquet")
        for name, group, limit in QUERIES:
            median, fastest, answer = timed(chdb_query(chdb, files, group, limit), args.runs)
            print(json.dumps({"engine": "chdb", "query": name, "median_ms": median, "fastest_ms": fastest,
                              "first_row": first_row("chdb", answer)}), flush=True)
    if "sqlite" in engines:
        db = sqlite_db(args.dir)
        for name, group, limit in QUERIES:
            run = sqlite_query(db, args.tenant, str(first), str(last), group, limit)
            median, fastest, answer = timed(run, max(3, args.runs // 5))
            print(json.dumps({"engine": "sqlite", "query": name, "median_ms": median, "fastest_ms": fastest,
                              "first_row": first_row("sqlite", answer)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
