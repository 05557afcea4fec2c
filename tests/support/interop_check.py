#!/usr/bin/env python3
"""Reads a sluice lake table the way the README tells analysts to — as a Delta
table with DuckDB, pyarrow (through the `deltalake` package) and polars, and as a
plain Parquet glob with Hive partitioning on — and prints each reader's rows as
CSV in the format of `sluice query --format csv`, so that tests/interop.rs can
compare them byte for byte.

    interop_check.py LAKE TABLE OUT_DIR

LAKE is a local folder or `s3://bucket/prefix` (the S3 server and keys come from the
AWS_* variables, as for sluice). For each reader it writes OUT_DIR/<reader>.csv:
every column of the table's files, then `<partition column>_day`, ordered by the
table's key.

- `*_delta`: the table's Delta log says which files are live, exactly what
  `sluice query` reads (files of a run that died before its commit are never
  listed);
- `*_glob`: every `*.parquet` under the table folder (but its `_delta_log`), with
  Hive partitioning on: the folders are named `<column>_day=YYYY-MM-DD`, so the
  readers add the day as a date column beside the file's own timestamp column.
  A glob also reads the files of a run that died before its commit.
"""

import csv
import datetime as dt
import decimal
import io
import json
import os
import re
import sys

import deltalake
import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

LOG_VERSION = re.compile(r"(\d{20})\.json$")


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
    """Where the table is, for each tool, and what sluice says about it."""

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
            self.url = "s3://" + self.root  # for DuckDB, deltalake and polars
            self.storage_options = {
                "AWS_ENDPOINT_URL": s3["endpoint"],
                "AWS_ACCESS_KEY_ID": s3["key"],
                "AWS_SECRET_ACCESS_KEY": s3["secret"],
                "AWS_REGION": s3["region"],
                "AWS_ALLOW_HTTP": "true" if s3["http"] else "false",
                "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
            }
        else:
            self.s3 = None
            self.fs = pafs.LocalFileSystem()
            self.root = os.path.abspath(os.path.join(url, table))
            self.url = self.root
            self.storage_options = None
        position = self.position()
        self.partition_column = position["partition_column"]
        self.day_column = self.partition_column + "_day"
        self.key = position["key"]
        self.columns = [c["name"] for c in position["schema"]]

    def position(self):
        """sluice's position: the `sluice` entry of the newest commit that has one."""
        selector = pafs.FileSelector(self.root + "/_delta_log")
        commits = sorted(
            (i.path for i in self.fs.get_file_info(selector) if LOG_VERSION.search(i.path)),
            reverse=True,
        )
        for path in commits:
            with self.fs.open_input_stream(path) as f:
                for line in f.read().decode().splitlines():
                    info = json.loads(line).get("commitInfo") or {}
                    if "sluice" in info:
                        return info["sluice"]
        raise SystemExit(f"no sluice commit in {self.root}/_delta_log")

    def delta(self):
        return deltalake.DeltaTable(self.url, storage_options=self.storage_options)


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


def duckdb_delta():
    con = duckdb_connection()
    import duckdb_extension_delta

    ext = os.path.join(
        os.path.dirname(duckdb_extension_delta.__file__),
        "extensions",
        "v" + duckdb.__version__,
        "delta.duckdb_extension",
    )
    con.execute(f"LOAD '{ext}'")
    return con.execute(f"SELECT * FROM delta_scan('{LAKE.url}')").to_arrow_table()


def data_files():
    """Every Parquet file under the table folder but its Delta log (listed: on S3
    the folder itself is not an object)."""
    selector = pafs.FileSelector(LAKE.root, recursive=True)
    return sorted(
        i.path
        for i in LAKE.fs.get_file_info(selector)
        if i.path.endswith(".parquet") and "/_delta_log/" not in i.path
    )


def file_urls():
    prefix = "s3://" if LAKE.s3 else ""
    return [prefix + p for p in data_files()]


def duckdb_glob():
    con = duckdb_connection()
    return con.execute(
        "SELECT * FROM read_parquet(?, hive_partitioning = true, union_by_name = true)",
        [file_urls()],
    ).to_arrow_table()


# -- pyarrow ------------------------------------------------------------------

def pyarrow_delta():
    return LAKE.delta().to_pyarrow_table()


def pyarrow_glob():
    partitioning = ds.partitioning(
        pa.schema([(LAKE.day_column, pa.date32())]), flavor="hive"
    )
    dataset = ds.dataset(
        data_files(),
        filesystem=LAKE.fs,
        format="parquet",
        partitioning=partitioning,
        partition_base_dir=LAKE.root,
    )
    return dataset.to_table()


# -- polars -------------------------------------------------------------------

def polars_delta():
    return pl.read_delta(LAKE.url, storage_options=LAKE.storage_options).to_arrow()


def polars_glob():
    """On S3 polars' own object store asks for the footer with a suffix range
    longer than a small file, which the test server (s3s-fs 0.14) answers with a
    500 where S3 and MinIO return the whole file; so the bytes come through
    pyarrow's S3FileSystem there, and polars decodes them with the day from the
    folder name. On a real S3 endpoint, `pl.scan_parquet(urls, hive_partitioning=True,
    storage_options=...)` reads the same files directly."""
    if LAKE.s3:
        frames = []
        for path in data_files():
            with LAKE.fs.open_input_file(path) as f:
                frame = pl.read_parquet(f, hive_partitioning=False)
            day = re.search(r"_day=(\d{4}-\d{2}-\d{2})/", path).group(1)
            frames.append(
                frame.with_columns(pl.lit(dt.date.fromisoformat(day)).alias(LAKE.day_column))
            )
        return pl.concat(frames, how="diagonal_relaxed").to_arrow()
    return pl.scan_parquet(
        data_files(), hive_partitioning=True, hive_schema={LAKE.day_column: pl.Date}
    ).collect().to_arrow()


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
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise SystemExit(f"{path}: the reader gave no column {missing} (it gave {table.column_names})")
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
        "duckdb_delta": duckdb_delta,
        "duckdb_glob": duckdb_glob,
        "pyarrow_delta": pyarrow_delta,
        "pyarrow_glob": pyarrow_glob,
        "polars_delta": polars_delta,
        "polars_glob": polars_glob,
    }
    for name, read in readers.items():
        write_csv(read(), os.path.join(out, name + ".csv"))


LAKE = None

if __name__ == "__main__":
    main()
