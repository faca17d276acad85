"""The Pulse client: writes to ``pulse ingest``, reads from ``pulse api``."""

from __future__ import annotations

import http.client
import json
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

from .errors import (
    AuthError,
    MethodNotAllowedError,
    NotFoundError,
    OverloadError,
    PulseError,
    ServerError,
    TransportError,
    ValidationError,
)

JSON = Dict[str, Any]


class PulseClient:
    """A client for Pulse's write API (``ingest_url``) and read API (``api_url``).

    Overload answers (429, 503) are retried up to ``max_retries`` times,
    waiting for the server's ``Retry-After`` (or an exponential backoff with
    jitter); connection failures are retried the same way. Every other error
    raises a typed :class:`~pulse_client.errors.PulseError` at once.

    Keys: ``write_key`` goes to the write API, ``read_key`` to the read API
    (both as ``Authorization: Bearer``); ``api_key`` is the default of both.
    """

    def __init__(
        self,
        ingest_url: str = "http://localhost:8081",
        api_url: str = "http://localhost:8080",
        api_key: Optional[str] = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        write_key: Optional[str] = None,
        read_key: Optional[str] = None,
    ) -> None:
        self.ingest_url = ingest_url.rstrip("/")
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key
        self.write_key = write_key or api_key
        self.read_key = read_key or api_key
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.max_backoff = max_backoff

    # ------------------------------------------------------------------ transport

    def _headers(self, content_type: Optional[str] = None, key: Optional[str] = None) -> Dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "pulse-client-python/0.1"}
        if content_type:
            headers["Content-Type"] = content_type
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _key_for(self, url: str) -> Optional[str]:
        return self.write_key if url.startswith(self.ingest_url + "/") else self.read_key

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        base = min(self.backoff * (2 ** attempt), self.max_backoff)
        return base * (0.5 + random.random() / 2)

    def _request(
        self,
        method: str,
        url: str,
        body: Optional[bytes] = None,
        content_type: Optional[str] = None,
        expect: Sequence[int] = (200,),
    ) -> Any:
        attempt = 0
        while True:
            req = urllib.request.Request(url, data=body, method=method, headers=self._headers(content_type, self._key_for(url)))
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                    status = resp.status
            except urllib.error.HTTPError as e:
                raw = e.read()
                status = e.code
                retry_after = _retry_after(e.headers.get("Retry-After"))
                parsed = _parse(raw)
                if status in (429, 503) and attempt < self.max_retries:
                    time.sleep(self._delay(attempt, retry_after))
                    attempt += 1
                    continue
                raise _error(status, parsed, retry_after) from None
            except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError, OSError) as e:
                if attempt < self.max_retries:
                    time.sleep(self._delay(attempt, None))
                    attempt += 1
                    continue
                raise TransportError(f"{method} {url}: {e}") from e
            parsed = _parse(raw)
            if status not in expect:
                raise ServerError(f"{method} {url}: unexpected status {status}", status, parsed)
            return parsed

    def _get(self, path: str, params: Optional[Mapping[str, Any]] = None) -> Any:
        query = ""
        if params:
            clean = {k: _param(v) for k, v in params.items() if v is not None}
            query = "?" + urllib.parse.urlencode(clean) if clean else ""
        return self._request("GET", f"{self.api_url}{path}{query}")

    # ------------------------------------------------------------------ writes

    def track(self, domain: str, event: Mapping[str, Any]) -> str:
        """Sends one event; returns its id once Kafka acknowledged it."""
        body = json.dumps(event).encode()
        answer = self._request("POST", self._events(domain), body, "application/json", expect=(202,))
        ids = answer.get("ids", []) if isinstance(answer, dict) else []
        return ids[0] if ids else ""

    def track_batch(self, domain: str, events: Iterable[Mapping[str, Any]], chunk_size: int = 1000) -> List[str]:
        """Sends events as NDJSON in chunks of ``chunk_size``; returns every id.

        Each chunk is all-or-nothing: if an event of a chunk is invalid, a
        :class:`ValidationError` names it (``index`` counts from the start of
        all events) and nothing of that chunk was accepted; earlier chunks were.
        """
        ids: List[str] = []
        chunk: List[Mapping[str, Any]] = []
        offset = 0

        def send(items: List[Mapping[str, Any]], start: int) -> None:
            body = "\n".join(json.dumps(e) for e in items).encode() + b"\n"
            try:
                answer = self._request("POST", self._events(domain), body, "application/x-ndjson", expect=(202,))
            except ValidationError as e:
                for d in e.details:
                    if isinstance(d.get("index"), int):
                        d["index"] += start
                raise
            ids.extend(answer.get("ids", []) if isinstance(answer, dict) else [])

        for event in events:
            chunk.append(event)
            if len(chunk) >= max(1, chunk_size):
                send(chunk, offset)
                offset += len(chunk)
                chunk = []
        if chunk:
            send(chunk, offset)
        return ids

    def update(self, domain: str, event_id: str, event: Mapping[str, Any]) -> str:
        """Replaces an event of a mutable domain; returns its id."""
        body = json.dumps(event).encode()
        answer = self._request("PUT", self._events(domain, event_id), body, "application/json", expect=(202,))
        ids = answer.get("ids", []) if isinstance(answer, dict) else []
        return ids[0] if ids else event_id

    def delete(self, domain: str, event_id: str) -> None:
        """Deletes an event of a mutable domain."""
        self._request("DELETE", self._events(domain, event_id), expect=(202,))

    def _events(self, domain: str, event_id: Optional[str] = None) -> str:
        url = f"{self.ingest_url}/v1/events/{urllib.parse.quote(domain, safe='')}"
        if event_id is not None:
            url += "/" + urllib.parse.quote(event_id, safe="")
        return url

    # ------------------------------------------------------------------ reads

    def get_event(self, domain: str, event_id: str) -> JSON:
        """One event (its latest version); :class:`NotFoundError` if absent or deleted."""
        return self._get(f"/v1/events/{urllib.parse.quote(domain, safe='')}/{urllib.parse.quote(event_id, safe='')}")

    def events_for_key(
        self,
        domain: str,
        key: str,
        since: Optional[str] = None,
        until: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> JSON:
        """Events of one key (a ride, a session) in time order, one page.

        The answer carries the events and, when there are more, a cursor for the next page.
        """
        params = {"key": key, "from": since, "to": until, "limit": limit, "cursor": cursor}
        return self._get(f"/v1/events/{urllib.parse.quote(domain, safe='')}", params)

    def all_events_for_key(self, domain: str, key: str, page_size: int = 500) -> Iterator[JSON]:
        """Every event of a key, following the cursor."""
        cursor = None
        while True:
            page = self.events_for_key(domain, key, limit=page_size, cursor=cursor)
            for e in page.get("events", []):
                yield e
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def metrics(self, metric: str, **filters: Any) -> Any:
        """Windowed rows of a metric; filters: group fields (e.g. ``city="Lima"``),
        ``since``/``until`` (sent as ``from``/``to``), ``final`` (bool), ``limit``."""
        params = dict(filters)
        if "since" in params:
            params["from"] = params.pop("since")
        if "until" in params:
            params["to"] = params.pop("until")
        return self._get(f"/v1/metrics/{urllib.parse.quote(metric, safe='')}", params)

    def latest(self, metric: str) -> Any:
        """The newest window of every group of a metric."""
        return self._get(f"/v1/metrics/{urllib.parse.quote(metric, safe='')}/latest")

    def errors_per_day(self, event_name: Optional[str] = None, days: int = 7) -> Any:
        """Errors and totals per day of app events."""
        return self._get("/v1/analytics/errors", {"event_name": event_name, "days": days})

    def latency(self, limit: int = 100) -> Any:
        """p95 latency per event name per session."""
        return self._get("/v1/analytics/latency", {"limit": limit})

    def top_error_sessions(self, limit: int = 10) -> Any:
        """Sessions ranked by error rate."""
        return self._get("/v1/analytics/sessions/top-errors", {"limit": limit})

    def cities(self, since: str = "1h") -> Any:
        """Per city: requests, completions, cancellations, completion rate, average fare."""
        return self._get("/v1/analytics/cities", {"since": since})

    def stream(self, metric: str, **filters: Any) -> Iterator[JSON]:
        """Live window revisions of a metric (Server-Sent Events), one dict per revision.

        Iterates until the connection closes; the caller stops by breaking out.
        """
        params = {k: _param(v) for k, v in filters.items() if v is not None}
        query = "?" + urllib.parse.urlencode(params) if params else ""
        url = f"{self.api_url}/v1/stream/{urllib.parse.quote(metric, safe='')}{query}"
        # The key goes in a header, never in the URL.
        headers = self._headers(None, self.read_key)
        headers["Accept"] = "text/event-stream"
        req = urllib.request.Request(url, headers=headers)
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise _error(e.code, _parse(e.read()), _retry_after(e.headers.get("Retry-After"))) from None
        except (urllib.error.URLError, OSError) as e:
            raise TransportError(f"GET {url}: {e}") from e
        with resp:
            data: List[str] = []
            while True:
                try:
                    line = resp.readline()
                except (socket.timeout, TimeoutError):
                    continue
                except OSError as e:
                    raise TransportError(f"stream {url}: {e}") from e
                if not line:
                    return
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if text == "":
                    if data:
                        payload = "\n".join(data)
                        data = []
                        try:
                            yield json.loads(payload)
                        except ValueError:
                            continue
                elif text.startswith("data:"):
                    data.append(text[5:].lstrip(" "))
                # Comments (keep-alives) and other fields are ignored.

    # ------------------------------------------------------------------ health

    def health(self) -> Dict[str, bool]:
        """Whether the write and read services are ready (``/ready`` of each)."""
        out = {}
        for name, base in (("ingest", self.ingest_url), ("api", self.api_url)):
            try:
                req = urllib.request.Request(f"{base}/ready", headers=self._headers())
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    out[name] = resp.status == 200
            except (urllib.error.URLError, OSError):
                out[name] = False
        return out

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> None:
        """Blocks until both services are ready; :class:`TransportError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.health()
            if all(state.values()):
                return
            if time.monotonic() >= deadline:
                raise TransportError(f"not ready after {timeout}s: {state}")
            time.sleep(interval)


def _param(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error(status: int, body: Any, retry_after: Optional[float]) -> PulseError:
    message = body.get("error") if isinstance(body, dict) else None
    message = f"HTTP {status}: {message or body}"
    if status in (400, 413, 415, 422):
        details = body.get("details", []) if isinstance(body, dict) else []
        return ValidationError(message, status, body, details if isinstance(details, list) else [])
    if status in (401, 403):
        return AuthError(message, status, body)
    if status == 404:
        return NotFoundError(message, status, body)
    if status == 405:
        return MethodNotAllowedError(message, status, body)
    if status in (429, 503):
        return OverloadError(message, status, body, retry_after)
    return ServerError(message, status, body)
