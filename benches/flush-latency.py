#!/usr/bin/env python3
"""How long this disk takes to make a small write durable: the latency a database's commit
(PostgreSQL's WAL flush, SQLite's) waits for, measured alone.

    python3 benches/flush-latency.py [SECONDS] [FILE]     defaults: 120, ./flush-latency.probe

Writes 8 KiB and `fdatasync`s it in a loop (2 ms apart, over a 16 MiB file) for SECONDS,
then prints the percentiles and every flush over 50 ms with the time it ended. Run it on the
disk that holds the database's files; run it beside a load to see what that load does to it.
"""
import os
import sys
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
path = sys.argv[2] if len(sys.argv) > 2 else "flush-latency.probe"
block = os.urandom(8192)
latencies, slow = [], []
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
try:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if len(latencies) % 2048 == 0:
            os.lseek(fd, 0, os.SEEK_SET)
        started = time.monotonic()
        os.write(fd, block)
        os.fdatasync(fd)
        took = time.monotonic() - started
        latencies.append(took)
        if took > 0.05:
            slow.append(f"{time.strftime('%H:%M:%S', time.gmtime())} {took * 1e3:.0f} ms")
        time.sleep(0.002)
finally:
    os.close(fd)
    os.unlink(path)

latencies.sort()


def percentile(p):
    return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e3


print(
    f"{len(latencies)} fdatasyncs of 8 KiB: p50 {percentile(0.5):.2f} ms, p99 {percentile(0.99):.2f} ms, "
    f"p99.9 {percentile(0.999):.2f} ms, max {latencies[-1] * 1e3:.0f} ms"
)
print("over 50 ms (UTC):", ", ".join(slow) if slow else "none")
