#!/usr/bin/env python3
# The disk's flush tail, beside a run: appends 4 KiB and fdatasyncs it ten times a second to
# FILE (put it on the disk under test, e.g. the one PostgreSQL's WAL is on) and prints a line a
# minute: UTC minute, flushes, median ms, p99 ms, slowest ms, flushes over 25 ms, over 100 ms.
#
#   python3 benches/disk-flush-probe.py /var/tmp/flush-probe.dat > flush.log &   # stop with kill
#
# With --each, a line a flush instead: its Unix time and ms (benches/soak.sh reads these for its
# own minutes).
import os, sys, time, statistics
path = sys.argv[1]
each = "--each" in sys.argv[2:]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
block = b"x" * 4096
minute, times = int(time.time() // 60), []
while True:
    started = time.perf_counter()
    os.write(fd, block)
    os.fdatasync(fd)
    took = (time.perf_counter() - started) * 1e3
    times.append(took)
    if each:
        print(f"{time.time():.3f} {took:.2f}", flush=True)
    now = int(time.time() // 60)
    if now != minute and not each:
        times.sort()
        print(time.strftime("%H:%M", time.gmtime(minute * 60)), len(times),
              f"{statistics.median(times):.2f}", f"{times[int(len(times) * 0.99)]:.2f}", f"{times[-1]:.1f}",
              sum(t > 25 for t in times), sum(t > 100 for t in times), flush=True)
    if now != minute:
        minute, times = now, []
        os.ftruncate(fd, 0)
    time.sleep(max(0, 0.1 - (time.perf_counter() - started)))
