#!/usr/bin/env python3
"""Self-test of tests/support/chfront.py (and its use of s3s-fs).

Needs the services up (scripts/services.sh up). Plain script, no pytest:

    python3 tests/support/test_chfront.py

Exits non-zero if any check fails; the last line is "N passed, N failed".
Uses only the stdlib plus `lz4` and `clickhouse-cityhash` (installed with chdb
by scripts/services.sh).
"""

from __future__ import annotations

import http.client
import json
import os
import struct
import sys
import traceback
import urllib.error
import urllib.parse
import urllib.request

import lz4.block
import lz4.frame
from clickhouse_cityhash.cityhash import CityHash128

CH = os.environ.get("SLUICE_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123").rstrip("/")
S3 = os.environ.get("AWS_ENDPOINT", "http://127.0.0.1:9000").rstrip("/")
AK = os.environ.get("AWS_ACCESS_KEY_ID", "sluiceaccess")
SK = os.environ.get("AWS_SECRET_ACCESS_KEY", "sluicesecret123")
BUCKET = "lake"
DB = "chfront_selftest"
PREFIX = f"{S3}/{BUCKET}/chfront-selftest"

passed = failed = 0


def check(name):
    def deco(fn):
        global passed, failed
        try:
            fn()
            passed += 1
            print(f"ok   {name}")
        except Exception:  # noqa: BLE001
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
        return fn
    return deco


class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self):
        return self.body.decode()


def req(sql: str | None = None, params: dict | None = None, body: bytes | None = None,
        headers: dict | None = None, method: str = "POST") -> Resp:
    params = dict(params or {})
    if sql is not None and body is not None:
        params["query"] = sql
    elif sql is not None:
        body = sql.encode()
    url = CH + "/" + ("?" + urllib.parse.urlencode(params) if params else "")
    r = urllib.request.Request(url, data=body if method == "POST" else None, method=method,
                               headers=headers or {})
    try:
        with urllib.request.urlopen(r, timeout=120) as resp:
            return Resp(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as e:
        return Resp(e.code, e.headers, e.read())


def ok(sql, **kw) -> Resp:
    r = req(sql, **kw)
    assert r.status == 200, f"{r.status}: {r.body[:500]!r}"
    return r


# --- native compressed blocks, written independently of chfront ----------------

def ch_checksum(data: bytes) -> bytes:
    h = CityHash128(data)
    return struct.pack("<QQ", h >> 64, h & (2**64 - 1))


def compress_native(data: bytes, block=64 * 1024) -> bytes:
    out = b""
    for off in range(0, len(data), block):
        c = lz4.block.compress(data[off:off + block], store_size=False)
        hdr = struct.pack("<BII", 0x82, 9 + len(c), len(data[off:off + block]))
        out += ch_checksum(hdr + c) + hdr + c
    return out


def decompress_native(buf: bytes) -> bytes:
    out, pos = b"", 0
    while pos < len(buf):
        method = buf[pos + 16]
        csize, usize = struct.unpack_from("<II", buf, pos + 17)
        assert ch_checksum(buf[pos + 16:pos + 16 + csize]) == buf[pos:pos + 16], "bad checksum"
        assert method == 0x82, hex(method)
        out += lz4.block.decompress(buf[pos + 25:pos + 16 + csize], uncompressed_size=usize)
        pos += 16 + csize
    return out


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def rb_string(s: str) -> bytes:
    b = s.encode()
    return leb128(len(b)) + b


def read_rbwnat(buf: bytes):
    """Parse a RowBinaryWithNamesAndTypes header; returns (names, types, rest)."""
    pos = 0

    def uvar():
        nonlocal pos
        shift = val = 0
        while True:
            b = buf[pos]
            pos += 1
            val |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return val

    def string():
        nonlocal pos
        n = uvar()
        s = buf[pos:pos + n].decode()
        pos += n
        return s

    ncols = uvar()
    names = [string() for _ in range(ncols)]
    types = [string() for _ in range(ncols)]
    return names, types, buf[pos:], string, uvar, lambda: pos


# --- tests ----------------------------------------------------------------------

@check("ping")
def _():
    r = req(method="GET", params=None)
    assert r.status == 200 and r.body == b"Ok.\n", r.body
    with urllib.request.urlopen(CH + "/ping", timeout=10) as resp:
        assert resp.read() == b"Ok.\n"
    r = req(method="GET", params={"query": "SELECT 1"})
    assert r.status == 200 and r.body == b"1\n", r.body


@check("create database and tables")
def _():
    ok(f"DROP DATABASE IF EXISTS {DB}")
    ok(f"CREATE DATABASE {DB}")
    ok("CREATE TABLE t (id UInt64, day Date, v String, ts DateTime DEFAULT now(), ver UInt64) "
       "ENGINE = ReplacingMergeTree(ver) PARTITION BY toYYYYMM(day) ORDER BY id "
       "TTL ts + INTERVAL 3650 DAY", params={"database": DB})
    ok(f"CREATE TABLE {DB}.staging AS {DB}.t")
    r = ok("SELECT name FROM system.tables WHERE database = {db:String} ORDER BY name",
           params={"param_db": DB})
    assert r.text == "staging\nt\n", r.text


@check("write parquet to s3s-fs via INSERT INTO FUNCTION s3, load with s3() glob")
def _():
    for month, base in (("2024-01", 0), ("2024-02", 1000)):
        ok(f"INSERT INTO FUNCTION s3('{PREFIX}/t/month={month}/part-0.parquet', '{AK}', '{SK}', 'Parquet') "
           f"SELECT number + {base} AS id, toDate('{month}-15') AS day, toString(number) AS v, "
           f"toDateTime('{month}-15 12:00:00') AS ts, toUInt64(1) AS ver FROM numbers(10)",
           params={"s3_truncate_on_insert": "1"})
    r = ok(f"SELECT count(), uniqExact(_path) FROM s3('{PREFIX}/t/*/*.parquet', '{AK}', '{SK}', 'Parquet')")
    assert r.text == "20\t2\n", r.text
    ok(f"INSERT INTO {DB}.t SELECT * FROM s3('{PREFIX}/t/*/*.parquet', '{AK}', '{SK}', 'Parquet')")
    r = ok(f"SELECT count(), sum(id) FROM {DB}.t")
    assert r.text == f"20\t{sum(range(10)) + sum(range(1000, 1010))}\n", r.text


@check("REPLACE PARTITION from staging + system.parts")
def _():
    ok(f"INSERT INTO {DB}.staging VALUES (5000, '2024-02-01', 'new', '2024-02-01 00:00:00', 2)")
    ok(f"ALTER TABLE {DB}.t REPLACE PARTITION 202402 FROM {DB}.staging")
    r = ok(f"SELECT id, v FROM {DB}.t WHERE toYYYYMM(day) = 202402 ORDER BY id")
    assert r.text == "5000\tnew\n", r.text
    r = ok(f"SELECT count() FROM {DB}.t WHERE toYYYYMM(day) = 202401")
    assert r.text == "10\n", r.text
    r = ok("SELECT partition, sum(rows) FROM system.parts WHERE database = {db:String} "
           "AND table = 't' AND active GROUP BY partition ORDER BY partition FORMAT JSONEachRow",
           params={"param_db": DB})
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert rows == [{"partition": "202401", "sum(rows)": "10"}, {"partition": "202402", "sum(rows)": "1"}] or \
        rows == [{"partition": "202401", "sum(rows)": 10}, {"partition": "202402", "sum(rows)": 1}], rows


@check("RowBinaryWithNamesAndTypes output (default_format, as the Rust crate asks)")
def _():
    r = ok("SELECT id, v FROM t WHERE id = 5000", params={"database": DB,
                                                        "default_format": "RowBinaryWithNamesAndTypes"})
    names, types, rest, *_ = read_rbwnat(r.body)
    assert names == ["id", "v"] and types == ["UInt64", "String"], (names, types)
    assert rest == struct.pack("<Q", 5000) + rb_string("new"), rest
    assert r.headers["X-ClickHouse-Format"] == "RowBinaryWithNamesAndTypes"
    json.loads(r.headers["X-ClickHouse-Summary"])


@check("query parameters via URL and via multipart/form-data body")
def _():
    r = ok("SELECT {a:UInt32} + 1, {s:String}", params={"param_a": "41", "param_s": "it's \\ \"x\""})
    assert r.text == "42\tit\\'s \\\\ \"x\"\n", r.text
    boundary = "----chfrontTEST"
    parts = [("query", "SELECT {n:UInt8} * 2, {s:String}"), ("param_n", "21"), ("param_s", "q'q")]
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
                    for k, v in parts) + f"--{boundary}--\r\n".encode()
    r = req(body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status == 200 and r.text == "42\tq\\'q\n", (r.status, r.body)


@check("settings pass through as URL params and are reset afterwards")
def _():
    r = ok("SELECT getSetting('max_execution_time')",
           params={"max_execution_time": "17", "wait_end_of_query": "1", "no_such_setting_xyz": "1"})
    assert r.text == "17\n", r.text
    r = ok("SELECT getSetting('max_execution_time')")
    assert r.text == "0\n", r.text


@check("errors: status, X-ClickHouse-Exception-Code, Code: N. DB::Exception body")
def _():
    r = req("SELECT * FROM no_such_table_xyz", params={"database": DB})
    assert r.status == 404, r.status
    assert r.headers["X-ClickHouse-Exception-Code"] == "60", dict(r.headers)
    assert r.text.startswith("Code: 60. DB::Exception:") and "UNKNOWN_TABLE" in r.text, r.text
    r = req("SELEC 1")
    assert r.status == 400 and r.headers["X-ClickHouse-Exception-Code"] == "62", r.status
    r = req("SELECT throwIf(1, 'boom')")
    assert r.status == 500 and r.headers["X-ClickHouse-Exception-Code"] == "395", (r.status, r.text)
    assert "boom" in r.text
    # the server still works after errors (session not poisoned, database reset)
    assert ok("SELECT currentDatabase()").text == "default\n"


@check("LZ4 compressed INSERT body (decompress=1, RowBinary) and compress=1 response")
def _():
    rows = b"".join(struct.pack("<Q", 7000 + i) + struct.pack("<H", 19755) + rb_string(f"lz{i}")
                    + struct.pack("<I", 1706745600) + struct.pack("<Q", 3) for i in range(20000))
    body = compress_native(rows)
    r = req(f"INSERT INTO {DB}.t (id, day, v, ts, ver) FORMAT RowBinary", body=body,
            params={"decompress": "1"})
    assert r.status == 200, r.body
    r = ok(f"SELECT count(), min(v) FROM {DB}.t WHERE id >= 7000")
    assert r.text == "20000\tlz0\n", r.text
    # corrupted checksum is rejected
    bad = bytearray(body)
    bad[0] ^= 0xFF
    r = req(f"INSERT INTO {DB}.t (id, day, v, ts, ver) FORMAT RowBinary", body=bytes(bad),
            params={"decompress": "1"})
    assert r.status != 200 and r.headers["X-ClickHouse-Exception-Code"] == "40", (r.status, r.body)
    # compress=1 response
    r = ok(f"SELECT id FROM {DB}.t WHERE id >= 7000 ORDER BY id", params={"compress": "1"})
    plain = decompress_native(r.body)
    assert plain == "".join(f"{7000 + i}\n" for i in range(20000)).encode(), plain[:100]
    # HTTP Content-Encoding lz4 (enable_http_compression=1 + Accept-Encoding)
    r = ok(f"SELECT count() FROM {DB}.t", params={"enable_http_compression": "1"},
           headers={"Accept-Encoding": "lz4"})
    assert r.headers["Content-Encoding"] == "lz4"
    assert lz4.frame.decompress(r.body) == b"20011\n", r.body


@check("INSERT with RowBinaryWithNamesAndTypes body over chunked transfer-encoding")
def _():
    hdr = leb128(2) + rb_string("id") + rb_string("v") + rb_string("UInt64") + rb_string("String")
    data = hdr + b"".join(struct.pack("<Q", 100000 + i) + rb_string("c") for i in range(1000))
    u = urllib.parse.urlparse(CH)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    q = urllib.parse.urlencode({"query": "INSERT INTO t (id, v) FORMAT RowBinaryWithNamesAndTypes",
                                "database": DB})
    conn.putrequest("POST", "/?" + q)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for off in range(0, len(data), 1000):
        chunk = data[off:off + 1000]
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    # same keep-alive connection keeps working
    conn.request("POST", "/?" + urllib.parse.urlencode({"database": DB}),
                 body=b"SELECT count() FROM t WHERE id >= 100000 AND id < 101000")
    resp = conn.getresponse()
    assert resp.read() == b"1000\n"
    conn.close()


@check("INSERT with data in the body after the statement (curl style)")
def _():
    ok(f"INSERT INTO {DB}.t (id, v) FORMAT JSONEachRow\n{{\"id\": 110000, \"v\": \"json\"}}\n")
    ok(f"INSERT INTO {DB}.t (id, v) VALUES", body=b"(110001, 'values')")
    ok(f"INSERT INTO {DB}.t (id, v) VALUES (110002, 'a FORMAT b')")
    raw = f"INSERT INTO {DB}.t (id, v) FORMAT RowBinary\n".encode() + struct.pack("<Q", 110003) + rb_string("\xff")
    ok(None, body=raw.replace(rb_string("\xff"), b"\x01\xff"))  # binary, not UTF-8
    r = ok(f"SELECT v FROM {DB}.t WHERE id IN (110000, 110001, 110002) ORDER BY id")
    assert r.text == "json\nvalues\na FORMAT b\n", r.text
    r = ok(f"SELECT hex(v) FROM {DB}.t WHERE id = 110003")
    assert r.text == "FF\n", r.text


@check("cleanup: DROP TABLE / DROP DATABASE")
def _():
    ok(f"DROP TABLE {DB}.staging")
    ok(f"DROP DATABASE {DB}")
    r = req(f"SELECT 1 FROM {DB}.t")
    assert r.headers["X-ClickHouse-Exception-Code"] == "81", r.text


if __name__ == "__main__":
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
