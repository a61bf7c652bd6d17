#!/usr/bin/env python3
"""Merges the row files of scripts/bench into target/bench/results.json and prints the table
(Markdown, as in README's Performance section)."""

import argparse
import datetime
import json
import os
import platform
import subprocess


def fmt(x, units):
    if x is None:
        return "–"
    if units == "ms":
        return f"{x:.2f} ms" if x < 10 else f"{x:.0f} ms"
    if units == "s":
        return f"{x:.2f} s" if abs(x) < 10 else f"{x:.0f} s"
    if units == "calls":
        return f"{x:.0f}"
    if units == "items":
        return f"{x:.0f}"
    return f"{x:.1f} {units}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="scripts/bench")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("parts", nargs="+")
    a = ap.parse_args()
    rows = []
    missing = []
    for p in a.parts:
        try:
            with open(p) as f:
                rows.extend(json.load(f))
        except (OSError, ValueError):
            missing.append(os.path.basename(p))
    rows.sort(key=lambda r: int(r["title"].split(".")[0]) if r["title"][0].isdigit() else 99)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    run = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": a.command, "quick": a.quick, "commit": commit,
           "cpus": os.cpu_count(), "kernel": platform.release(), "missing_parts": missing,
           "ratio": "figure / baseline (below 1: slurm-one needs less)"}
    with open(a.out, "w") as f:
        json.dump({"run": run, "rows": rows}, f, indent=2)
        f.write("\n")

    print()
    print(f"`{a.command}` on {run['date'][:10]}, {run['cpus']} CPUs, commit {commit}"
          + (" (quick)" if a.quick else ""))
    print()
    print("| row | slurm-one | baseline | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = "–" if r["ratio"] is None else f"{r['ratio']:.3g}"
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        target = (r["target"] or "").replace("<=", "≤")
        floor = (r.get("params") or {}).get("floor_ratio")
        if target and floor is not None:
            # The best any client could reach against this baseline (see the row's params).
            target += f" (floor {floor:.3g})"
        print(f"| {r['title']} | {fmt(r['figure'], r['units'])} | {fmt(r['baseline'], r['units'])} "
              f"| {ratio} | {target} | {met} |")
    if missing:
        print(f"\nmissing (that part failed): {', '.join(missing)}")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
