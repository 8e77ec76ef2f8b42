#!/usr/bin/env python3
"""What a link edit costs as the link's history grows.

Starts `qrpool up` on embedded defaults in a temporary folder, makes one link, edits it
EDITS times one after the other through the links API (each edit a new version), and prints
the median and p90 time of an edit in windows of 100 along the way, then the time of a read
of the link and of the latest page of its versions. Python's standard library only.

    benches/link-edits.py                        EDITS=3000, target/release/qrpool
    QRPOOL_BIN=/tmp/qrpool-before benches/link-edits.py   another build, same steps
"""

import json
import os
import re
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDITS = int(os.environ.get("EDITS", "3000"))
BIN = os.environ.get("QRPOOL_BIN", os.path.join(REPO, "target", "release", "qrpool"))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as work:
        env = dict(
            os.environ,
            QRPOOL_EMBEDDED__DATA_DIR=os.path.join(work, "data"),
            QRPOOL_SERVER__LISTEN=f"127.0.0.1:{port}",
            QRPOOL_REDIRECT__ALLOWED_HOSTS__DEFAULT='["shop.example"]',
        )
        log_path = os.path.join(work, "up.log")
        with open(log_path, "w") as log:
            server = subprocess.Popen([BIN, "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            key = wait_for_key(log_path, base)

            def call(method, path, body=None):
                request = urllib.request.Request(
                    base + path,
                    method=method,
                    data=None if body is None else json.dumps(body).encode(),
                    headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
                )
                with urllib.request.urlopen(request) as response:
                    return json.loads(response.read())

            link = call("POST", "/v1/links", {"target": {"destination": "https://shop.example/0"}})
            path = f"/v1/links/{link['key']}"
            times = []
            for edit in range(1, EDITS + 1):
                started = time.perf_counter()
                call("PATCH", path, {"target": {"destination": f"https://shop.example/{edit}"}})
                times.append((time.perf_counter() - started) * 1e3)
            print(f"{BIN}: {EDITS} edits of one link, one after the other")
            for start in range(0, EDITS, max(EDITS // 10, 100)):
                window = sorted(times[start : start + 100])
                p90 = window[int(len(window) * 0.9) - 1]
                print(
                    f"  edits {start + 1:>5}-{start + len(window):<5} median {statistics.median(window):6.2f} ms"
                    f"  p90 {p90:6.2f} ms"
                )
            started = time.perf_counter()
            call("GET", path)
            read = (time.perf_counter() - started) * 1e3
            started = time.perf_counter()
            page = call("GET", f"{path}/versions?after={max(EDITS - 99, 0)}&limit=100")
            versions = (time.perf_counter() - started) * 1e3
            print(f"  read of the link {read:.2f} ms; latest page of versions ({len(page['versions'])}) {versions:.2f} ms")
        finally:
            server.terminate()
            server.wait(timeout=30)


def wait_for_key(log_path, base):
    """The API key `qrpool up` prints on its first start, once it answers /readyz."""
    deadline = time.time() + 120
    key = None
    while time.time() < deadline:
        with open(log_path) as log:
            found = re.search(r"export QRPOOL_KEY=(\S+)", log.read())
        if found:
            key = found.group(1)
            try:
                with urllib.request.urlopen(base + "/readyz") as response:
                    if response.status == 200:
                        return key
            except OSError:
                pass
        time.sleep(0.5)
    raise SystemExit(f"qrpool up did not become ready with a key in 120 s; see {log_path}")


if __name__ == "__main__":
    main()
