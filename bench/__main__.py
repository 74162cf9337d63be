"""``./dev bench [--quick] [--only NAME]``: run every ``bench/bench_*.py`` and write one report.

Each script prints one JSON line per row: ``work``, ``ours``, ``baseline`` (measured in the same run),
``unit``, ``ratio``, ``target`` and ``met``. This runner collects them into ``bench/results.json`` and a
table in ``bench/results.md``; rows that miss their target say so plainly.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KEYS = ("work", "ours", "baseline", "ratio", "target", "met")


def scripts(only: str | None) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    if only:
        found = [p for p in found if only in p.stem]
    return found


def run(script: Path, quick: bool) -> tuple[list[dict[str, Any]], str]:
    cmd = [sys.executable, "-m", f"bench.{script.stem}", *(["--quick"] if quick else [])]
    proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, check=False, timeout=3600)
    rows = []
    for raw in proc.stdout.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            row = json.loads(line)
            row.setdefault("script", script.stem)
            rows.append(row)
    error = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return rows, error


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def write_report(rows: list[dict[str, Any]], failures: dict[str, str]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Every baseline is measured in the same run, on the same machine.",
        "",
        "| work | ours | baseline | unit | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "yes" if r.get("met") else "**NO**"
        lines.append(
            f"| {r.get('work')} | {fmt(r.get('ours'))} | {fmt(r.get('baseline'))} | {r.get('unit', '')} "
            f"| {fmt(r.get('ratio'))} | {fmt(r.get('target'))} | {met} |"
        )
    for name, err in failures.items():
        lines.append(f"| {name} | — | — | — | — | — | **FAILED**: {err} |")
    text = "\n".join(lines) + "\n"
    (HERE / "results.md").write_text(text)
    (HERE / "results.json").write_text(
        json.dumps([{k: r.get(k) for k in KEYS} | {"unit": r.get("unit")} for r in rows], indent=2) + "\n"
    )
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description="run the benchmarks and write bench/results.{md,json}")
    parser.add_argument("--quick", action="store_true", help="small inputs; the whole run takes minutes")
    parser.add_argument("--only", metavar="NAME", help="only scripts whose name contains NAME")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for script in scripts(args.only):
        start = time.monotonic()
        print(f"[bench] {script.stem} ...", file=sys.stderr, flush=True)
        got, error = run(script, args.quick)
        rows.extend(got)
        if error:
            failures[script.stem] = error
        print(f"[bench] {script.stem}: {len(got)} row(s) in {time.monotonic() - start:.0f}s", file=sys.stderr)
    print(write_report(rows, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
