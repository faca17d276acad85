#!/usr/bin/env python3
"""Hostile cardinality through the real services: N rides, every one from a
city never seen before, posted to `pulse ingest`, stored by `pulse sink`,
aggregated by `pulse dataflow` (separate processes against the running local
stack). Prints each process's peak RSS (VmHWM) once every event is stored and
read by the dataflow.

    scripts/stack up
    python3 scripts/bench_cardinality.py --pulse target/release/pulse --events 1000000

Run it with two binaries (e.g. built from two commits) for a before/after figure.
The stack's addresses come from PULSE_KAFKA_BROKERS / PULSE_CLICKHOUSE_URL
(defaults: the stack's defaults).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def clickhouse(url: str, sql: str) -> str:
    req = urllib.request.Request(url, data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read().decode().strip()


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def metric(text: str, prefix: str) -> float:
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pulse", default=os.path.join(ROOT, "target/release/pulse"))
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--spec", default=os.path.join(ROOT, "pulse.toml"), help="spec to run with (the binary's own version of it)")
    args = ap.parse_args()

    brokers = os.environ.get("PULSE_KAFKA_BROKERS", "127.0.0.1:9092")
    ch_url = os.environ.get("PULSE_CLICKHOUSE_URL", "http://127.0.0.1:8123")
    tag = uuid.uuid4().hex[:8]
    work = tempfile.mkdtemp(prefix="pulse-cardinality-")
    spec = open(args.spec).read()
    spec = re.sub(r'^topic = "([^"]+)"', lambda m: f'topic = "{m.group(1)}-{tag}"', spec, flags=re.M)
    spec_path = os.path.join(work, "pulse.toml")
    open(spec_path, "w").write(spec)
    database = f"pulse_card_{tag}"
    ingest_port, sink_m, df_m = free_port(), free_port(), free_port()
    env = dict(os.environ, PULSE_SPEC=spec_path, PULSE_KAFKA_BROKERS=brokers, PULSE_CLICKHOUSE_URL=ch_url,
               PULSE_CLICKHOUSE_DATABASE=database, PULSE_LOG="warn",
               # Loopback only, a throwaway database: no keys (and no rate limit) for the benchmark.
               PULSE_INSECURE="1", PULSE_INGEST_RATE_LIMIT="0",
               PULSE_INGEST_ADDR=f"127.0.0.1:{ingest_port}",
               PULSE_SINK_METRICS_ADDR=f"127.0.0.1:{sink_m}", PULSE_DATAFLOW_METRICS_ADDR=f"127.0.0.1:{df_m}")
    for cmd in (["topics"], ["migrate"]):
        subprocess.run([args.pulse, *cmd], env=env, check=True, stdout=subprocess.DEVNULL)
    procs = {}
    for name, cmd in (("ingest", ["ingest"]), ("sink", ["sink"]), ("dataflow", ["dataflow", "-w", "1"])):
        log = open(os.path.join(work, f"{name}.log"), "w")
        procs[name] = subprocess.Popen([args.pulse, *cmd], env=env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 60
        while True:
            try:
                get(f"http://127.0.0.1:{ingest_port}/ready")
                break
            except Exception:
                if time.time() > deadline:
                    raise SystemExit(f"ingest not ready; logs in {work}")
                time.sleep(0.3)
        started = time.time()
        url = f"http://127.0.0.1:{ingest_port}/v1/events/rides"
        sent = 0
        while sent < args.events:
            now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            n = min(args.batch, args.events - sent)
            body = "".join(
                json.dumps({"event_type": "requested", "ride_id": f"r-{tag}-{i}", "city": f"city-{tag}-{i}",
                            "estimated_fare": 10.0, "user_id": f"u-{i}", "timestamp": now}) + "\n"
                for i in range(sent, sent + n)).encode()
            req = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/x-ndjson"})
            with urllib.request.urlopen(req, timeout=60) as r:
                if r.status != 202:
                    raise SystemExit(f"ingest answered {r.status}")
            sent += n
        posted = time.time() - started
        deadline = time.time() + args.timeout
        while True:
            stored = int(clickhouse(ch_url, f"SELECT count() FROM `{database}`.rides"))
            read = metric(get(f"http://127.0.0.1:{df_m}/metrics"), 'pulse_dataflow_events_total{domain="rides"')
            if stored >= args.events and read >= args.events:
                break
            if time.time() > deadline:
                raise SystemExit(f"timed out: stored {stored}, dataflow read {read} of {args.events}")
            time.sleep(1)
        print(f"bench cardinality: {args.events} rides, each from a new city ({args.pulse})")
        print(f"  posted in {posted:.1f} s, stored and aggregated after {time.time() - started:.1f} s")
        for name, p in procs.items():
            print(f"  {name:<9} peak RSS {peak_rss_mb(p.pid):8.1f} MB")
        return 0
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            clickhouse(ch_url, f"DROP DATABASE IF EXISTS `{database}`")
        except Exception:
            pass


if __name__ == "__main__":
    sys.exit(main())
