#!/usr/bin/env python3
"""Self-test of scripts/chdb_server.py over real HTTP (no pytest needed).

Starts the server on a free port with a temporary data directory and talks to it the
way the Rust `clickhouse` crate and Grafana-style clients do: plain and multipart
queries, RowBinary / RowBinaryWithNamesAndTypes / JSONEachRow inserts, chunked and
LZ4-compressed (`decompress=1`) bodies, settings, errors, users, a SIGKILL restart.
Prints timings at the end and exits non-zero if any check failed.

The server runs under $PULSE_CHDB_PYTHON, else the project venv
(~/.cache/pulse/venv/bin/python) when it exists, else this interpreter.
This script itself needs only the standard library.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chdb_server.py")
VENV_PYTHON = os.path.expanduser("~/.cache/pulse/venv/bin/python")
SERVER_PYTHON = os.environ.get("PULSE_CHDB_PYTHON") or (
    VENV_PYTHON if os.path.exists(VENV_PYTHON) else sys.executable)

USERS = {"default": {"password": ""}, "reader": {"password": "secret", "readonly": True}}

passed: list[str] = []
failed: list[str] = []
timings: list[str] = []


def check(name: str, condition: bool, detail: object = "") -> None:
    if condition:
        passed.append(name)
        print(f"ok    {name}")
    else:
        failed.append(name)
        print(f"FAIL  {name}: {detail!r}"[:2000])


# --------------------------------------------------------------------------- encoding helpers


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def rb_string(s: str) -> bytes:
    raw = s.encode()
    return varint(len(raw)) + raw


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def read_rb_string(buf: bytes, pos: int) -> tuple[str, int]:
    size, pos = read_varint(buf, pos)
    return buf[pos:pos + size].decode(), pos + size


def rbwnat_header(columns: list[tuple[str, str]]) -> bytes:
    return (varint(len(columns)) + b"".join(rb_string(n) for n, _ in columns)
            + b"".join(rb_string(t) for _, t in columns))


def parse_rbwnat_header(buf: bytes) -> tuple[list[tuple[str, str]], int]:
    count, pos = read_varint(buf, 0)
    names, types = [], []
    for _ in range(count):
        name, pos = read_rb_string(buf, pos)
        names.append(name)
    for _ in range(count):
        type_, pos = read_rb_string(buf, pos)
        types.append(type_)
    return list(zip(names, types)), pos


EVENT_COLUMNS = "id, ts, kind, value, count, flag, version, is_deleted"


def event_row(id_: str, ts_ms: int, kind: str, value: float | None, count: int, flag: bool,
              version: int, is_deleted: int) -> bytes:
    """One RowBinary row of pulse.events (see the CREATE TABLE below)."""
    return (rb_string(id_)
            + struct.pack("<q", ts_ms)                                  # DateTime64(3, 'UTC')
            + rb_string(kind)                                           # LowCardinality(String)
            + (b"\x01" if value is None else b"\x00" + struct.pack("<d", value))  # Nullable(Float64)
            + struct.pack("<Q", count)                                  # UInt64
            + struct.pack("<?", flag)                                   # Bool
            + struct.pack("<Q", version)                                # UInt64
            + struct.pack("<B", is_deleted))                            # UInt8


def lz4_literal_block(data: bytes) -> bytes:
    """A valid LZ4 block holding `data` as literals only (no lz4 module needed here)."""
    n = len(data)
    out = bytearray([min(n, 15) << 4])
    if n >= 15:
        rest = n - 15
        while rest >= 255:
            out.append(255)
            rest -= 255
        out.append(rest)
    return bytes(out) + data


def compressed_blocks(data: bytes, block_size: int = 256 * 1024) -> list[bytes]:
    """ClickHouse compressed blocks as the crate sends them with `decompress=1`
    (the server does not verify the CityHash128 checksum, so it is left zero)."""
    blocks = []
    for start in range(0, len(data), block_size):
        plain = data[start:start + block_size]
        payload = lz4_literal_block(plain)
        header = struct.pack("<BII", 0x82, 9 + len(payload), len(plain))
        blocks.append(bytes(16) + header + payload)
    return blocks


# --------------------------------------------------------------------------- HTTP helpers


class Response:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


class Client:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.port = port

    def request(self, params: dict | None = None, body=None, method: str | None = None,
                headers: dict | None = None, path: str = "/") -> Response:
        """One request through urllib. An iterable `body` is sent chunked."""
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return Response(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, err.headers, err.read())

    def sql(self, query: str, **params) -> Response:
        return self.request(params or None, query.encode())

    def multipart(self, query: str, params: dict[str, str], url_params: dict | None = None,
                  conn: http.client.HTTPConnection | None = None) -> Response:
        """A query with parameters, encoded like the crate's multipart_query_body."""
        boundary = "clickhouse-rs-boundary-0123456789abcdef"
        fields = [("query", query)] + [(f"param_{k}", v) for k, v in params.items()]
        body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                       for k, v in fields) + f"--{boundary}--\r\n"
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if conn is None:
            return self.request(url_params, body.encode(), headers=headers)
        url = "/" + ("?" + urllib.parse.urlencode(url_params) if url_params else "")
        conn.request("POST", url, body.encode(), headers)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: str, port: int, log_path: str, users_path: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [SERVER_PYTHON, SERVER, "--port", str(port), "--data", data_dir, "--log", log_path,
         "--users", users_path],
        stdout=subprocess.DEVNULL, stderr=open(log_path + ".stderr", "ab"))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}.stderr")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                if resp.read() == b"Ok.\n":
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not answer /ping in 90 s")


# --------------------------------------------------------------------------- the checks


def test_basics(c: Client) -> None:
    r = c.request(path="/ping")
    check("GET /ping", r.status == 200 and r.body == b"Ok.\n", r)
    r = c.request()
    check("GET /", r.status == 200 and r.body == b"Ok.\n", r)
    r = c.request({"query": "SELECT 1 + 1"})
    check("GET /?query=", r.status == 200 and r.body == b"2\n", r)
    r = c.request({"query": "SELECT 1"}, method="GET")
    check("query id header", r.headers.get("X-ClickHouse-Query-Id"), r.headers)
    r = c.sql("SELECT number FROM numbers(3);", default_format="JSONEachRow")
    check("default_format + trailing ;", r.body == b'{"number":0}\n{"number":1}\n{"number":2}\n'
          and r.headers.get("X-ClickHouse-Format") == "JSONEachRow", r)
    r = c.sql("SELECT 1 AS x FORMAT JSON")
    check("FORMAT clause wins, JSON content type",
          json.loads(r.body)["data"] == [{"x": 1}]
          and r.headers["Content-Type"].startswith("application/json")
          and r.headers["X-ClickHouse-Format"] == "JSON", r)
    summary = json.loads(c.sql("SELECT * FROM numbers(10)").headers["X-ClickHouse-Summary"])
    check("summary header", summary.get("read_rows") == "10", summary)


def test_ddl(c: Client) -> None:
    for sql in (
        "CREATE DATABASE IF NOT EXISTS pulse",
        """CREATE TABLE pulse.events (
               id String,
               ts DateTime64(3, 'UTC'),
               kind LowCardinality(String),
               value Nullable(Float64),
               count UInt64,
               flag Bool,
               version UInt64,
               is_deleted UInt8
           ) ENGINE = ReplacingMergeTree(version, is_deleted)
           ORDER BY id""",
        """CREATE TABLE pulse.raw (ts DateTime, user String, n UInt32)
           ENGINE = MergeTree ORDER BY ts
           TTL ts + INTERVAL 30 DAY""",
        "CREATE TABLE pulse.bulk AS pulse.events",
    ):
        r = c.sql(sql)
        check(f"DDL {' '.join(sql.split()[:3])}", r.status == 200 and r.body == b"", r)
    r = c.sql("SELECT engine_full FROM system.tables WHERE database = 'pulse' AND name = 'raw'")
    check("TTL table created", "TTL ts + toIntervalDay(30)" in r.text, r)


def test_json_insert(c: Client) -> None:
    now = int(time.time())
    rows = "".join(json.dumps({"ts": now - i, "user": f"u{i % 3}", "n": i}) + "\n" for i in range(10))
    r = c.request({"query": "INSERT INTO pulse.raw (ts, user, n) FORMAT JSONEachRow"}, rows.encode())
    check("JSONEachRow insert", r.status == 200 and r.body == b"", r)
    r = c.sql("INSERT INTO pulse.raw FORMAT JSONEachRow\n" + rows)
    check("JSONEachRow insert with data in the body", r.status == 200, r)
    r = c.request({"query": "INSERT INTO pulse.raw VALUES"}, f"({now}, 'v', 99)".encode())
    check("VALUES insert with rows in the body", r.status == 200, r)
    r = c.sql("INSERT INTO pulse.raw VALUES (now(), 'w', 100)")
    check("INSERT ... VALUES", r.status == 200, r)
    r = c.sql("SELECT count(), sum(n) FROM pulse.raw")
    check("JSONEachRow rows readable", r.body == b"22\t289\n", r)


def test_rowbinary(c: Client) -> None:
    t0 = 1_700_000_000_000
    rows = [
        event_row("a", t0, "click", 1.5, 10, True, 1, 0),
        event_row("b", t0 + 61_000, "view", None, 20, False, 1, 0),
        event_row("c", t0 + 62_500, "click", -2.25, 2**64 - 1, True, 1, 0),
    ]
    # Chunked, as the crate streams INSERT bodies.
    r = c.request({"query": f"INSERT INTO pulse.events ({EVENT_COLUMNS}) FORMAT RowBinary"},
                  iter([rows[0], rows[1] + rows[2][:5], rows[2][5:]]))
    check("RowBinary chunked insert", r.status == 200, r)
    r = c.sql("SELECT id, ts, kind, value, count, flag FROM pulse.events ORDER BY id FORMAT JSONEachRow")
    got = [json.loads(line) for line in r.text.splitlines()]
    want = [
        {"id": "a", "ts": "2023-11-14 22:13:20.000", "kind": "click", "value": 1.5, "count": 10, "flag": True},
        {"id": "b", "ts": "2023-11-14 22:14:21.000", "kind": "view", "value": None, "count": 20, "flag": False},
        {"id": "c", "ts": "2023-11-14 22:14:22.500", "kind": "click", "value": -2.25,
         "count": 18446744073709551615, "flag": True},
    ]
    check("RowBinary values round-trip", got == want, got)

    # ReplacingMergeTree(version, is_deleted): newer version wins, is_deleted=1 drops the row.
    r = c.request({"query": f"INSERT INTO pulse.events ({EVENT_COLUMNS}) FORMAT RowBinary"},
                  event_row("a", t0, "click", 9.0, 11, True, 2, 0) + event_row("b", t0, "view", None, 0, False, 2, 1))
    check("RowBinary insert of new versions", r.status == 200, r)
    r = c.sql("SELECT id, value, count FROM pulse.events FINAL ORDER BY id FORMAT CSV")
    check("ReplacingMergeTree FINAL", r.body == b'"a",9,11\n"c",-2.25,18446744073709551615\n', r)
    check("CSV content type", r.headers["Content-Type"].startswith("text/csv"), r.headers)

    r = c.sql("""SELECT toStartOfInterval(ts, INTERVAL 1 MINUTE) AS w, count() AS n
                 FROM pulse.events FINAL GROUP BY w ORDER BY w FORMAT TSVWithNames""")
    check("toStartOfInterval", r.body == b"w\tn\n2023-11-14 22:13:00\t1\n2023-11-14 22:14:00\t1\n", r)

    r = c.sql("SELECT id, count FROM pulse.events FINAL ORDER BY id", default_format="RowBinary")
    check("RowBinary answer", r.body == rb_string("a") + struct.pack("<Q", 11) + rb_string("c")
          + struct.pack("<Q", 2**64 - 1) and r.headers["Content-Type"] == "application/octet-stream", r)


def crate_insert(c: Client, table: str, rows: bytes, columns: list[tuple[str, str]],
                 database: str | None = None) -> Response:
    """INSERT the way clickhouse-rs does with validation and LZ4: RowBinaryWithNamesAndTypes
    behind a header, `decompress=1`, compressed blocks streamed chunked."""
    params = {"query": f"INSERT INTO {table}({','.join(f'`{n}`' for n, _ in columns)}) "
                       "FORMAT RowBinaryWithNamesAndTypes", "decompress": "1"}
    if database:
        params = {"database": database, **params}
    return c.request(params, iter(compressed_blocks(rbwnat_header(columns) + rows)),
                     headers={"User-Agent": "clickhouse-rs/0.15.3 (test)"})


def describe(c: Client, table: str) -> list[tuple[str, str]]:
    """The crate's row_insert_metadata_query: DESCRIBE in RowBinaryWithNamesAndTypes."""
    r = c.request({"default_format": "RowBinaryWithNamesAndTypes", "describe_include_subcolumns": "0"},
                  f"DESCRIBE TABLE {table}".encode())
    header, pos = parse_rbwnat_header(r.body)
    check("DESCRIBE TABLE header as the crate expects",
          [n for n, _ in header] == ["name", "type", "default_type", "default_expression", "comment",
                                     "codec_expression", "ttl_expression"]
          and all(t == "String" for _, t in header), header)
    columns = []
    while pos < len(r.body):
        values = []
        for _ in header:
            value, pos = read_rb_string(r.body, pos)
            values.append(value)
        columns.append((values[0], values[1]))
    return columns


def test_crate_protocol(c: Client) -> None:
    columns = describe(c, "pulse.events")
    check("DESCRIBE columns", columns[:2] == [("id", "String"), ("ts", "DateTime64(3, 'UTC')")], columns)
    rows = b"".join(event_row(f"z{i}", 1_700_000_000_000 + i, "lz4", float(i), i, i % 2 == 0, 1, 0)
                    for i in range(1000))
    r = crate_insert(c, "events", rows, columns, database="pulse")
    check("RowBinaryWithNamesAndTypes + decompress=1 + chunked", r.status == 200, r)
    r = c.sql("SELECT count(), sum(count) FROM pulse.events WHERE kind = 'lz4'")
    check("compressed insert rows landed", r.body == b"1000\t499500\n", r)

    # .param() values go in a multipart body; validation fetches RowBinaryWithNamesAndTypes.
    r = c.multipart("SELECT id, count FROM pulse.events FINAL WHERE id = {id:String} AND count > {min:UInt64}",
                    {"id": "z7", "min": "1"}, {"default_format": "RowBinaryWithNamesAndTypes"})
    header, pos = parse_rbwnat_header(r.body)
    check("multipart params", r.status == 200 and header == [("id", "String"), ("count", "UInt64")]
          and r.body[pos:] == rb_string("z7") + struct.pack("<Q", 7), r)
    r = c.multipart("SELECT {s:String}, {a:Array(String)}, {n:Nullable(UInt8)}",
                    {"s": "it's a \\\\ back\\tslash", "a": "['x','y']", "n": "\\N"})
    check("param escaping as the crate writes it", r.body == b"it\\'s a \\\\ back\\tslash\t['x','y']\t\\N\n", r)
    r = c.request({"database": "pulse", "param_id": "c", "query": "SELECT count FROM events FINAL WHERE id = {id:String}"},
                  method="GET")
    check("URL params: database + param_", r.body == b"18446744073709551615\n", r)

    r = c.request({"query": f"INSERT INTO pulse.events ({EVENT_COLUMNS}) FORMAT RowBinary"}, b"")
    check("empty RowBinary insert is a no-op", r.status == 200, r)
    r = crate_insert(c, "pulse.events", b"", columns)
    check("empty RowBinaryWithNamesAndTypes insert", r.status == 200, r)
    r = c.request({"query": f"INSERT INTO pulse.events ({EVENT_COLUMNS}) FORMAT RowBinary"}, iter([]))
    check("empty chunked insert", r.status == 200, r)


def test_settings(c: Client) -> None:
    default = c.sql("SELECT getSetting('max_block_size')").body
    r = c.sql("SELECT getSetting('max_block_size')", max_block_size="1234")
    check("URL setting applies to the query", r.body == b"1234\n", r)
    check("URL setting does not stick", c.sql("SELECT getSetting('max_block_size')").body == default)
    r = c.sql("SET max_block_size = 77")
    check("SET statement accepted", r.status == 200, r)
    check("SET statement does not stick", c.sql("SELECT getSetting('max_block_size')").body == default)
    r = c.sql("SET readonly = 1")
    check("SET readonly = 1 accepted", r.status == 200, r)
    r = c.sql("INSERT INTO pulse.raw VALUES (now(), 'after-set', 1)")
    check("SET readonly = 1 does not stick", r.status == 200, r)
    r = c.sql("SELECT 1", max_execution_time="5", describe_include_subcolumns="0")
    check("max_execution_time", r.status == 200 and r.body == b"1\n", r)
    r = c.sql("SELECT 1", no_such_setting="1")
    check("unknown setting", r.status == 404 and r.headers.get("X-ClickHouse-Exception-Code") == "115"
          and "(UNKNOWN_SETTING)" in r.text, r)
    r = c.sql("INSERT INTO pulse.raw VALUES (now(), 'x', 1)", readonly="1")
    check("readonly=1 refuses writes", r.status == 500 and r.headers.get("X-ClickHouse-Exception-Code") == "164", r)
    r = c.sql("SELECT getSetting('max_block_size')", readonly="1", max_block_size="99")
    check("readonly=1 with other settings applies them", r.body == b"99\n", r)
    r = c.sql("INSERT INTO pulse.raw VALUES (now(), 'x', 1)", readonly="1", max_block_size="99")
    check("readonly=1 with other settings refuses writes", r.headers.get("X-ClickHouse-Exception-Code") == "164", r)
    r = c.sql("SELECT 1", **{"max_threads = 1, readonly": "1"})
    check("setting names are not SQL", r.headers.get("X-ClickHouse-Exception-Code") == "115", r)
    r = c.request({"query": "INSERT INTO pulse.raw VALUES (now(), 'x', 1)"}, method="GET")
    check("GET is readonly", r.headers.get("X-ClickHouse-Exception-Code") == "164", r)
    r = c.request({"query": "INSERT INTO pulse.raw FORMAT JSONEachRow", "readonly": "2"}, b'{"n": 1}\n')
    check("readonly=2 refuses INSERT with data", r.headers.get("X-ClickHouse-Exception-Code") == "164", r)
    r = c.sql("SELECT currentDatabase()", database="pulse")
    check("database parameter", r.body == b"pulse\n", r)
    check("database does not stick", c.sql("SELECT currentDatabase()").body == b"default\n")
    r = c.sql("SELECT 1", database="nowhere")
    check("unknown database", r.status == 404 and r.headers.get("X-ClickHouse-Exception-Code") == "81", r)


def test_errors(c: Client) -> None:
    r = c.sql("SELECT * FROM pulse.nothing")
    check("unknown table: 404 + code header", r.status == 404
          and r.headers.get("X-ClickHouse-Exception-Code") == "60"
          and r.text.startswith("Code: 60. DB::Exception: ") and "(UNKNOWN_TABLE) (version " in r.text, r)
    r = c.sql("SELEC 1")
    check("syntax error: 400", r.status == 400 and r.text.startswith("Code: 62. DB::Exception: Syntax error"), r)
    r = c.sql("")
    check("empty query", r.status == 400 and r.headers.get("X-ClickHouse-Exception-Code") == "62", r)
    r = c.sql("SELECT throwIf(1, 'boom')")
    check("runtime error: 500", r.status == 500 and "boom" in r.text, r)
    r = c.request({"query": f"INSERT INTO pulse.events ({EVENT_COLUMNS}) FORMAT RowBinary"}, b"\x05abc")
    check("truncated RowBinary refused", r.status != 200 and r.headers.get("X-ClickHouse-Exception-Code"), r)
    r = c.request({"query": "INSERT INTO pulse.raw FORMAT JSONEachRow"}, b'{"n": "not a number"}\n' * 1000)
    check("bad JSONEachRow refused", r.status != 200, r)
    r = c.request({"query": "INSERT INTO pulse.raw FORMAT JSONEachRow", "decompress": "1"},
                  bytes(16) + struct.pack("<BII", 0x90, 9, 0))
    check("unknown compression method", r.headers.get("X-ClickHouse-Exception-Code") == "89", r)
    r = c.request(path="/nowhere")
    check("unknown path: 404", r.status == 404, r)
    r = c.sql("SELECT count() FROM pulse.events")
    check("session healthy after errors", r.status == 200 and r.body == b"1005\n", r)


def test_insert_errors(c: Client) -> None:
    """Errors of the table's write path (too many partitions, constraints) fail the
    streamed INSERT with ClickHouse's code and store nothing, in every input format."""
    r = c.sql("""CREATE TABLE pulse.daily (ts DateTime64(3, 'UTC'), n UInt32,
                     CONSTRAINT not_seven CHECK n != 7)
                 ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts""")
    check("DDL partitioned by day, with a constraint", r.status == 200, r)
    day_ms, t0 = 86_400_000, 1_700_000_000_000

    def refused(name: str, r: Response, code: int, error: str) -> None:
        check(name, r.status == 500 and r.headers.get("X-ClickHouse-Exception-Code") == str(code)
              and r.text.startswith(f"Code: {code}. DB::Exception: ") and f"({error}) (version " in r.text
              and "chdb-server-insert-" not in r.text, r)
        r = c.sql("SELECT count() FROM pulse.daily")
        check(f"{name}: nothing stored", r.body == b"0\n", r)

    days = range(150)
    json_rows = "".join(json.dumps({"ts": (t0 + d * day_ms) // 1000, "n": 100 + d}) + "\n" for d in days).encode()
    rb_rows = b"".join(struct.pack("<qI", t0 + d * day_ms, 100 + d) for d in days)
    rb_query = {"query": "INSERT INTO pulse.daily (ts, n) FORMAT RowBinary"}
    refused("150 partitions, JSONEachRow chunked: TOO_MANY_PARTS",
            c.request({"query": "INSERT INTO pulse.daily FORMAT JSONEachRow"}, iter([json_rows[:999], json_rows[999:]])),
            252, "TOO_MANY_PARTS")
    refused("150 partitions, JSONEachRow data in the body",
            c.sql("INSERT INTO pulse.daily FORMAT JSONEachRow\n" + json_rows.decode()), 252, "TOO_MANY_PARTS")
    refused("150 partitions, RowBinary chunked", c.request(rb_query, iter([rb_rows[:700], rb_rows[700:]])),
            252, "TOO_MANY_PARTS")
    refused("150 partitions, RowBinary in one body", c.request(rb_query, rb_rows), 252, "TOO_MANY_PARTS")
    columns = [("ts", "DateTime64(3, 'UTC')"), ("n", "UInt32")]
    refused("150 partitions, RowBinaryWithNamesAndTypes LZ4 (the crate's way)",
            crate_insert(c, "pulse.daily", rb_rows, columns), 252, "TOO_MANY_PARTS")
    refused("150 partitions, request-level SETTINGS kept",
            c.request({"query": "INSERT INTO pulse.daily (ts, n) SETTINGS max_insert_block_size = 1000 FORMAT RowBinary"},
                      rb_rows), 252, "TOO_MANY_PARTS")
    refused("constraint violated in a streamed insert",
            c.request(rb_query, struct.pack("<qI", t0, 1) + struct.pack("<qI", t0, 7)), 469, "VIOLATED_CONSTRAINT")

    r = c.request(rb_query, rb_rows[:100 * 12])
    check("100 partitions in one insert work", r.status == 200
          and json.loads(r.headers["X-ClickHouse-Summary"]).get("written_rows") == "100", (r, r.headers))
    rest = b"".join(line + b"\n" for line in json_rows.splitlines()[100:])
    r = c.request({"query": "INSERT INTO pulse.daily FORMAT JSONEachRow"}, rest)
    check("remaining 50 days as JSONEachRow work", r.status == 200, r)
    r = c.sql("SELECT count(), uniqExact(toYYYYMMDD(ts)) FROM pulse.daily")
    check("partition-limited inserts stored", r.body == b"150\t150\n", r)
    r = c.sql("INSERT INTO pulse.daily VALUES " + ",".join(f"({t0 // 1000 + d * 86400}, {100 + d})" for d in days))
    check("150 partitions, INSERT ... VALUES refused", r.headers.get("X-ClickHouse-Exception-Code") == "252", r)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_users(c: Client) -> None:
    r = c.request({"query": "SELECT currentUser() IS NOT NULL"}, method="GET", headers=basic("reader", "secret"))
    check("read-only user can read", r.status == 200 and r.body == b"1\n", r)
    r = c.request(None, b"INSERT INTO pulse.raw VALUES (now(), 'r', 1)", headers=basic("reader", "secret"))
    check("read-only user refused a write", r.status == 500 and r.headers.get("X-ClickHouse-Exception-Code") == "164", r)
    r = c.request({"query": "CREATE TABLE pulse.nope (a UInt8) ENGINE = Memory"}, b"",
                  headers={"X-ClickHouse-User": "reader", "X-ClickHouse-Key": "secret"})
    check("read-only user refused DDL (X-ClickHouse-User)", r.headers.get("X-ClickHouse-Exception-Code") == "164", r)
    r = c.request({"query": "SELECT 1", "max_threads": "1"}, b"", headers=basic("reader", "secret"))
    check("read-only user cannot change settings", r.headers.get("X-ClickHouse-Exception-Code") == "164", r)
    r = c.request({"query": "SELECT 1"}, b"", headers=basic("reader", "wrong"))
    check("wrong password: 403 + code 516", r.status == 403
          and r.headers.get("X-ClickHouse-Exception-Code") == "516" and "(AUTHENTICATION_FAILED)" in r.text, r)
    r = c.request({"query": "SELECT 1", "user": "nobody", "password": "x"}, b"")
    check("unknown user: 516", r.headers.get("X-ClickHouse-Exception-Code") == "516", r)
    r = c.sql("INSERT INTO pulse.raw VALUES (now(), 'default-user', 1)")
    check("default user still writes", r.status == 200, r)


def test_concurrency(c: Client) -> None:
    errors: list[object] = []

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
        try:
            for i in range(25):
                if i % 5 == 0:
                    body = f"INSERT INTO pulse.raw VALUES (now(), 'thread{n}', {i})".encode()
                    conn.request("POST", "/", body)
                else:
                    conn.request("POST", "/?max_block_size=1000", f"SELECT {n} + {i}".encode())
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200 or (i % 5 and data != f"{n + i}\n".encode()):
                    errors.append((n, i, resp.status, data))
        except Exception as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    # A slow client trickling an INSERT must not hold up the others.
    slow = socket.create_connection(("127.0.0.1", c.port))
    slow.sendall(b"POST /?query=INSERT+INTO+pulse.raw+FORMAT+JSONEachRow HTTP/1.1\r\nHost: x\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    started = time.perf_counter()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - started
    line = b'{"ts": %d, "user": "slow", "n": 1}\n' % time.time()
    slow.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line))
    slow_answer = slow.recv(4096)
    slow.close()
    check("concurrent keep-alive clients", not errors and not any(t.is_alive() for t in threads), errors[:3])
    check("slow body does not block others", elapsed < 30, elapsed)
    check("slow chunked insert completes", slow_answer.startswith(b"HTTP/1.1 200"), slow_answer[:200])
    r = c.sql("SELECT count() FROM pulse.raw WHERE user LIKE 'thread%' OR user = 'slow'")
    check("concurrent inserts landed", r.body == b"31\n", r)


def test_timings(c: Client) -> None:
    n = 50_000
    rows = b"".join(event_row(f"bulk{i}", 1_700_000_000_000 + i * 10, f"k{i % 7}", i * 0.5 if i % 3 else None,
                              i, i % 2 == 0, 1, 0) for i in range(n))
    started = time.perf_counter()
    r = c.request({"query": f"INSERT INTO pulse.bulk ({EVENT_COLUMNS}) FORMAT RowBinary"}, rows)
    plain = time.perf_counter() - started
    check("50k-row RowBinary insert", r.status == 200, r)
    columns = describe(c, "pulse.bulk")
    started = time.perf_counter()
    r = crate_insert(c, "pulse.bulk", rows, columns)
    crate_like = time.perf_counter() - started
    check("50k-row RowBinaryWithNamesAndTypes LZ4 chunked insert", r.status == 200, r)
    r = c.sql("SELECT count() FROM pulse.bulk")
    check("bulk rows landed", r.body == f"{2 * n}\n".encode(), r)
    timings.append(f"50,000-row RowBinary insert ({len(rows) / 1e6:.1f} MB, one POST): {plain * 1000:.0f} ms")
    timings.append(f"50,000-row RowBinaryWithNamesAndTypes insert, LZ4 blocks, chunked: {crate_like * 1000:.0f} ms")

    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
    ok = True
    started = time.perf_counter()
    for i in range(100):
        r = c.multipart("SELECT id, count FROM pulse.bulk FINAL WHERE id = {id:String}",
                        {"id": f"bulk{i * 397}"}, {"default_format": "RowBinaryWithNamesAndTypes"}, conn=conn)
        header, pos = parse_rbwnat_header(r.body)
        ok = ok and r.status == 200 and r.body[pos:] == rb_string(f"bulk{i * 397}") + struct.pack("<Q", i * 397)
    point = time.perf_counter() - started
    conn.close()
    check("100 point queries", ok)
    timings.append(f"100 sequential point queries (multipart param, keep-alive, FINAL over 50k rows): "
                   f"{point * 1000:.0f} ms total, {point * 10:.1f} ms each")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="chdb-server-test-") as tmp:
        data_dir = os.path.join(tmp, "data")
        log_path = os.path.join(tmp, "server.log")
        users_path = os.path.join(tmp, "users.json")
        with open(users_path, "w") as f:
            json.dump(USERS, f)
        port = free_port()
        print(f"server: {SERVER_PYTHON} {SERVER} on port {port}")
        started = time.perf_counter()
        proc = start_server(data_dir, port, log_path, users_path)
        timings.append(f"server start until /ping answers: {(time.perf_counter() - started) * 1000:.0f} ms")
        c = Client(port)
        try:
            for test in (test_basics, test_ddl, test_json_insert, test_rowbinary, test_crate_protocol,
                         test_settings, test_errors, test_insert_errors, test_users, test_concurrency, test_timings):
                try:
                    test(c)
                except Exception:
                    check(test.__name__, False, traceback.format_exc())

            before = c.sql("SELECT (SELECT count() FROM pulse.bulk), (SELECT count() FROM pulse.events FINAL)").body
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc = start_server(data_dir, port, log_path, users_path)
            after = c.sql("SELECT (SELECT count() FROM pulse.bulk), (SELECT count() FROM pulse.events FINAL)").body
            check("SIGKILL + restart keeps data", before == after and before == b"100000\t1002\n", (before, after))
            r = c.sql("INSERT INTO pulse.raw VALUES (now(), 'after-restart', 1)")
            check("writable after restart", r.status == 200, r)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            with open(log_path) as f:
                lines = f.readlines()
            check("one log line per request", len(lines) > 100 and " POST / 200 " in "".join(lines), len(lines))
            if failed:
                print("---- server log tail ----\n" + "".join(lines[-40:]))

    print("\ntimings:")
    for line in timings:
        print("  " + line)
    print(f"\n{len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
