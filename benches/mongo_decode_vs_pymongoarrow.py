#!/usr/bin/env python3
"""BSON → Arrow decoding alone: sluice's decoder against PyMongoArrow, same bytes.

    benches/mongo_decode_vs_pymongoarrow.py [DOCS]      DOCS defaults to 1,000,000

Writes DOCS documents of two shapes as concatenated raw BSON (what a driver holds
after a fetch) to a temporary folder: `users.bson` (the issue's `users` shape:
ObjectId and five short strings) and `nested.bson` (sub-documents, arrays of
strings, ints and documents, a date, doubles); the same documents that
benches/mongo_decode.rs makes itself. Then, on one core (`taskset -c 1`, or
SLUICE_BENCH_CORE):

  - PyMongoArrow: `PyMongoArrowContext(schema)`, `process_bson_stream(chunk)` for
    each 16 MiB chunk (a server batch), `finish()`: what `find_arrow_all` does.
    Best of three runs (one when a run takes over 30 s).
  - sluice: `cargo bench --bench mongo_decode` on the same files
    (`SLUICE_BENCH_BSON_DIR`), criterion's median throughput.

and prints documents/s for both and the ratio. sluice does more per document
than PyMongoArrow here: ObjectIds become 24 hex digits (PyMongoArrow keeps the 12
bytes), and every document also gets its `_key`, `_hash` (XXH3 of its bytes) and
`_overflow` check. A measurement, not a test: nothing fails on a number.
Needs `pip install pymongoarrow` (1.15 was measured).
"""

import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")  # pyarrow ABI size notes on import

import bson  # noqa: E402  (pymongo's)
import pyarrow as pa  # noqa: E402
from bson import ObjectId  # noqa: E402
from bson.datetime_ms import DatetimeMS  # noqa: E402
from pymongoarrow.context import PyMongoArrowContext  # noqa: E402
from pymongoarrow.schema import Schema  # noqa: E402

FIRST = ["Ada", "Chinedu", "Ngozi", "Tunde", "Amaka", "Emeka", "Folake", "Ifeanyi"]
LAST = ["Obi", "Okafor", "Adeyemi", "Balogun", "Eze", "Nwosu", "Bello", "Okonkwo"]
JOBS = ["Engineer", "Teacher", "Doctor", "Trader", "Farmer", "Accountant"]
STATES = ["Lagos", "Abuja", "Kano", "Oyo", "Rivers", "Enugu"]
CHUNK = 16 * 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.environ.get("SLUICE_BENCH_CORE", "1")


def oid(i):
    return ObjectId((0x66500000).to_bytes(4, "big") + i.to_bytes(8, "big"))


def user(i):
    return {
        "_id": oid(i),
        "_Uid": f"UID{i + 1:08}",
        "firstName": FIRST[i % 8],
        "lastName": LAST[(i // 8) % 8],
        "occupation": JOBS[i % 6],
        "state": STATES[(i // 6) % 6],
    }


def nested(i):
    return {
        "_id": oid(i),
        "customer": {
            "name": f"{FIRST[i % 8]} {LAST[(i // 8) % 8]}",
            "address": {
                "street": f"{i % 500} Marina Road",
                "city": STATES[i % 6],
                "geo": {"lat": 6.45 + (i % 100) / 1000.0, "lng": 3.39},
            },
        },
        "tags": [f"tag{(i + t) % 50}" for t in range(5)],
        "scores": [(i * 7 + s * 13) % 1000 for s in range(10)],
        "items": [
            {
                "sku": f"SKU-{(i + n) % 10000:05}",
                "qty": n + 1,
                "price": 100.0 + ((i + n) % 997) / 4.0,
            }
            for n in range(3)
        ],
        "created": DatetimeMS(1_700_000_000_000 + i * 1000),
        "total": 300.0 + (i % 991),
    }


SCHEMAS = {
    "users": Schema(
        {
            "_id": ObjectId,
            "_Uid": str,
            "firstName": str,
            "lastName": str,
            "occupation": str,
            "state": str,
        }
    ),
    "nested": Schema(
        {
            "_id": ObjectId,
            "customer": pa.struct(
                [
                    ("name", pa.string()),
                    (
                        "address",
                        pa.struct(
                            [
                                ("street", pa.string()),
                                ("city", pa.string()),
                                ("geo", pa.struct([("lat", pa.float64()), ("lng", pa.float64())])),
                            ]
                        ),
                    ),
                ]
            ),
            "tags": pa.list_(pa.string()),
            "scores": pa.list_(pa.int32()),
            "items": pa.list_(
                pa.struct([("sku", pa.string()), ("qty", pa.int32()), ("price", pa.float64())])
            ),
            "created": pa.timestamp("ms"),
            "total": pa.float64(),
        }
    ),
}


def chunks(raw):
    """The stream cut at document boundaries into chunks of about 16 MiB."""
    out, start, at = [], 0, 0
    while at < len(raw):
        at += int.from_bytes(raw[at : at + 4], "little")
        if at - start >= CHUNK or at == len(raw):
            out.append(raw[start:at])
            start = at
    return out


def pymongoarrow_docs_per_s(name, raw, docs):
    parts = chunks(raw)
    best, spent = None, 0.0
    for _ in range(3):
        if spent > 30:
            break  # nested documents: one run of a minute or more is enough
        t0 = time.perf_counter()
        context = PyMongoArrowContext(SCHEMAS[name])
        for part in parts:
            context.process_bson_stream(part)
        table = context.finish()
        elapsed = time.perf_counter() - t0
        assert table.num_rows == docs, (table.num_rows, docs)
        for column in table.column_names:
            assert table.column(column).null_count == 0, f"{name}.{column} has nulls"
        best = elapsed if best is None else min(best, elapsed)
        spent += elapsed
    return docs / best


UNITS = {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9}


def sluice_docs_per_s(folder):
    env = dict(os.environ, SLUICE_BENCH_BSON_DIR=folder)
    env.setdefault("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/sluice-target"))
    cmd = ["cargo", "bench", "--bench", "mongo_decode", "--", "--noplot"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", CORE] + cmd
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    result, current = {}, None
    for line in out.stdout.splitlines():
        m = re.match(r"mongo_decode/(\w+)", line.strip())
        if m:
            current = m.group(1)
        m = re.search(r"thrpt:\s*\[\S+ \S+ (\S+) (\S+) ", line)
        if m and current:
            result[current] = float(m.group(1)) * UNITS[m.group(2)]
    if len(result) != 2:
        sys.exit(f"could not read criterion's output:\n{out.stdout}\n{out.stderr}")
    return result


def main():
    docs = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    if shutil.which("taskset") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(CORE)})
    folder = tempfile.mkdtemp(prefix="sluice-mongo-decode-")
    try:
        raws = {}
        for name, make in (("users", user), ("nested", nested)):
            t0 = time.perf_counter()
            raw = b"".join(bson.encode(make(i)) for i in range(docs))
            with open(os.path.join(folder, f"{name}.bson"), "wb") as f:
                f.write(raw)
            raws[name] = raw
            print(
                f"wrote {docs} {name} documents ({len(raw) / docs:.0f} bytes each) "
                f"in {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
            )
        python = {name: pymongoarrow_docs_per_s(name, raw, docs) for name, raw in raws.items()}
        print("running cargo bench --bench mongo_decode (release) …", file=sys.stderr)
        rust = sluice_docs_per_s(folder)
        import pymongoarrow

        print(f"\nBSON → Arrow, {docs} documents, one core (PyMongoArrow {pymongoarrow.__version__})")
        print(f"{'shape':<8} {'sluice docs/s':>14} {'PyMongoArrow docs/s':>20} {'ratio':>7}")
        for name in raws:
            print(f"{name:<8} {rust[name]:>14,.0f} {python[name]:>20,.0f} {rust[name] / python[name]:>6.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
