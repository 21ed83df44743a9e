#!/usr/bin/env python3
"""Prints the pipeline benchmark's tables from the files run.sh leaves in --work:
the measurements (MB/s, resources/s, peak RSS, CPU%), the issue 8 ratios against their
targets, and the per-view row-count check of DuckDB's SQL against fhirhose's tables."""
import argparse
import glob
import json
import os
import re
import sys

import duckdb


def gnu_time(path):
    """Wall seconds, peak RSS (MB) and CPU% from `/usr/bin/time -v` output."""
    text = open(path).read()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    cpu = re.search(r"Percent of CPU this job got: (\d+)%", text)
    # /usr/bin/time has 10 ms resolution: never divide by a zero time.
    return max(secs, 0.01), rss_kb / 1024, int(cpu.group(1)) if cpu else 0


def last_json(path):
    for line in reversed(open(path).read().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"no JSON result in {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--scale", type=int)
    ap.add_argument("--note", default="")
    ap.add_argument("--cells", action="store_true",
                    help="also compare every column of every view, cell by cell (as text)")
    a = ap.parse_args()
    w = lambda n: os.path.join(a.work, n)

    ceiling = last_json(w("parse_tape.out"))
    mb, resources = ceiling["bytes"] / 1e6, ceiling["lines"]
    norm_summary = json.load(open(w("normalize.summary.json")))
    full_summary = json.load(open(w("full.summary.json")))

    runs = [
        ("parse ceiling: framer + simd-json tape", "parse_tape"),
        ("  serde_json::Value, same lines", "parse_serde_value"),
        ("  serde_json IgnoredAny, same lines", "parse_serde_ignored"),
        ("fhirhose normalize (--views-only: views → Parquet)", "normalize"),
        ("fhirhose ingest, no broker (raw + resources + views)", "ingest"),
        ("DuckDB: 25 views → Parquet (2 threads)", "duckdb"),
        ("bare rdkafka producer (broker ceiling)", "bare_producer"),
        ("fhirhose full (raw + views + Kafka)", "full"),
    ]
    t = {}
    print(f"\ncorpus: {a.corpus}: {mb:,.0f} MB, {resources:,} resources ({mb * 1e6 / max(resources, 1):,.0f} B each)")
    if a.note:
        print(a.note)
    print()
    print(f"| {'run':52} | {'s':>7} | {'MB/s':>7} | {'resources/s':>11} | {'peak RSS MB':>11} | {'CPU%':>5} |")
    print(f"|{'-' * 54}|{'-' * 8}:|{'-' * 8}:|{'-' * 12}:|{'-' * 12}:|{'-' * 6}:|")
    for label, name in runs:
        secs, rss, cpu = gnu_time(w(name + ".time"))
        t[name] = (secs, rss, cpu)
        print(f"| {label:52} | {secs:7.2f} | {mb / secs:7.1f} | {resources / secs:11,.0f} | {rss:11.0f} | {cpu:5} |")

    thr = {k: mb / v[0] for k, v in t.items()}
    checks = [
        ("normalize / DuckDB", thr["normalize"] / thr["duckdb"], 3.0, "x"),
        ("normalize / parse ceiling", thr["normalize"] / thr["parse_tape"], 0.35, "%"),
        ("full / DuckDB", thr["full"] / thr["duckdb"], 1.5, "x"),
        ("full / bare producer", thr["full"] / thr["bare_producer"], 0.90, "%"),
        ("parse simd tape / serde_json Value", thr["parse_tape"] / thr["parse_serde_value"], 2.0, "x"),
        ("parse simd tape / serde_json IgnoredAny", thr["parse_tape"] / thr["parse_serde_ignored"], None, "x"),
    ]
    print()
    print(f"| {'ratio':40} | {'measured':>9} | {'target':>7} | {'':4} |")
    print(f"|{'-' * 42}|{'-' * 10}:|{'-' * 8}:|{'-' * 6}|")
    fmt = lambda v, u: f"{v * 100:.0f}%" if u == "%" else f"{v:.2f}×"
    for label, v, target, unit in checks:
        ok = "" if target is None else ("ok" if v >= target else "MISS")
        tg = "" if target is None else "≥ " + fmt(target, unit)
        print(f"| {label:40} | {fmt(v, unit):>9} | {tg:>7} | {ok:4} |")
    print(f"| {'ingest (no broker) / DuckDB':40} | {fmt(thr['ingest'] / thr['duckdb'], 'x'):>9} | {'':>7} | {'':4} |")
    for name in ("normalize", "ingest", "full"):
        rss = t[name][1]
        print(f"| {'peak RSS ' + name:40} | {rss:7.0f}MB | ≤ 256MB | {'ok' if rss <= 256 else 'MISS':4} |")
    print("(the full pipeline's target is met by either ratio: full/DuckDB or full/bare producer)")

    if a.scale:
        big = f"normalize_x{a.scale}"
        secs, rss, cpu = gnu_time(w(big + ".time"))
        s1, r1, _ = t["normalize"]
        ratio = secs / s1
        target = 1.05 * a.scale
        print(f"\nlinearity: normalize 1× {s1:.2f} s, peak RSS {r1:.0f} MB; {a.scale}× {secs:.2f} s, "
              f"peak RSS {rss:.0f} MB; time ratio {ratio:.2f} (target ≤ {target:.1f}: {'ok' if ratio <= target else 'MISS'})")

    # Row counts per view: DuckDB's SQL against fhirhose's tables.
    duck = json.load(open(w("duckdb.counts.json")))
    con = duckdb.connect()
    print()
    print(f"| {'view':28} | {'fhirhose rows':>13} | {'DuckDB rows':>11} | {'':5} |")
    print(f"|{'-' * 30}|{'-' * 14}:|{'-' * 12}:|{'-' * 7}|")
    bad = 0
    for view in sorted(duck):
        files = glob.glob(w(f"lake-normalize/tables/{view}/*/*.parquet"))
        ours = con.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchone()[0] if files else 0
        same = ours == duck[view]
        bad += not same
        print(f"| {view:28} | {ours:13,} | {duck[view]:11,} | {'same' if same else 'DIFF':5} |")
    print(f"row counts: {len(duck) - bad} of {len(duck)} views equal")
    if a.cells:
        bad += cell_check(con, w)
    for name, summ in (("normalize", norm_summary), ("full", full_summary)):
        events = sum(summ.get("events_by_topic", {}).values())
        print(f"fhirhose {name}: status {summ['status']}, {summ['files_done']} files, "
              f"{summ['resources']:,} resources, {summ['dead_letters']} dead letters, "
              f"{summ['view_errors']} view errors, {events:,} events acknowledged")
        if summ["status"] != "ok" or summ["resources"] != resources:
            print(f"  MISMATCH: {summ['resources']:,} resources landed, {resources:,} lines parsed")
            bad += 1
    bare = last_json(w("bare_producer.out"))
    if bare["acked"] != bare["messages"] or bare["failed"]:
        print(f"  MISMATCH: bare producer: {bare['acked']:,} of {bare['messages']:,} acknowledged, {bare['failed']} failed")
        bad += 1
    full_events = sum(full_summary.get("events_by_topic", {}).values())
    if full_events < full_summary["resources"]:
        print(f"  MISMATCH: full pipeline acknowledged {full_events:,} events for {full_summary['resources']:,} resources")
        bad += 1
    return 1 if bad else 0


def decimal_columns(view):
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "schemas", "views", view + ".json")) as f:
        vd = json.load(f)
    out = set()

    def walk(sel):
        for c in sel.get("column", []):
            if c.get("type") == "decimal":
                out.add(c["name"])
        for s in sel.get("select", []) + sel.get("unionAll", []):
            walk(s)

    for s in vd["select"]:
        walk(s)
    return out


def cell_check(con, w):
    """Per view and column: rows of DuckDB's output (as text) missing from fhirhose's."""
    bad = 0
    for f in sorted(glob.glob(w("duckdb/*.parquet"))):
        view = os.path.basename(f)[: -len(".parquet")]
        ours = glob.glob(w(f"lake-normalize/tables/{view}/*/*.parquet"))
        if not ours:
            continue
        cols = [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [f]).fetchall()]
        decimals = decimal_columns(view)
        diffs = []
        for c in cols:
            # DuckDB's JSON reader cannot keep a decimal's source text (`0.70` → `0.7`) while
            # fhirhose does: decimals are compared as numbers.
            cast = "DOUBLE" if c in decimals else "VARCHAR"
            q = (f'SELECT count(*) FROM (SELECT TRY_CAST("{c}" AS {cast}) FROM read_parquet(?) '
                 f'EXCEPT ALL SELECT TRY_CAST("{c}" AS {cast}) FROM read_parquet(?))')
            n = con.execute(q, [f, ours]).fetchone()[0]
            if n:
                diffs.append(f"{c} ({n})")
        bad += bool(diffs)
        note = f" (decimals compared as numbers: {', '.join(sorted(decimals))})" if decimals and not diffs else ""
        print(f"cells {view:28} {'same' + note if not diffs else 'DIFF: ' + ', '.join(diffs)}")
    return bad


if __name__ == "__main__":
    sys.exit(main())
