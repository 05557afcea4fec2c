#!/usr/bin/env python3
"""chfront: a small ClickHouse HTTP-interface front-end on top of chDB.

Test-only stand-in for a ClickHouse server (no Docker / no clickhouse-server
package here). It speaks enough of the ClickHouse HTTP protocol to serve the
Rust `clickhouse` crate (0.15.x, feature `lz4`), curl and simple scripts.

    python3 tests/support/chfront.py --port 8123 --data DIR [--host 127.0.0.1]

Needs: `pip install --no-deps chdb-core lz4 clickhouse-cityhash` (chdb-core
imports without pandas/pyarrow; `lz4` and `clickhouse-cityhash` are only used
for compressed bodies and are optional at start-up).

What is supported:
  * GET /ping, GET / (no query), GET /replicas_status  -> "Ok.\\n"
  * GET|POST /?query=SQL, or the SQL in the POST body, or both (then the URL
    query is the statement and the body is its data, as in ClickHouse).
  * multipart/form-data bodies (the crate uses them when query parameters are
    set): fields `query` and `param_*`.
  * query parameters `param_NAME=value` for `{NAME:Type}` placeholders (passed
    to chDB's native parameter support, so no textual substitution).
  * `database=` (USE for that request), `default_format=`, `query_id=`.
  * other URL params are treated as settings: applied with SET for the request
    and reset to DEFAULT afterwards; unknown settings are ignored.
  * `decompress=1`: request body in ClickHouse's native compressed-block format
    (checksum, method 0x82 LZ4 / 0x02 none / 0x90 ZSTD if `zstandard` is there).
  * `compress=1`: response in the same block format (CityHash128 checksums).
  * `enable_http_compression=1` + `Accept-Encoding: lz4|gzip|deflate`: response
    with that Content-Encoding (ClickHouse only compresses with that setting on,
    and the crate does not turn it on, so by default responses are plain).
  * Content-Encoding of the request body: gzip, deflate, lz4 (frame).
  * INSERT ... FORMAT X with data in the body: streamed into chDB's
    send_insert (RowBinary, RowBinaryWithNamesAndTypes, TSV, JSONEachRow, ...).
  * Errors: ClickHouse-like status (400 syntax/parse, 404 unknown db/table,
    500 otherwise), header X-ClickHouse-Exception-Code, body
    "Code: N. DB::Exception: ... (NAME) (version X)\\n".

One chDB session (one data directory) per process; all chDB calls are
serialised with a lock. Logs one line per request to stderr, without SQL text
(only the first keyword) so secrets in s3(...) calls never reach the log.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import struct
import sys
import threading
import time
import urllib.parse
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import chdb

try:
    import lz4.block as lz4_block
    import lz4.frame as lz4_frame
except ImportError:  # pragma: no cover - optional
    lz4_block = lz4_frame = None

try:
    from clickhouse_cityhash.cityhash import CityHash128
except ImportError:  # pragma: no cover - optional
    CityHash128 = None

try:
    import zstandard
except ImportError:
    zstandard = None

VERSION = getattr(chdb, "__version__", "chdb")

# URL parameters that are protocol-level, never settings.
NON_SETTINGS = {
    "query", "database", "default_format", "query_id", "session_id",
    "session_timeout", "session_check", "user", "password", "quota_key",
    "compress", "decompress", "buffer_size", "wait_end_of_query", "role",
    "enable_http_compression", "http_zlib_compression_level",
    "readonly",  # SET readonly=1 would lock the shared session
    "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "http_response_buffer_size", "http_wait_end_of_query",
    "query_cache", "stacktrace", "client_protocol_version",
}

# ClickHouse error codes -> HTTP status, as ClickHouse's HTTPHandler maps them.
HTTP_403_CODES = {192, 193, 194, 195, 497, 516}  # unknown user / wrong password / access denied
HTTP_400_CODES = {6, 25, 26, 27, 38, 41, 72, 117, 53, 62, 39, 40, 167, 168, 169, 321}  # parse/syntax/type
HTTP_404_CODES = {60, 46, 47, 50, 56, 81, 115, 63, 73, 51, 336}  # UNKNOWN_TABLE/DATABASE/IDENTIFIER/...

LOCK = threading.Lock()
SESSION = None  # chdb connection, set in main()

_INSERT_FORMAT_RE = re.compile(
    r"(?is)^(\s*INSERT\s+INTO\s.*?)\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*$")
_INSERT_FORMAT_INLINE_RE = re.compile(
    rb"(?is)^(\s*INSERT\s+INTO\s.*?)\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)[ \t]*(?:\r?\n)?")
_TRAILING_FORMAT_RE = re.compile(r"(?i)\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*$")
_CODE_RE = re.compile(r"^Code:\s*(\d+)\.")
_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DB_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class CHError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def to_ch_error(exc: BaseException) -> CHError:
    if isinstance(exc, CHError):
        return exc
    text = str(exc).strip()
    for prefix in ("Streaming insert append failed: ", "Streaming insert finish failed: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    m = _CODE_RE.match(text)
    if m:
        return CHError(int(m.group(1)), text)
    # Not an engine exception: STD_EXCEPTION
    return CHError(1001, f"Code: 1001. DB::Exception: {type(exc).__name__}: {text}. (STD_EXCEPTION)")


def http_status_for(code: int) -> int:
    if code in HTTP_404_CODES:
        return 404
    if code in HTTP_403_CODES:
        return 403
    if code in HTTP_400_CODES:
        return 400
    return 500


# ---------------------------------------------------------------------------
# ClickHouse native compressed-block format
# ---------------------------------------------------------------------------

def _checksum(data: bytes) -> bytes:
    """CityHash128 (v1.0.2) of header+payload as ClickHouse writes it.

    clickhouse_cityhash returns the 128-bit value with the halves in the
    opposite order to ClickHouse's (low64, high64) on-wire layout, hence the
    swap (checked against bytes sent by the Rust clickhouse crate)."""
    h = CityHash128(data)
    return struct.pack("<QQ", h >> 64, h & 0xFFFFFFFFFFFFFFFF)


def decompress_blocks(buf: bytes) -> bytes:
    out = io.BytesIO()
    pos, n = 0, len(buf)
    while pos < n:
        if n - pos < 25:
            raise CHError(271, "Code: 271. DB::Exception: Cannot decompress: truncated compressed block header. (CANNOT_DECOMPRESS)")
        method = buf[pos + 16]
        csize, usize = struct.unpack_from("<II", buf, pos + 17)
        if csize < 9 or pos + 16 + csize > n:
            raise CHError(271, f"Code: 271. DB::Exception: Cannot decompress: bad compressed size {csize}. (CANNOT_DECOMPRESS)")
        payload = buf[pos + 25: pos + 16 + csize]
        if CityHash128 is not None and _checksum(buf[pos + 16: pos + 16 + csize]) != buf[pos: pos + 16]:
            raise CHError(40, "Code: 40. DB::Exception: Checksum doesn't match: corrupted data. (CHECKSUM_DOESNT_MATCH)")
        if method == 0x82:
            if lz4_block is None:
                raise CHError(271, "Code: 271. DB::Exception: LZ4 support (python lz4) not installed. (CANNOT_DECOMPRESS)")
            out.write(lz4_block.decompress(payload, uncompressed_size=usize))
        elif method == 0x02:
            out.write(payload)
        elif method == 0x90 and zstandard is not None:
            out.write(zstandard.ZstdDecompressor().decompress(payload, max_output_size=usize))
        else:
            raise CHError(271, f"Code: 271. DB::Exception: Unknown compression method 0x{method:02x}. (CANNOT_DECOMPRESS)")
        pos += 16 + csize
    return out.getvalue()


def compress_blocks(data: bytes, block_size: int = 1 << 20) -> bytes:
    if lz4_block is None or CityHash128 is None:
        raise CHError(271, "Code: 271. DB::Exception: compress=1 needs python packages lz4 and clickhouse-cityhash. (CANNOT_COMPRESS)")
    out = io.BytesIO()
    for off in range(0, max(len(data), 1), block_size):
        chunk = data[off: off + block_size]
        if not chunk and off > 0:
            break
        comp = lz4_block.compress(chunk, store_size=False)
        header = struct.pack("<BII", 0x82, 9 + len(comp), len(chunk))
        out.write(_checksum(header + comp))
        out.write(header)
        out.write(comp)
    return out.getvalue()


# ---------------------------------------------------------------------------
# Request helpers
# ---------------------------------------------------------------------------

def parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise CHError(1001, "Code: 1001. DB::Exception: multipart body without boundary. (STD_EXCEPTION)")
    boundary = b"--" + m.group(1).encode()
    fields: dict[str, str] = {}
    for part in body.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        part = part[2:] if part.startswith(b"\r\n") else part
        head, _, value = part.partition(b"\r\n\r\n")
        if value.endswith(b"\r\n"):
            value = value[:-2]
        nm = re.search(rb'name="([^"]*)"', head)
        if nm:
            fields[nm.group(1).decode()] = value.decode("utf-8")
    return fields


def sql_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def first_word(sql: str) -> str:
    m = re.match(r"\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*([A-Za-z]+)", sql, re.S)
    return m.group(1).upper() if m else "-"


CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
    "json": "application/json; charset=UTF-8",
    "jsoncompact": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
    "pretty": "text/plain; charset=UTF-8",
}


def content_type_for(fmt: str) -> str:
    f = fmt.lower()
    if f in CONTENT_TYPES:
        return CONTENT_TYPES[f]
    if f.startswith("tabseparated") or f.startswith("tsv"):
        return CONTENT_TYPES["tsv"]
    if f.startswith("json"):
        return "application/json; charset=UTF-8"
    if f.startswith("pretty") or f in ("vertical", "markdown"):
        return "text/plain; charset=UTF-8"
    return "application/octet-stream"


# ---------------------------------------------------------------------------
# Execution (always under LOCK)
# ---------------------------------------------------------------------------

def apply_settings(settings: list[tuple[str, str]]) -> list[str]:
    applied = []
    for name, value in settings:
        if not _SETTING_NAME_RE.match(name):
            continue
        try:
            SESSION.query(f"SET {name} = {sql_quote(value)}", "TabSeparated")
            applied.append(name)
        except Exception as exc:  # noqa: BLE001
            err = to_ch_error(exc)
            if err.code == 115:  # UNKNOWN_SETTING: ClickHouse would fail, we are lenient
                continue
            reset_settings(applied)
            raise err
    return applied


def reset_settings(applied: list[str]) -> None:
    for name in applied:
        try:
            SESSION.query(f"SET {name} = DEFAULT", "TabSeparated")
        except Exception:  # noqa: BLE001
            pass


def execute(sql: str, data: bytes | None, database: str, fmt: str,
            params: dict[str, str], settings: list[tuple[str, str]]) -> tuple[bytes, dict]:
    """Run one statement. Returns (result bytes, summary dict)."""
    if not _DB_NAME_RE.match(database):
        raise CHError(81, f"Code: 81. DB::Exception: Database {database} does not exist. (UNKNOWN_DATABASE)")
    with LOCK:
        if database != "default":
            SESSION.query(f"USE `{database}`", "TabSeparated")
        applied = []
        try:
            applied = apply_settings(settings)
            # INSERT ... FORMAT X followed by data.
            insert = None
            if data is not None:
                m = _INSERT_FORMAT_RE.match(sql)
                if m:
                    insert = (m.group(1).strip(), m.group(2), data)
            if insert is not None:
                stmt, ifmt, payload = insert
                ins = SESSION.send_insert(stmt, ifmt)
                try:
                    step = 4 << 20
                    for off in range(0, len(payload), step):
                        ins.append(payload[off: off + step])
                    res = ins.finish()
                except BaseException:
                    try:
                        ins.cancel()
                    except Exception:  # noqa: BLE001
                        pass
                    raise
                summary = {"written_rows": res.rows_written, "written_bytes": res.bytes_written,
                           "elapsed_ns": int(res.elapsed * 1e9)}
                return b"", summary
            if data:
                # e.g. URL "INSERT INTO t VALUES" + body "(1, 'a')"
                sql = sql + "\n" + data.decode("utf-8")
            res = SESSION.query(sql, fmt, params=params)
            out = res.bytes() if res is not None else b""
            summary = {}
            try:
                summary = {"read_rows": res.rows_read(), "read_bytes": res.bytes_read(),
                           "written_rows": getattr(res, "rows_written", lambda: 0)(),
                           "written_bytes": getattr(res, "bytes_written", lambda: 0)(),
                           "elapsed_ns": int(res.elapsed() * 1e9)}
            except Exception:  # noqa: BLE001
                pass
            return out, summary
        finally:
            reset_settings(applied)
            if database != "default":
                try:
                    SESSION.query("USE default", "TabSeparated")
                except Exception:  # noqa: BLE001
                    pass


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chfront"
    sys_version = ""

    def log_message(self, fmt, *args):  # silence default access log
        pass

    def _log(self, status: int, word: str, nbytes: int, t0: float, code: int | None = None) -> None:
        path = self.path.split("?", 1)[0]
        extra = f" code={code}" if code else ""
        sys.stderr.write(
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.client_address[0]} {self.command} {path} "
            f"{word} -> {status}{extra} {nbytes}B {1000 * (time.monotonic() - t0):.1f}ms\n")
        sys.stderr.flush()

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until empty line
                    while True:
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)  # CRLF
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "Keep-Alive")
        self.send_header("Keep-Alive", "timeout=10")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _handle(self):
        t0 = time.monotonic()
        raw_path, _, qs = self.path.partition("?")
        body = self._read_body() if self.command == "POST" else b""
        pairs = urllib.parse.parse_qsl(qs, keep_blank_values=True)
        params = dict(pairs)
        query_id = params.get("query_id") or str(uuid.uuid4())
        base_headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Server-Display-Name": "chfront",
                        "X-ClickHouse-Timezone": "UTC"}

        if raw_path in ("/ping", "/replicas_status") or (raw_path == "/" and "query" not in params and not body):
            self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            self._log(200, "PING", 4, t0)
            return
        if raw_path not in ("/", ""):
            msg = b"There is no handle " + raw_path.encode() + b"\n"
            self._send(404, msg, {"Content-Type": "text/plain; charset=UTF-8"})
            self._log(404, "-", len(msg), t0)
            return

        word = "-"
        compress_out = params.get("compress") == "1"
        try:
            # --- decode body -------------------------------------------------
            ce = (self.headers.get("Content-Encoding") or "").strip().lower()
            if ce in ("gzip", "x-gzip"):
                body = gzip.decompress(body)
            elif ce == "deflate":
                body = zlib.decompress(body)
            elif ce == "lz4" and lz4_frame is not None:
                body = lz4_frame.decompress(body)
            elif ce == "zstd" and zstandard is not None:
                body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
            elif ce:
                raise CHError(1001, f"Code: 1001. DB::Exception: Unknown Content-Encoding {ce}. (STD_EXCEPTION)")

            ctype = self.headers.get("Content-Type", "")
            if ctype.lower().startswith("multipart/form-data") and body:
                fields = parse_multipart(body, ctype)
                body = b""
                for k, v in fields.items():
                    if k == "query":
                        params["query"] = v
                    else:
                        params[k] = v
                        pairs.append((k, v))
            if params.get("decompress") == "1" and body:
                body = decompress_blocks(body)

            # --- statement & data ------------------------------------------
            if "query" in params:
                sql = params["query"]
                data = body if body else None
            else:
                # Whole statement in the body; "INSERT ... FORMAT X\n<data>" carries
                # its (maybe binary) data after the format name.
                sql, data = body, None
                mb = _INSERT_FORMAT_INLINE_RE.match(body)
                if mb and mb.end() < len(body) and not re.search(rb"(?i)\b(VALUES|SELECT)\b", mb.group(1)):
                    sql = mb.group(1) + b"FORMAT " + mb.group(2)
                    data = body[mb.end():]
                try:
                    sql = sql.decode("utf-8")
                except UnicodeDecodeError:
                    raise CHError(62, "Code: 62. DB::Exception: Query is not valid UTF-8. (SYNTAX_ERROR)") from None
            word = first_word(sql)
            qparams = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
            settings = [(k, v) for k, v in pairs
                        if k not in NON_SETTINGS and not k.startswith("param_")]
            fmt = params.get("default_format") or "TabSeparated"
            database = params.get("database") or "default"
            out, summary = execute(sql, data, database, fmt, qparams, settings)

            headers = dict(base_headers)
            mf = _TRAILING_FORMAT_RE.search(sql)
            if mf and word in ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"):
                fmt = mf.group(1)
            headers["Content-Type"] = content_type_for(fmt)
            headers["X-ClickHouse-Format"] = fmt
            headers["X-ClickHouse-Summary"] = json.dumps(
                {k: str(v) for k, v in ({"read_rows": 0, "read_bytes": 0, "written_rows": 0,
                                         "written_bytes": 0, "total_rows_to_read": 0,
                                         "result_rows": 0, "result_bytes": len(out)} | summary).items()})
            out = self._encode(out, compress_out, params, headers)
            self._send(200, out, headers)
            self._log(200, word, len(out), t0)
        except Exception as exc:  # noqa: BLE001
            err = to_ch_error(exc)
            msg = err.message
            if "(version " not in msg:
                msg = f"{msg} (version {VERSION})"
            payload = (msg + "\n").encode("utf-8", "replace")
            status = http_status_for(err.code)
            headers = dict(base_headers)
            headers["Content-Type"] = "text/plain; charset=UTF-8"
            headers["X-ClickHouse-Exception-Code"] = str(err.code)
            try:
                payload = self._encode(payload, compress_out, params, headers)
            except Exception:  # noqa: BLE001
                headers.pop("Content-Encoding", None)
            self._send(status, payload, headers)
            self._log(status, word, len(payload), t0, err.code)

    def _encode(self, out: bytes, compress_out: bool, params: dict, headers: dict) -> bytes:
        if compress_out:
            return compress_blocks(out)
        if params.get("enable_http_compression") == "1":
            accept = [a.split(";")[0].strip().lower()
                      for a in (self.headers.get("Accept-Encoding") or "").split(",")]
            if "lz4" in accept and lz4_frame is not None:
                headers["Content-Encoding"] = "lz4"
                return lz4_frame.compress(out)
            if "gzip" in accept:
                headers["Content-Encoding"] = "gzip"
                return gzip.compress(out, compresslevel=3)
            if "deflate" in accept:
                headers["Content-Encoding"] = "deflate"
                return zlib.compress(out, 3)
        return out


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def main() -> None:
    global SESSION
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--data", required=True, help="chDB data directory (persistent)")
    args = ap.parse_args()

    SESSION = chdb.connect(args.data)
    SESSION.query("SELECT 1", "TabSeparated")
    srv = Server((args.host, args.port), Handler)
    sys.stderr.write(f"chfront: chdb {VERSION} data={args.data} listening on http://{args.host}:{args.port}\n")
    sys.stderr.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        SESSION.close()


if __name__ == "__main__":
    main()
