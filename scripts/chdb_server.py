#!/usr/bin/env python3
"""A ClickHouse HTTP interface in front of chDB, for machines without a ClickHouse server.

Serves the subset of the ClickHouse HTTP protocol that the Rust `clickhouse` crate
(0.15.x) and Grafana-style clients use, on top of chDB (the ClickHouse engine as a
Python library, PyPI `chdb-core`). Data lives in one directory and survives restarts,
including SIGKILL.

Protocol notes (what ClickHouse does, reproduced here):
  * `GET /ping`, `GET /` -> `Ok.`; `GET /?query=` runs the query with readonly=2.
  * `POST /`: SQL in the `query` URL parameter (the body is then INSERT data, joined
    to the SQL by a newline) or in the body; or `multipart/form-data` with a `query`
    field and `param_<name>` fields (what the crate sends for `.param()`).
  * URL parameters: `database`, `default_format`, `query_id`, `decompress=1` (body in
    ClickHouse's compressed block format, LZ4 or none), `param_<name>` (query
    parameters), protocol parameters that are ignored, and anything else is a
    setting applied to this query only.
  * `readonly`: GET requests run with readonly=2, read-only users (see `--users`) and
    `readonly=1` requests with readonly=1, enforced by the engine itself through a
    dedicated chDB connection per readonly level.
  * Errors: `Code: <n>. DB::Exception: <text> (<NAME>) (version ...)` with the header
    `X-ClickHouse-Exception-Code` and the HTTP status ClickHouse maps the code to
    (400 syntax, 404 unknown table/database/setting, 403 failed authentication, else 500).
    Every failed statement answers so, INSERTs with data in any format included
    (too many partitions, violated constraints...): their data goes to a temporary file
    inserted with `FROM INFILE`, since chDB's streaming inserter loses such errors.

Not reproduced: answers are never compressed (`compress=1`, `enable_http_compression`
and `Accept-Encoding` are ignored; the crate accepts plain answers), the checksums of
compressed request blocks are not verified, ZSTD request blocks, sessions
(`session_id` is ignored) and external data tables in multipart requests.

chDB runs one query at a time per process, so every engine call is serialized by one
lock; request bodies are read completely (spooled to disk past 32 MiB) before the lock
is taken, so a slow client never blocks the others.

Usage: chdb_server.py --data DIR [--host 127.0.0.1] [--port 8123] [--log FILE] [--users FILE]
PULSE_CHDB_HOST, PULSE_CHDB_PORT and PULSE_CHDB_DATA replace the defaults; flags win.
Requires: chdb-core, lz4.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO, Iterable, Iterator
from urllib.parse import parse_qsl, urlsplit

import lz4.block
from chdb import session as chdb_session

log = logging.getLogger("chdb_server")

# URL parameters that are part of the HTTP protocol rather than settings.
# `database`, `default_format`, `readonly` and `param_*` are handled separately.
PROTOCOL_PARAMS = frozenset({
    "query", "compress", "decompress", "user", "password", "quota_key", "query_id",
    "stacktrace", "role", "buffer_size", "wait_end_of_query", "session_id",
    "session_timeout", "session_check", "client_protocol_version", "close_session",
})

SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# HTTP status ClickHouse answers for an exception, by error name (HTTPHandler.cpp);
# everything else is 500.
_STATUS_BY_ERROR = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys((
        "UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE",
    ), 403),
    **dict.fromkeys((
        "BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT",
        "CANNOT_PARSE_ESCAPE_SEQUENCE", "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE",
        "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER", "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
        "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6", "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
        "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN", "UNKNOWN_ELEMENT_IN_AST",
        "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
        "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
        "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    ), 400),
    **dict.fromkeys((
        "UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE",
        "UNKNOWN_STORAGE", "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING",
        "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE",
        "UNKNOWN_TYPE_OF_QUERY",
    ), 404),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "TIMEOUT_EXCEEDED": 408,
}

# Bodies up to this size stay in memory while they are read; larger ones go to disk.
SPOOL_MEMORY_BYTES = 32 << 20
# Size of the pieces a spooled INSERT body is handed to chDB in.
INSERT_PIECE_BYTES = 1 << 20
# ClickHouse compressed block: 16-byte checksum, method byte, two u32 sizes, data.
BLOCK_CHECKSUM_BYTES = 16
BLOCK_HEADER_BYTES = 9
BLOCK_METHOD_NONE = 0x02
BLOCK_METHOD_LZ4 = 0x82
MAX_BLOCK_BYTES = 1 << 30


class EngineError(Exception):
    """A ClickHouse exception: error code, error name and message text."""

    def __init__(self, code: int, name: str, text: str):
        super().__init__(text)
        self.code = code
        self.name = name
        self.text = text

    @property
    def http_status(self) -> int:
        return _STATUS_BY_ERROR.get(self.name, 500)

    def body(self, version: str) -> bytes:
        return f"Code: {self.code}. DB::Exception: {self.text} ({self.name}) (version {version})\n".encode()

    @classmethod
    def from_chdb(cls, exc: Exception) -> EngineError:
        """Parse a chDB exception message (`Code: 60. DB::Exception: ... (UNKNOWN_TABLE)`)."""
        message = str(exc)
        start = message.find("Code: ")
        if start < 0:
            return cls(1001, "STD_EXCEPTION", message)
        message = message[start:].strip()
        # chDB wraps some errors once more: "Code: N. DB::Exception: Code: N. ... (version V). (NAME)".
        while True:
            inner = re.match(r"Code: (\d+)\. DB::Exception: (Code: \1\. DB::Exception: .*?)"
                             r"(?: \(version [^()]*\))?\. \([A-Z0-9_]+\)$", message, re.S)
            if not inner:
                break
            message = inner.group(2)
        message = re.sub(r" \(version [^()]*(?:\([^()]*\))?\)$", "", message)
        parsed = re.match(r"Code: (\d+)\. DB::Exception: (.*?)(?: \(([A-Z][A-Z0-9_]*)\))?$", message, re.S)
        if not parsed:
            return cls(1001, "STD_EXCEPTION", message)
        return cls(int(parsed.group(1)), parsed.group(3) or "UNKNOWN_EXCEPTION", parsed.group(2))


class BadRequest(Exception):
    """The HTTP request itself is malformed; the connection is closed after answering."""


# --------------------------------------------------------------------------- SQL lexing


_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_$]*")
_NUMBER = re.compile(rb"[0-9][0-9A-Za-z_.]*")
# A quoted literal or identifier: backslash escapes and doubled quotes inside.
_QUOTED = {q: re.compile(rb"%c(?:[^%c\\]|\\.|%c%c)*%c" % ((q,) * 5), re.S) for q in b"'\"`"}


@dataclass(frozen=True)
class Token:
    text: str  # as written
    start: int
    end: int

    @property
    def keyword(self) -> str:
        return self.text.upper()


def top_level_tokens(sql: bytes) -> Iterator[Token]:
    """Yield the bare words of `sql` outside brackets, quoted text and comments.

    Lazy on purpose: callers stop before the inline data of an INSERT, which may be
    binary. The scan is a lexer, not a parser: it only has to find keywords such as
    FORMAT reliably, skipping whatever could contain them as plain text.
    """
    pos, size, depth = 0, len(sql), 0
    while pos < size:
        char = sql[pos]
        if char in b" \t\r\n\f\v":
            pos += 1
        elif sql.startswith(b"--", pos) or sql.startswith((b"# ", b"#!"), pos):
            newline = sql.find(b"\n", pos)
            pos = size if newline < 0 else newline + 1
        elif sql.startswith(b"/*", pos):
            close = sql.find(b"*/", pos + 2)
            pos = size if close < 0 else close + 2
        elif char in _QUOTED:
            quoted = _QUOTED[char].match(sql, pos)
            pos = size if quoted is None else quoted.end()
        elif char in b"([{":
            depth += 1
            pos += 1
        elif char in b")]}":
            depth = max(depth - 1, 0)
            pos += 1
        elif (word := _WORD.match(sql, pos)) is not None:
            if depth == 0:
                yield Token(word.group().decode(), word.start(), word.end())
            pos = word.end()
        elif (number := _NUMBER.match(sql, pos)) is not None:
            pos = number.end()
        else:
            pos += 1


def insert_data_offset(sql: bytes, after_format: int) -> int:
    """Where the inline data of `INSERT ... FORMAT <name>` starts (ParserInsertQuery):
    after spaces and tabs, then after one line break if there is one. A `;` ending
    the statement there is tolerated."""
    pos = after_format
    while pos < len(sql) and sql[pos] in b" \t\f":
        pos += 1
    if pos < len(sql) and sql[pos] == ord(";"):
        pos += 1
        while pos < len(sql) and sql[pos] in b" \t\f":
            pos += 1
    if sql.startswith(b"\r\n", pos):
        return pos + 2
    if pos < len(sql) and sql[pos] == ord("\n"):
        return pos + 1
    return pos


@dataclass
class Statement:
    """One request's statement, split into what chDB gets."""

    sql: str  # for inserts with data: the INSERT without its FORMAT clause
    kind: str  # first keyword, upper case
    insert_format: str | None = None  # set for `INSERT ... FORMAT <name>` with data
    output_format: str | None = None  # the FORMAT clause of other statements
    data_prefix: bytes = b""  # inline data that came with the SQL text
    data_tail: BinaryIO | None = None  # further data (the request body)


def parse_statement(head: bytes, tail: BinaryIO | None) -> Statement:
    """Split `head` (SQL text, possibly followed by inline data) and `tail` (more data).

    `INSERT ... FORMAT <fmt> <data>` becomes an insert whose data streams from the end
    of `head` and then `tail`; any other statement is `head + tail` as SQL text.
    """
    tokens = top_level_tokens(head)
    first = next(tokens, None)
    kind = first.keyword if first else ""
    if kind == "INSERT":
        for token in tokens:
            if token.keyword in ("VALUES", "SELECT", "WITH", "FROM"):
                break
            if token.keyword == "FORMAT":
                name = next(tokens, None)
                if name is None or not name.text[0].isalpha():
                    break
                return Statement(
                    sql=head[:token.start].decode("utf-8").rstrip(),
                    kind=kind,
                    insert_format=name.text,
                    data_prefix=head[insert_data_offset(head, name.end):],
                    data_tail=tail,
                )
    text = head + (tail.read() if tail is not None else b"")
    try:
        sql = text.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise EngineError(62, "SYNTAX_ERROR", f"Query is not valid UTF-8: {exc}") from None
    tokens = top_level_tokens(text)
    first = next(tokens, None)
    if kind == "SET" and (second := next(tokens, None)) is not None \
            and second.keyword not in ("ROLE", "DEFAULT", "TRANSACTION"):
        # Over HTTP without a session a SET has no lasting effect. Run verbatim on the
        # shared chDB session it would change every later query (and `SET readonly`
        # could never be undone), so its assignments are checked as the query-level
        # SETTINGS of a no-op query instead: same errors, no side effect.
        assignments = text[first.end:].decode("utf-8").strip().rstrip(";")
        return Statement(sql=f"SELECT 1 SETTINGS {assignments} FORMAT Null", kind=kind)
    output_format = None
    if kind != "INSERT":
        for token in tokens:
            if token.keyword == "FORMAT":
                name = next(tokens, None)
                if name is not None and name.text[0].isalpha():
                    output_format = name.text
    return Statement(sql=sql, kind=kind, output_format=output_format)


# --------------------------------------------------------------------------- request bodies


def decompress_blocks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decode ClickHouse's compressed block format (`decompress=1` request bodies)."""
    pending = bytearray()
    meta = BLOCK_CHECKSUM_BYTES + BLOCK_HEADER_BYTES
    for chunk in chunks:
        pending += chunk
        while len(pending) >= meta:
            method = pending[BLOCK_CHECKSUM_BYTES]
            compressed_size, plain_size = struct.unpack_from("<II", pending, BLOCK_CHECKSUM_BYTES + 1)
            if compressed_size < BLOCK_HEADER_BYTES or max(compressed_size, plain_size) > MAX_BLOCK_BYTES:
                raise EngineError(271, "CANNOT_DECOMPRESS",
                                  f"Too large size of compressed block: {compressed_size}")
            end = BLOCK_CHECKSUM_BYTES + compressed_size
            if len(pending) < end:
                break
            payload = bytes(pending[meta:end])
            del pending[:end]
            if method == BLOCK_METHOD_LZ4:
                try:
                    yield lz4.block.decompress(payload, uncompressed_size=plain_size)
                except lz4.block.LZ4BlockError as exc:
                    raise EngineError(271, "CANNOT_DECOMPRESS", f"Cannot decompress LZ4 block: {exc}") from None
            elif method == BLOCK_METHOD_NONE:
                yield payload
            else:
                raise EngineError(89, "UNKNOWN_COMPRESSION_METHOD",
                                  f"Unknown or unsupported compression method: 0x{method:02x}")
    if pending:
        raise EngineError(33, "CANNOT_READ_ALL_DATA", "Cannot read all data of a compressed block")


def parse_multipart(body: bytes, boundary: bytes) -> dict[str, str]:
    """Fields of a `multipart/form-data` body (the crate's query and `param_*` values)."""
    fields: dict[str, str] = {}
    for part in (b"\r\n" + body).split(b"\r\n--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        headers, _, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', headers)
        if name is None:
            raise EngineError(36, "BAD_ARGUMENTS", "multipart field without a name")
        if b"filename=" in headers:
            raise EngineError(48, "NOT_IMPLEMENTED", "External data tables are not supported by this server")
        fields[name.group(1).decode()] = value.decode("utf-8")
    return fields


# --------------------------------------------------------------------------- the engine


@dataclass
class Outcome:
    body: bytes
    format: str
    summary: dict[str, int] = field(default_factory=dict)


class Connection:
    """One chDB connection on the shared data directory, at one readonly level.

    Its session settings never change for longer than a request: per-request settings
    are SET before the query and restored after it, against a snapshot taken at start.
    """

    def __init__(self, data_dir: str, readonly: int):
        self.readonly = readonly
        path = data_dir if readonly == 0 else f"{data_dir}?readonly={readonly}"
        self.session = chdb_session.Session(path)
        rows = self.session.query(
            "SELECT name, value, changed FROM system.settings", "JSONCompactEachRow").bytes()
        self.values: dict[str, str] = {}
        self.changed: set[str] = set()
        for line in rows.splitlines():
            name, value, changed = json.loads(line)
            self.values[name] = value
            if changed:
                self.changed.add(name)
        self.database: str | None = "default"

    def run(self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None):
        try:
            return self.session.query(sql, fmt, params=params)
        except Exception as exc:  # chDB raises ChdbError / RuntimeError with the engine's text
            raise EngineError.from_chdb(exc) from None

    def use(self, database: str) -> None:
        if database != self.database:
            self.run(f"USE {quote_identifier(database)}")
            self.database = database

    def apply_settings(self, settings: dict[str, str]) -> list[str]:
        """SET the settings that differ from the session's; returns what to restore."""
        changes = {k: v for k, v in settings.items() if self.values.get(k) != v}
        if changes:
            # A failing SET (unknown setting, readonly mode...) changes nothing.
            self.run("SET " + ", ".join(f"{k} = {quote_string(v)}" for k, v in changes.items()))
        return list(changes)

    def restore_settings(self, names: list[str]) -> None:
        if names:
            self.run("SET " + ", ".join(
                f"{n} = {quote_string(self.values[n])}" if n in self.changed else f"{n} = DEFAULT"
                for n in names))

    def insert(self, sql: str, fmt: str, data: InsertData) -> dict[str, int]:
        """Run `INSERT ...` (without FORMAT) with the data (format `fmt`) in `data`.

        The data goes in through `FROM INFILE`, ClickHouse's own client path, and not
        through chDB's streaming inserter (`send_insert`): that one raises parse errors
        but loses every error of the table's write path (TOO_MANY_PARTS, VIOLATED_CONSTRAINT,
        ...): `finish()` returns a normal result, nothing is stored, and the error only
        shows as a count in system.errors. `FROM INFILE` raises them like any query.
        """
        if data.size == 0:
            # An empty body inserts nothing (headers-only formats reject it), but the
            # statement is still checked (unknown table, readonly...).
            try:
                self.session._conn.send_insert(sql, fmt).cancel()
            except Exception as exc:
                raise EngineError.from_chdb(exc) from None
            return {"written_rows": 0, "written_bytes": 0}
        try:
            result = self.run(insert_from_file(sql, data.path, fmt))
        except EngineError as exc:
            # The file is this server's business, not the client's: ClickHouse names none.
            exc.text = exc.text.replace(f" (in file/uri {data.path})", "").replace(data.path, "<request body>")
            raise
        return {"written_rows": result.rows_written(), "written_bytes": result.bytes_written()}


def insert_from_file(sql: str, path: str, fmt: str) -> str:
    """`INSERT INTO t [(cols)] [SETTINGS ...]` + file -> `INSERT INTO t [(cols)] FROM INFILE
    '<path>' [SETTINGS ...] FORMAT <fmt>` (FROM INFILE must precede SETTINGS)."""
    raw = sql.encode("utf-8")
    cut = next((t.start for t in top_level_tokens(raw) if t.keyword == "SETTINGS"), len(raw))
    head, settings = raw[:cut].decode("utf-8").rstrip(), raw[cut:].decode("utf-8").strip()
    return f"{head} FROM INFILE {quote_string(path)}{' ' + settings if settings else ''} FORMAT {fmt}"


@dataclass
class InsertData:
    """An INSERT's data, written to a named temporary file (removed by `close`)."""

    path: str
    size: int

    @classmethod
    def write(cls, pieces: Iterable[bytes]) -> InsertData:
        fd, path = tempfile.mkstemp(prefix="chdb-server-insert-", suffix=".data")
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for piece in pieces:
                    f.write(piece)
                    size += len(piece)
        except BaseException:
            os.unlink(path)
            raise
        return cls(path, size)

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Request:
    statement: Statement
    readonly: int
    database: str
    default_format: str
    settings: dict[str, str]
    params: dict[str, str]


class Engine:
    """Serializes all work on chDB behind one lock."""

    def __init__(self, data_dir: str):
        os.makedirs(data_dir, exist_ok=True)
        self.lock = threading.Lock()
        self.connections = {level: Connection(data_dir, level) for level in (0, 1, 2)}
        info = self.connections[0].run("SELECT version(), timezone()", "JSONCompactEachRow").bytes()
        self.version, self.timezone = json.loads(info)

    def execute(self, request: Request) -> Outcome:
        statement = request.statement
        if statement.insert_format is None:
            return self._execute(request, None)
        # The data is copied to its file before the lock: a large body does not hold
        # up the other requests while it is written.
        data = InsertData.write(_data_pieces(statement))
        try:
            return self._execute(request, data)
        finally:
            data.close()

    def _execute(self, request: Request, data: InsertData | None) -> Outcome:
        statement = request.statement
        with self.lock:
            conn = self.connections[request.readonly]
            conn.use(request.database)
            applied = conn.apply_settings(request.settings)
            try:
                if statement.insert_format is not None and data is not None:
                    summary = conn.insert(statement.sql, statement.insert_format, data)
                    return Outcome(b"", request.default_format, summary)
                if statement.kind == "USE":
                    conn.database = None  # no lasting effect: the next request USEs its own
                result = conn.run(statement.sql, request.default_format, request.params or None)
                body = result.bytes()
                summary = {
                    "read_rows": result.rows_read(),
                    "read_bytes": result.bytes_read(),
                    "written_rows": result.rows_written(),
                    "written_bytes": result.bytes_written(),
                    "result_bytes": len(body),
                    "elapsed_ns": int(result.elapsed() * 1e9),
                }
                return Outcome(body, statement.output_format or request.default_format, summary)
            finally:
                conn.restore_settings(applied)

    def close(self) -> None:
        with self.lock:
            for conn in self.connections.values():
                conn.session.close()


def _data_pieces(statement: Statement) -> Iterator[bytes]:
    yield statement.data_prefix
    if statement.data_tail is not None:
        yield from iter(lambda: statement.data_tail.read(INSERT_PIECE_BYTES), b"")


# --------------------------------------------------------------------------- HTTP


_CONTENT_TYPES = (
    (("tabseparated", "tsv"), "text/tab-separated-values; charset=UTF-8"),
    (("json", "ndjson"), "application/json; charset=UTF-8"),
    (("rowbinary", "native", "parquet", "arrow", "orc", "avro", "msgpack", "protobuf",
      "capnproto", "bson", "npy"), "application/octet-stream"),
    (("xml",), "application/xml; charset=UTF-8"),
    (("markdown",), "text/markdown; charset=UTF-8"),
)


def content_type(fmt: str) -> str:
    lower = fmt.lower()
    if lower.startswith("csv"):
        header = "present" if "withnames" in lower else "absent"
        return f"text/csv; charset=UTF-8; header={header}"
    for prefixes, mime in _CONTENT_TYPES:
        if lower.startswith(prefixes):
            return mime
    return "text/plain; charset=UTF-8"


@dataclass
class User:
    password: str
    readonly: bool


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.info("%s %s", self.address_string(), format % args)

    # -- request handling

    def _serve(self, method: str) -> None:
        started = time.perf_counter()
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        self.log_user, self.log_sql = "-", ""
        text_plain = {"Content-Type": "text/plain; charset=UTF-8"}
        try:
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
                status, headers, body = self._dispatch(method, url.path, params, spool)
        except EngineError as exc:
            status, body = exc.http_status, exc.body(self.server.engine.version)
            headers = {**text_plain, "X-ClickHouse-Exception-Code": str(exc.code)}
        except BadRequest as exc:
            self.close_connection = True
            status, headers, body = 400, {**text_plain, "Connection": "close"}, f"Bad request: {exc}\n".encode()
        except ConnectionError:
            self.close_connection = True  # the client went away mid-request
            log.info("%s %s %s client disconnected", self.client_address[0], method, url.path)
            return
        except Exception:
            log.exception("internal error")
            self.close_connection = True
            status, body = 500, b"Code: 1001. DB::Exception: internal server error. (STD_EXCEPTION)\n"
            headers = {**text_plain, "X-ClickHouse-Exception-Code": "1001", "Connection": "close"}
        headers.update({
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": self.server.display_name,
            "X-ClickHouse-Timezone": self.server.engine.timezone,
        })
        self._respond(status, headers, body)
        log.info("%s %s %s %d %dB %.1fms user=%s query_id=%s %s", self.client_address[0], method, url.path,
                 status, len(body), (time.perf_counter() - started) * 1000, self.log_user, query_id,
                 " ".join(self.log_sql[:200].split()))

    def _dispatch(self, method: str, path: str, params: dict[str, str],
                  spool: BinaryIO) -> tuple[int, dict[str, str], bytes]:
        self._read_body(spool, params.get("decompress") == "1")
        if path == "/ping" or (path == "/" and method == "GET" and "query" not in params):
            return 200, {"Content-Type": "text/html; charset=UTF-8"}, b"Ok.\n"
        if path != "/":
            message = f"There is no handle {path}\n\nUse / or /ping for health checks.\n"
            return 404, {"Content-Type": "text/plain; charset=UTF-8"}, message.encode()
        self.log_user, readonly_user = self._authenticate(params)
        request = self._build_request(method, params, spool, readonly_user)
        self.log_sql = request.statement.sql
        outcome = self.server.engine.execute(request)
        summary = json.dumps({k: str(v) for k, v in outcome.summary.items()}, separators=(",", ":"))
        return 200, {
            "Content-Type": content_type(outcome.format),
            "X-ClickHouse-Format": outcome.format,
            "X-ClickHouse-Summary": summary,
        }, outcome.body

    def _read_body(self, spool: BinaryIO, decompress: bool) -> None:
        """Read the whole request body into `spool`, decoded (chunked, compressed blocks)."""
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        chunks = self._body_chunks()
        try:
            if encoding not in ("", "identity"):
                raise EngineError(48, "NOT_IMPLEMENTED", f"Unsupported Content-Encoding: {encoding}")
            for piece in decompress_blocks(chunks) if decompress else chunks:
                spool.write(piece)
        except EngineError:
            for _ in chunks:  # drain the rest, so the connection stays usable
                pass
            raise
        spool.seek(0)

    def _body_chunks(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1 << 16)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BadRequest("malformed chunk size") from None
                if size == 0:
                    while self.rfile.readline(1 << 16) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                data = self.rfile.read(size)
                if len(data) != size or self.rfile.readline(1 << 16) not in (b"\r\n", b"\n"):
                    raise BadRequest("truncated chunk")
                yield data
        else:
            try:
                remaining = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise BadRequest("malformed Content-Length") from None
            while remaining > 0:
                data = self.rfile.read(min(remaining, INSERT_PIECE_BYTES))
                if not data:
                    raise BadRequest("body shorter than Content-Length")
                remaining -= len(data)
                yield data

    def _authenticate(self, params: dict[str, str]) -> tuple[str, bool]:
        """Credentials as ClickHouse takes them: Basic auth, then X-ClickHouse-User/Key
        headers, then `user`/`password` URL parameters. Returns (user, read-only?)."""
        name, password = None, ""
        authorization = self.headers.get("Authorization", "")
        if authorization[:6].lower() == "basic ":
            try:
                name, _, password = base64.b64decode(authorization[6:].strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise EngineError(516, "AUTHENTICATION_FAILED", "Malformed Basic authorization") from None
        elif self.headers.get("X-ClickHouse-User") is not None:
            name, password = self.headers["X-ClickHouse-User"], self.headers.get("X-ClickHouse-Key", "")
        elif "user" in params:
            name, password = params["user"], params.get("password", "")
        name = name or "default"
        users = self.server.users
        if users is None:
            return name, False
        account = users.get(name)
        if account is None or not hmac.compare_digest(account.password.encode(), password.encode()):
            raise EngineError(516, "AUTHENTICATION_FAILED",
                              f"{name}: Authentication failed: password is incorrect, "
                              "or there is no user with such name.")
        return name, account.readonly

    def _build_request(self, method: str, params: dict[str, str], spool: BinaryIO,
                       readonly_user: bool) -> Request:
        tail: BinaryIO | None = spool
        content_type_header = self.headers.get("Content-Type", "")
        if method == "POST" and content_type_header.lower().startswith("multipart/form-data"):
            boundary = re.search(r'boundary="?([^";]+)"?', content_type_header)
            if boundary is None:
                raise EngineError(36, "BAD_ARGUMENTS", "multipart/form-data without a boundary")
            params.update(parse_multipart(spool.read(), boundary.group(1).encode()))
            tail = None
        if method == "GET":
            tail = None
        if "query" in params:
            head = params["query"].encode() + b"\n"  # ClickHouse reads "<query>\n<body>"
        elif tail is not None:
            head, tail = tail.read(), None
        else:
            head = b""
        statement = parse_statement(head, tail)
        if not statement.sql:
            raise EngineError(62, "SYNTAX_ERROR", "Empty query")

        settings: dict[str, str] = {}
        query_params: dict[str, str] = {}
        for key, value in params.items():
            if key.startswith("param_"):
                query_params[key[len("param_"):]] = value
            elif key not in PROTOCOL_PARAMS and key not in ("database", "default_format"):
                if not SETTING_NAME.fullmatch(key):  # names go into a SET statement
                    raise EngineError(115, "UNKNOWN_SETTING", f"Unknown setting '{key}'")
                settings[key] = value

        # readonly=1 users are confined to the readonly=1 connection, where changing any
        # setting (readonly included) fails as it does in ClickHouse. Others pick their
        # level with the `readonly` parameter; GET requests are at least readonly=2.
        # ClickHouse applies a request's other settings before its `readonly=1` takes
        # effect, which only the readonly=2 connection can do; it refuses writes alike.
        requested = settings.pop("readonly", None)
        if readonly_user:
            readonly = 1
            if requested not in (None, "1"):
                settings["readonly"] = requested  # refused there, as ClickHouse does
        else:
            if requested not in (None, "0", "1", "2"):
                raise EngineError(36, "BAD_ARGUMENTS", f"Invalid value for setting 'readonly': {requested}")
            readonly = int(requested or 0)
            if (method == "GET" and readonly == 0) or (readonly == 1 and settings):
                readonly = 2
        return Request(
            statement=statement,
            readonly=readonly,
            database=self.headers.get("X-ClickHouse-Database") or params.get("database") or "default",
            default_format=(self.headers.get("X-ClickHouse-Format") or params.get("default_format")
                            or "TabSeparated"),
            settings=settings,
            params=query_params,
        )

    def _respond(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """Write status line, headers and body in one send (no Nagle/delayed-ACK stalls)."""
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('Unknown',))[0]}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        try:
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body)
        except ConnectionError:
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: Engine, users: dict[str, User] | None):
        super().__init__(address, Handler)
        self.engine = engine
        self.users = users
        self.display_name = socket.gethostname()


def load_users(path: str) -> dict[str, User]:
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    return {name: User(str(spec.get("password", "")), bool(spec.get("readonly", False)))
            for name, spec in raw.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("PULSE_CHDB_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PULSE_CHDB_PORT", "8123")))
    parser.add_argument("--data", default=os.environ.get("PULSE_CHDB_DATA"),
                        help="data directory (required; PULSE_CHDB_DATA)")
    parser.add_argument("--log", help="append the request log to this file instead of stderr")
    parser.add_argument("--users", help='JSON users file: {"name": {"password": "...", "readonly": true}}')
    args = parser.parse_args()
    if not args.data:
        parser.error("--data (or PULSE_CHDB_DATA) is required")

    handler = logging.FileHandler(args.log) if args.log else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    users = load_users(args.users) if args.users else None
    engine = Engine(os.path.abspath(args.data))
    server = Server((args.host, args.port), engine, users)

    def stop(signum, _frame):
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("chDB %s serving %s on http://%s:%d", engine.version, args.data, args.host, server.server_port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
