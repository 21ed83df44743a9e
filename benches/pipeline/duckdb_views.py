#!/usr/bin/env python3
"""DuckDB side of the pipeline benchmark: every canonical view as hand-written SQL.

    python3 duckdb_views.py --input DIR --out DIR [--threads 2] [--counts FILE.json]

Finds the NDJSON files under DIR (`.ndjson`, `.ndjson.gz`), groups them by the
`resourceType` of their first line, and for each `duckdb/<view>.sql` runs
`duckdb/_prelude.sql` + the view's `COPY (SELECT ...) TO '<out>/<view>.parquet'` (zstd) on
one connection limited to `--threads` threads. Prints one line per view (rows, seconds)
and writes the row counts as JSON for run.sh's check against fhirhose.
"""
import argparse
import gzip
import json
import os
import re
import sys
import time

import duckdb

HERE = os.path.dirname(os.path.abspath(__file__))
SQL_DIR = os.path.join(HERE, "duckdb")
VIEWS_DIR = os.path.join(HERE, "..", "..", "schemas", "views")


def first_type(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for line in f:
            if line.strip():
                m = re.search(rb'"resourceType"\s*:\s*"([A-Za-z]+)"', line)
                return m.group(1).decode() if m else None
    return None


def input_files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in sorted(names):
            if n.endswith(".ndjson") or n.endswith(".ndjson.gz"):
                p = os.path.join(dirpath, n)
                t = first_type(p)
                if t:
                    out.setdefault(t, []).append(p)
    return out


def sql_list(paths):
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--counts")
    args = ap.parse_args()

    files = input_files(args.input)
    os.makedirs(args.out, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    con.execute("SET preserve_insertion_order = false")
    con.execute(open(os.path.join(SQL_DIR, "_prelude.sql")).read())

    counts = {}
    total = 0.0
    for name in sorted(os.listdir(SQL_DIR)):
        if not name.endswith(".sql") or name.startswith("_"):
            continue
        view = name[:-4]
        with open(os.path.join(VIEWS_DIR, view + ".json")) as f:
            resource = json.load(f)["resource"]
        paths = files.get(resource)
        if not paths:
            counts[view] = 0
            print(f"{view:28} {0:>10} rows  (no {resource} input)")
            continue
        out = os.path.join(args.out, view + ".parquet")
        sql = open(os.path.join(SQL_DIR, name)).read()
        sql = sql.replace("__FILES__", sql_list(paths)).replace("__OUT__", "'" + out + "'")
        t0 = time.perf_counter()
        res = con.execute(sql).fetchall()
        dt = time.perf_counter() - t0
        total += dt
        rows = int(res[0][0]) if res and res[0] else 0
        counts[view] = rows
        print(f"{view:28} {rows:>10} rows  {dt:7.2f} s", flush=True)
    print(f"{'all views':28} {sum(counts.values()):>10} rows  {total:7.2f} s")
    if args.counts:
        with open(args.counts, "w") as f:
            json.dump(counts, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
