#!/usr/bin/env python3
"""Reads a sluice lake table with DuckDB, pyarrow.dataset and polars, the way the
README tells analysts to, and prints each reader's rows as CSV in the format of
`sluice query --format csv`, so that tests/interop.rs can compare them byte for byte.

    interop_check.py LAKE TABLE OUT_DIR

LAKE is a local folder or `s3://bucket/prefix` (the S3 server and keys come from the
AWS_* variables, as for sluice). For each reader it writes OUT_DIR/<reader>.csv:
every column of the table's files, then `<partition column>_day`, ordered by the
table's key.

Two ways of finding the files are checked:

- `manifest`: the live files listed in `<table>/_manifest.json`, exactly what
  `sluice query` reads (files of a run that died before its commit are never
  listed);
- `glob`: every `*.parquet` under the table folder, with Hive partitioning OFF:
  sluice's folder `created_at=YYYY-MM-DD` holds a day while the files' column
  `created_at` is the full timestamp, and a Hive-partitioned read replaces the
  column by the day (DuckDB, polars) or refuses the schema (pyarrow). The day
  column is then taken from the folder name.

Each reader is also asked with Hive partitioning ON, and the clash is reported in
OUT_DIR/hive_clash.txt (one line per tool: what it did to the column).
"""

import csv
import datetime as dt
import decimal
import io
import json
import os
import re
import sys

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

DAY_IN_PATH = re.compile(r"=(\d{4}-\d{2}-\d{2})/")


def s3_settings():
    endpoint = os.environ.get("AWS_ENDPOINT", "http://127.0.0.1:9000")
    return {
        "endpoint": endpoint,
        "key": os.environ.get("AWS_ACCESS_KEY_ID", "sluiceaccess"),
        "secret": os.environ.get("AWS_SECRET_ACCESS_KEY", "sluicesecret123"),
        "region": os.environ.get("AWS_REGION", "us-east-1"),
        "http": endpoint.startswith("http://"),
    }


class Lake:
    """Where the table's files are, for each tool."""

    def __init__(self, url, table):
        self.table = table
        if url.startswith("s3://"):
            s3 = s3_settings()
            self.s3 = s3
            self.fs = pafs.S3FileSystem(
                access_key=s3["key"],
                secret_key=s3["secret"],
                region=s3["region"],
                endpoint_override=s3["endpoint"],
                scheme="http" if s3["http"] else "https",
                # The SDK's default gives up on a response idle for 3 s, which a
                # local S3 stand-in on a loaded 2-core machine can exceed.
                connect_timeout=10,
                request_timeout=60,
            )
            self.root = url[len("s3://"):].rstrip("/") + "/" + table  # bucket/prefix/table
            self.url = "s3://" + self.root  # for DuckDB and polars
        else:
            self.s3 = None
            self.fs = pafs.LocalFileSystem()
            self.root = os.path.abspath(os.path.join(url, table))
            self.url = self.root
        with self.fs.open_input_stream(self.root + "/_manifest.json") as f:
            self.manifest = json.loads(f.read())
        self.partition_column = self.manifest["partition_column"]
        self.day_column = self.partition_column + "_day"
        self.key = self.manifest["key"]
        self.columns = [c["name"] for c in self.manifest["schema"]]
        # (path relative to the table folder, day) of every live file.
        self.live = [
            (f["path"], day)
            for day, partition in self.manifest["partitions"].items()
            for f in partition["files"]
        ]

    def fs_paths(self):
        return [self.root + "/" + path for path, _ in self.live]

    def urls(self):
        return [self.url + "/" + path for path, _ in self.live]

    def glob(self):
        return self.url + "/*/*.parquet"


def with_day(table, days):
    """`table` plus the day column from `days` (one `YYYY-MM-DD` per row)."""
    values = pa.array([dt.date.fromisoformat(d) for d in days], pa.date32())
    return table.append_column(LAKE.day_column, values)


def day_of_path(path):
    return DAY_IN_PATH.search(path).group(1)


# -- DuckDB -------------------------------------------------------------------

def duckdb_connection():
    con = duckdb.connect()
    if LAKE.s3:
        # httpfs comes from the duckdb-extension-httpfs wheel (DuckDB would download
        # it from its own server otherwise); the wheel's version is DuckDB's.
        import duckdb_extension_httpfs

        ext = os.path.join(
            os.path.dirname(duckdb_extension_httpfs.__file__),
            "extensions",
            "v" + duckdb.__version__,
            "httpfs.duckdb_extension",
        )
        con.execute(f"LOAD '{ext}'")
        s3 = LAKE.s3
        con.execute(
            "CREATE SECRET lake (TYPE s3, KEY_ID ?, SECRET ?, REGION ?, ENDPOINT ?, "
            "URL_STYLE 'path', USE_SSL ?)".replace("?", "'{}'").format(
                s3["key"],
                s3["secret"],
                s3["region"],
                re.sub(r"^https?://", "", s3["endpoint"]),
                "false" if s3["http"] else "true",
            )
        )
    return con


def duckdb_manifest():
    con = duckdb_connection()
    files = LAKE.urls()
    table = con.execute(
        "SELECT *, regexp_extract(filename, '=(\\d{4}-\\d{2}-\\d{2})/', 1)::DATE AS "
        f'"{LAKE.day_column}" FROM read_parquet(?, hive_partitioning = false, '
        "union_by_name = true, filename = true)",
        [files],
    ).to_arrow_table()
    return table.drop_columns(["filename"])


def duckdb_glob():
    con = duckdb_connection()
    table = con.execute(
        "SELECT *, regexp_extract(filename, '=(\\d{4}-\\d{2}-\\d{2})/', 1)::DATE AS "
        f'"{LAKE.day_column}" FROM read_parquet(?, hive_partitioning = false, '
        "union_by_name = true, filename = true)",
        [LAKE.glob()],
    ).to_arrow_table()
    return table.drop_columns(["filename"])


def duckdb_hive():
    con = duckdb_connection()
    rel = con.execute(
        f"DESCRIBE SELECT * FROM read_parquet('{LAKE.glob()}', hive_partitioning = true)"
    ).fetchall()
    types = {name: kind for name, kind, *_ in rel}
    return f"column {LAKE.partition_column} read as {types[LAKE.partition_column]}"


# -- pyarrow.dataset ----------------------------------------------------------

def pyarrow_manifest():
    dataset = ds.dataset(LAKE.fs_paths(), filesystem=LAKE.fs, format="parquet")
    parts = []
    for fragment in dataset.get_fragments():
        t = fragment.to_table(schema=dataset.schema)
        parts.append(with_day(t, [day_of_path(fragment.path)] * t.num_rows))
    return pa.concat_tables(parts)


def all_files():
    """Every Parquet file under the table folder (listed: on S3 the folder itself
    is not an object)."""
    selector = pafs.FileSelector(LAKE.root, recursive=True)
    return sorted(
        i.path for i in LAKE.fs.get_file_info(selector) if i.path.endswith(".parquet")
    )


def pyarrow_glob():
    dataset = ds.dataset(all_files(), filesystem=LAKE.fs, format="parquet", partitioning=None)
    parts = []
    for fragment in dataset.get_fragments():
        t = fragment.to_table(schema=dataset.schema)
        parts.append(with_day(t, [day_of_path(fragment.path)] * t.num_rows))
    return pa.concat_tables(parts)


def pyarrow_hive():
    try:
        ds.dataset(
            all_files(),
            filesystem=LAKE.fs,
            format="parquet",
            partitioning="hive",
            partition_base_dir=LAKE.root,
        )
        return "no error"
    except pa.ArrowTypeError as e:
        return "refused: " + str(e).splitlines()[0]


# -- polars -------------------------------------------------------------------

def polars_files(paths):
    """Reads `paths` (table-folder paths from pyarrow's file system) with polars.

    On S3 polars' own object store asks for the footer with a suffix range
    longer than a small file, which the test server (s3s-fs 0.14) answers with a
    500 where S3 and MinIO return the whole file; so the bytes come through
    pyarrow's S3FileSystem, and polars decodes them. On a real S3 endpoint,
    `pl.scan_parquet(urls, storage_options=...)` reads the same files directly."""
    frames = []
    for path in paths:
        with LAKE.fs.open_input_file(path) as f:
            frame = pl.read_parquet(f, hive_partitioning=False)
        frames.append(frame.with_columns(_file=pl.lit(path)))
    return pl.concat(frames, how="diagonal_relaxed")


def polars_scan(source):
    if LAKE.s3:
        return polars_files(all_files() if isinstance(source, str) else LAKE.fs_paths())
    return pl.scan_parquet(
        source, hive_partitioning=False, include_file_paths="_file"
    ).collect()


def polars_manifest():
    frame = polars_scan(LAKE.urls())
    days = [day_of_path(p) for p in frame["_file"].to_list()]
    return with_day(frame.drop("_file").to_arrow(), days)


def polars_glob():
    frame = polars_scan(LAKE.glob())
    days = [day_of_path(p) for p in frame["_file"].to_list()]
    return with_day(frame.drop("_file").to_arrow(), days)


def polars_hive():
    if LAKE.s3:
        return "not tried on S3 (see polars_files); the local folder shows the clash"
    frame = pl.scan_parquet(LAKE.glob(), hive_partitioning=True).collect()
    column = frame[LAKE.partition_column]
    return f"column {LAKE.partition_column} read as {column.dtype}, first value {column[0]}"


# -- output -------------------------------------------------------------------

def text(value):
    """A value as arrow-rs's CSV writer prints it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
            zone = "Z"
        else:
            zone = ""
        out = value.strftime("%Y-%m-%dT%H:%M:%S")
        micros = value.microsecond
        if micros % 1_000_000:
            out += f".{micros // 1000:03d}" if micros % 1000 == 0 else f".{micros:06d}"
        return out + zone
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def write_csv(table, path):
    names = LAKE.columns + [LAKE.day_column]
    table = table.select(names)
    rows = table.to_pylist()
    rows.sort(key=lambda r: tuple(r[k] for k in LAKE.key))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([text(row[n]) for n in names])
    with open(path, "w") as f:
        f.write(buf.getvalue())


def main():
    global LAKE
    url, table, out = sys.argv[1:4]
    LAKE = Lake(url, table)
    os.makedirs(out, exist_ok=True)
    readers = {
        "duckdb_manifest": duckdb_manifest,
        "duckdb_glob": duckdb_glob,
        "pyarrow_manifest": pyarrow_manifest,
        "pyarrow_glob": pyarrow_glob,
        "polars_manifest": polars_manifest,
        "polars_glob": polars_glob,
    }
    for name, read in readers.items():
        write_csv(read(), os.path.join(out, name + ".csv"))
    with open(os.path.join(out, "hive_clash.txt"), "w") as f:
        for name, describe in [("duckdb", duckdb_hive), ("pyarrow", pyarrow_hive), ("polars", polars_hive)]:
            f.write(f"{name}: {describe()}\n")


LAKE = None

if __name__ == "__main__":
    main()
