"""``./dev bench [--quick|--tiny] [--only NAME]``: run every ``bench/bench_*.py`` and write one report.

Each script prints one JSON line per row: ``work``, ``ours``, ``baseline`` (measured in the same run),
``unit``, ``ratio``, ``target`` and ``met`` (and optionally ``note`` and more figures). This runner collects
them into ``bench/results.json`` and a table in ``bench/results.md``; rows that miss their target say so
plainly. Rows with a ``concurrency`` and latencies are also drawn into ``bench/latency.png`` when
matplotlib is installed (it is in ``.venv-bench``).

``--tiny`` is for the smoke test: every script gets ``--quick``, ``SOVEREIGN_BENCH_TINY=1`` (scripts that
know it shrink further) and the extra flags in ``TINY_ARGS``; nothing is written, figures mean nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KEYS = ("work", "ours", "baseline", "ratio", "target", "met")
TINY_ENV = "SOVEREIGN_BENCH_TINY"
# Flags that scripts already accept and that make them smallest (for scripts that ignore TINY_ENV).
TINY_ARGS = {"bench_release": ["--threads", "2", "--seconds", "0.3"]}


def scripts(only: str | None) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    if only:
        found = [p for p in found if only in p.stem]
    return found


def run(script: Path, quick: bool, tiny: bool = False) -> tuple[list[dict[str, Any]], str]:
    cmd = [sys.executable, "-m", f"bench.{script.stem}", *(["--quick"] if quick or tiny else [])]
    env = dict(os.environ)
    if tiny:
        cmd += TINY_ARGS.get(script.stem, [])
        env[TINY_ENV] = "1"
    proc = subprocess.run(
        cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, check=False, timeout=3600
    )
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
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def render(rows: list[dict[str, Any]], failures: dict[str, str]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Every baseline is measured in the same run, on the same machine.",
        "",
        "| work | ours | baseline | unit | ratio | target | met | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "yes" if r.get("met") else "**NO**"
        lines.append(
            f"| {r.get('work')} | {fmt(r.get('ours'))} | {fmt(r.get('baseline'))} | {r.get('unit', '')} "
            f"| {fmt(r.get('ratio'))} | {fmt(r.get('target'))} | {met} | {r.get('note', '')} |"
        )
    for name, err in failures.items():
        lines.append(f"| {name} | — | — | — | — | — | **FAILED** | {err} |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict[str, Any]], failures: dict[str, str]) -> str:
    text = render(rows, failures)
    (HERE / "results.md").write_text(text)
    ordered = [{k: r.get(k) for k in KEYS} | {k: v for k, v in r.items() if k not in KEYS} for r in rows]
    (HERE / "results.json").write_text(json.dumps(ordered, indent=2) + "\n")
    return text


def plot(rows: list[dict[str, Any]], path: Path) -> str:
    """Release latency and throughput against concurrency; returns what happened, for the log."""
    points = sorted((r for r in rows if "concurrency" in r and "p50_ms" in r), key=lambda r: r["concurrency"])
    if not points:
        return "no concurrency rows, no latency plot"
    try:
        matplotlib = importlib.import_module("matplotlib")  # optional: only .venv-bench has it
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "matplotlib not installed (it is in .venv-bench), no latency plot"
    x = [r["concurrency"] for r in points]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 4))
    lat.plot(x, [r["p50_ms"] for r in points], "o-", label="p50")
    lat.plot(x, [r["p99_ms"] for r in points], "s-", label="p99")
    lat.set(xscale="log", xlabel="concurrent nodes", ylabel="release latency (ms)", title="Release latency")
    lat.legend()
    thr.plot(x, [r["ours"] for r in points], "o-", label="key release (ours)")
    thr.plot(x, [r["baseline"] for r in points], "s--", label="bare hvac transit decrypt")
    thr.set(xscale="log", xlabel="concurrent nodes", ylabel="requests/s", title="Throughput")
    thr.legend()
    for ax in (lat, thr):
        ax.set_xticks(x, [str(v) for v in x])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"wrote {path.relative_to(HERE.parent)}"


def main() -> int:
    parser = argparse.ArgumentParser(description="run the benchmarks and write bench/results.{md,json}")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="small inputs; the whole run takes under two minutes"
    )
    size.add_argument(
        "--tiny", action="store_true", help="smoke run: smallest inputs, prints only, writes nothing"
    )
    parser.add_argument("--only", metavar="NAME", help="only scripts whose name contains NAME")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for script in scripts(args.only):
        start = time.monotonic()
        print(f"[bench] {script.stem} ...", file=sys.stderr, flush=True)
        got, error = run(script, args.quick, args.tiny)
        rows.extend(got)
        if error:
            failures[script.stem] = error
        print(f"[bench] {script.stem}: {len(got)} row(s) in {time.monotonic() - start:.0f}s", file=sys.stderr)
    if args.tiny:
        print(render(rows, failures))
    else:
        print(write_report(rows, failures))
        print(f"[bench] {plot(rows, HERE / 'latency.png')}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
