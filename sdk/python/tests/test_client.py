"""The Python client against real Pulse services on the local stack.

The session starts `pulse ingest`, `pulse sink`, `pulse dataflow` and
`pulse api` (the binary `PULSE_BIN`, default target/debug/pulse) against the
stack's Kafka (PULSE_KAFKA_BROKERS) and ClickHouse (PULSE_CLICKHOUSE_URL), on a
fresh database and fresh topics, and exercises every client method.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "sdk" / "python"))

from pulse_client import (  # noqa: E402
    AuthError,
    MethodNotAllowedError,
    NotFoundError,
    OverloadError,
    PulseClient,
    TransportError,
    ValidationError,
)

BIN = os.environ.get("PULSE_BIN", str(ROOT / "target" / "debug" / "pulse"))
BROKERS = os.environ.get("PULSE_KAFKA_BROKERS", "127.0.0.1:9092")
CLICKHOUSE = os.environ.get("PULSE_CLICKHOUSE_URL", "http://127.0.0.1:8123")
WRITE_KEY = "sdk-write-key-0123456789abcdef"
READ_KEY = "sdk-read-key-0123456789abcdef"
LIMITED_KEY = "sdk-limited-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now_iso(offset_s: float = 0.0) -> str:
    t = time.time() + offset_s
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


class Services:
    """The Pulse services of one test session."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.suffix = uuid.uuid4().hex[:10]
        spec = (ROOT / "pulse.toml").read_text()
        for topic in re.findall(r'topic = "([^"]+)"', spec):
            spec = spec.replace(f'topic = "{topic}"', f'topic = "{topic}-{self.suffix}"')
        spec = spec.replace(
            "[pipeline]\n",
            f'[pipeline]\naggregated_topic = "aggregated-{self.suffix}"\ndead_letter_topic = "dead-letter-{self.suffix}"\n',
        )
        self.spec = tmp / "pulse.toml"
        self.spec.write_text(spec)
        self.database = f"pulse_sdk_{self.suffix}"
        self.env = dict(os.environ)
        self.env.update(
            PULSE_SPEC=str(self.spec),
            PULSE_KAFKA_BROKERS=BROKERS,
            PULSE_CLICKHOUSE_URL=CLICKHOUSE,
            PULSE_CLICKHOUSE_DATABASE=self.database,
            PULSE_LOG="warn",
            PULSE_INGEST_API_KEYS=WRITE_KEY,
            PULSE_API_KEYS=READ_KEY,
        )
        self.procs: List[subprocess.Popen] = []
        self.ingest_port = free_port()
        self.api_port = free_port()

    def run(self, *args: str) -> None:
        subprocess.run([BIN, *args], env=self.env, check=True, timeout=120, stdout=subprocess.DEVNULL)

    def start(self, name: str, *args: str, env: Dict[str, str] | None = None) -> subprocess.Popen:
        e = dict(self.env)
        e.update(env or {})
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen([BIN, *args], env=e, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    if not Path(BIN).exists():
        pytest.fail(f"{BIN} does not exist: build it first (cargo build)")
    with tempfile.TemporaryDirectory() as tmp:
        s = Services(Path(tmp))
        s.run("topics")
        s.run("migrate")
        s.start("ingest", "ingest", env={"PULSE_INGEST_ADDR": f"127.0.0.1:{s.ingest_port}"})
        s.start("sink", "sink", "--batch-ms", "200", env={"PULSE_SINK_METRICS_ADDR": f"127.0.0.1:{free_port()}"})
        s.start("dataflow", "dataflow", env={"PULSE_DATAFLOW_METRICS_ADDR": f"127.0.0.1:{free_port()}"})
        s.start("api", "api", env={"PULSE_API_ADDR": f"127.0.0.1:{s.api_port}"})
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="session")
def client(services: Services) -> PulseClient:
    c = PulseClient(
        f"http://127.0.0.1:{services.ingest_port}", f"http://127.0.0.1:{services.api_port}", timeout=10, write_key=WRITE_KEY, read_key=READ_KEY
    )
    c.wait_until_ready(timeout=90)
    return c


def ride(ride_id: str, event_type: str = "requested", city: str = "Lima", offset_s: float = 0.0, user: str = "u-1") -> dict:
    return {
        "event_type": event_type,
        "ride_id": ride_id,
        "city": city,
        "estimated_fare": 12.5,
        "user_id": user,
        "timestamp": now_iso(offset_s),
    }


def app_event(event_id: str, name: str = "search", error: str | None = None, latency: float = 40.0, session: str = "s-1") -> dict:
    e = {"event_id": event_id, "session_id": session, "event_name": name, "latency_ms": latency, "timestamp": now_iso()}
    if error:
        e["error"] = error
    return e


def eventually(check, timeout: float = 60.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except NotFoundError as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last})")


def test_health_and_ready(client: PulseClient) -> None:
    assert client.health() == {"ingest": True, "api": True}


def test_track_and_get_event(client: PulseClient) -> None:
    event_id = client.track("rides", ride("r-sdk-1"))
    assert event_id
    got = eventually(lambda: client.get_event("rides", event_id))
    assert got is not None
    text = json.dumps(got)
    assert "r-sdk-1" in text and "Lima" in text


def test_track_batch_and_timeline(client: PulseClient) -> None:
    events = [ride("r-sdk-2", t, offset_s=i) for i, t in enumerate(["requested", "accepted", "started", "completed"])]
    ids = client.track_batch("rides", events, chunk_size=3)
    assert len(ids) == 4 and len(set(ids)) == 4
    page = eventually(lambda: (p := client.events_for_key("rides", "r-sdk-2")) and len(p.get("events", [])) == 4 and p)
    types = [e["event_type"] for e in page["events"]]
    assert types == ["requested", "accepted", "started", "completed"]
    assert [e["event_type"] for e in client.all_events_for_key("rides", "r-sdk-2", page_size=2)] == types


def test_validation_error_carries_field_details(client: PulseClient) -> None:
    bad = ride("r-bad")
    bad["event_type"] = "teleported"
    with pytest.raises(ValidationError) as e:
        client.track_batch("rides", [ride("r-ok"), bad], chunk_size=10)
    assert e.value.status == 400
    assert any(d.get("index") == 1 and d.get("field") == "event_type" for d in e.value.details), e.value.details


def test_update_and_delete_mutable_events(client: PulseClient) -> None:
    event_id = f"sdk-{uuid.uuid4().hex[:8]}"
    client.track("app_events", app_event(event_id, latency=10))
    client.update("app_events", event_id, app_event(event_id, latency=99))
    eventually(lambda: client.get_event("app_events", event_id)["latency_ms"] == 99)
    client.delete("app_events", event_id)

    def gone() -> bool:
        try:
            client.get_event("app_events", event_id)
            return False
        except NotFoundError:
            return True

    eventually(gone)
    with pytest.raises(MethodNotAllowedError):
        client.update("rides", "x", ride("x"))


def test_not_found(client: PulseClient) -> None:
    with pytest.raises(NotFoundError):
        client.track("no_such_domain", {})
    with pytest.raises(NotFoundError):
        client.get_event("rides", "no-such-event")
    with pytest.raises(NotFoundError):
        client.latest("no_such_metric")


def test_metrics_latest_and_analytics(client: PulseClient) -> None:
    # Rides and app events across a few minutes, so that windows exist.
    rides = []
    for i in range(60):
        rides.append(ride(f"r-m-{i}", "requested", city="Quito", offset_s=-240 + i * 4, user=f"u-{i % 7}"))
        if i % 3 == 0:
            rides.append(ride(f"r-m-{i}", "cancelled", city="Quito", offset_s=-238 + i * 4, user=f"u-{i % 7}"))
    client.track_batch("rides", rides)
    apps = [app_event(f"sdk-a-{i}-{uuid.uuid4().hex[:6]}", "checkout", "timeout" if i % 4 == 0 else None, 10 + i, f"s-{i % 3}") for i in range(40)]
    client.track_batch("app_events", apps)

    latest = eventually(lambda: [r for r in _rows(client.latest("city_metrics")) if r.get("city") == "Quito"])
    assert latest[0]["requests"] >= 1
    rows = eventually(lambda: _rows(client.metrics("city_metrics", city="Quito")))
    assert all(r["city"] == "Quito" for r in rows)
    assert _rows(client.metrics("city_metrics", city="Quito", final=False)) is not None

    cities = eventually(lambda: [r for r in _rows(client.cities(since="1h")) if r.get("city") == "Quito"])
    assert cities[0]["requests"] >= 60
    errors = eventually(lambda: _rows(client.errors_per_day(event_name="checkout", days=2)))
    assert sum(r["errors"] for r in errors) >= 10
    assert eventually(lambda: _rows(client.latency(limit=5)))
    assert eventually(lambda: _rows(client.top_error_sessions(limit=3)))


def test_stream_yields_live_revisions(client: PulseClient) -> None:
    got: List[dict] = []

    def read() -> None:
        for row in client.stream("city_metrics"):
            got.append(row)
            if len(got) >= 1:
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    deadline = time.time() + 60
    i = 0
    while not got and time.time() < deadline:
        client.track("rides", ride(f"r-s-{i}", city="Cusco"))
        i += 1
        time.sleep(0.5)
    assert got, "no revision arrived on the stream"
    assert got[0]["metric"] == "city_metrics" and "window_start" in got[0]


def test_rate_limit_answers_429_and_the_client_retries(services: Services) -> None:
    port = free_port()
    services.start(
        "ingest-limited",
        "ingest",
        env={"PULSE_INGEST_ADDR": f"127.0.0.1:{port}", "PULSE_INGEST_RATE_LIMIT": "2", "PULSE_INGEST_API_KEYS": LIMITED_KEY},
    )
    c = PulseClient(f"http://127.0.0.1:{port}", "http://127.0.0.1:1", api_key=LIMITED_KEY, max_retries=0, timeout=5)
    eventually(lambda: c.health()["ingest"])
    with pytest.raises(OverloadError) as e:
        for i in range(20):
            c.track("rides", ride(f"r-rl-{i}"))
    assert e.value.status == 429 and e.value.retry_after is not None
    # With retries, the client waits for Retry-After and gets through.
    patient = PulseClient(f"http://127.0.0.1:{port}", "http://127.0.0.1:1", api_key=LIMITED_KEY, max_retries=5, timeout=5)
    for i in range(4):
        assert patient.track("rides", ride(f"r-rl2-{i}"))
    with pytest.raises(AuthError):
        PulseClient(f"http://127.0.0.1:{port}", "http://127.0.0.1:1", api_key="wrong", max_retries=0).track("rides", ride("r"))


def test_broker_outage_answers_503_and_the_client_gives_up_typed(services: Services) -> None:
    port = free_port()
    closed = free_port()
    services.start(
        "ingest-no-kafka",
        "ingest",
        env={"PULSE_INGEST_ADDR": f"127.0.0.1:{port}", "PULSE_KAFKA_BROKERS": f"127.0.0.1:{closed}", "PULSE_INGEST_PRODUCE_TIMEOUT_MS": "1000"},
    )
    c = PulseClient(f"http://127.0.0.1:{port}", "http://127.0.0.1:1", api_key=WRITE_KEY, max_retries=2, backoff=0.05, timeout=10)
    eventually(lambda: _alive(port))
    started = time.monotonic()
    with pytest.raises(OverloadError) as e:
        c.track("rides", ride("r-out"))
    assert e.value.status == 503
    assert time.monotonic() - started >= 1.0, "it retried before giving up"


def test_transport_error_when_nothing_listens() -> None:
    c = PulseClient(f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}", max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(TransportError):
        c.track("rides", ride("r"))
    assert c.health() == {"ingest": False, "api": False}


def _alive(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _rows(answer) -> list:
    """Rows of a read answer, whether a list or an object holding one."""
    if isinstance(answer, list):
        return answer
    if isinstance(answer, dict):
        for key in ("rows", "per_day", "events", "sessions", "cities"):
            if isinstance(answer.get(key), list):
                return answer[key]
    return []
