"""The soak's report: numbers from the records (operations by outcome code, recovery percentiles per fault
kind, throughput per second), a short Markdown summary and an SVG plot of throughput with faults marked."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

from sovereign.soak.faults import FaultRecord
from sovereign.soak.workload import OpRecord

COLOURS = {
    "serve-kill": "#d62728",
    "serve-abort": "#e377c2",
    "serve-stop": "#ff7f0e",
    "bao-seal": "#9467bd",
    "bao-kill": "#8c564b",
    "disk-full": "#1f77b4",
}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: with few samples p99 is the largest)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def operations(ops: Sequence[OpRecord]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({o.op for o in ops}):
        mine = [o for o in ops if o.op == name]
        refused = Counter(o.code for o in mine if not o.ok)
        out[name] = {
            "attempted": len(mine),
            "succeeded": sum(o.ok for o in mine),
            "refused": dict(sorted(refused.items())),
        }
    return out


def faults_by_kind(faults: Sequence[FaultRecord]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[FaultRecord]] = defaultdict(list)
    for f in faults:
        groups[str(f.kind)].append(f)
    out = {}
    for kind, items in sorted(groups.items()):
        recoveries = [r for r in (f.recovery for f in items) if r is not None]
        outages = [r for r in (f.outage for f in items) if r is not None]
        out[kind] = {
            "injected": len(items),
            "recovered": sum(f.recovered for f in items),
            "recovery_p50_s": percentile(recoveries, 50),
            "recovery_p99_s": percentile(recoveries, 99),
            "outage_p50_s": percentile(outages, 50),
            "outage_p99_s": percentile(outages, 99),
            "ops_failed_during": sum(f.ops_failed for f in items),
            "ops_ok_during": sum(f.ops_ok for f in items),
        }
    return out


def throughput(ops: Sequence[OpRecord], seconds: float) -> list[dict[str, int]]:
    """Successful and failed operations finishing in each second of the run."""
    bins = max(1, math.ceil(seconds))
    ok, failed = [0] * bins, [0] * bins
    for o in ops:
        i = min(bins - 1, max(0, int(o.at + o.latency)))
        (ok if o.ok else failed)[i] += 1
    return [{"t": i, "ok": ok[i], "failed": failed[i]} for i in range(bins)]


def svg(series: Sequence[dict[str, int]], faults: Sequence[FaultRecord], title: str) -> str:
    """A line of successful operations per second, failed ones below it, each fault a shaded span."""
    width, height, left, right, top, bottom = 900, 320, 50, 150, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    seconds = max(1, len(series))
    peak = max([s["ok"] for s in series] + [s["failed"] for s in series] + [1])

    def x(t: float) -> float:
        return left + plot_w * t / seconds

    def y(v: float) -> float:
        return top + plot_h * (1 - v / peak)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="18" font-size="13">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for f in faults:
        end = f.served if f.recovered else (f.healed if f.healed >= 0 else f.at + 1)
        colour = COLOURS.get(str(f.kind), "#777")
        parts.append(
            f'<rect x="{x(f.at):.1f}" y="{top}" width="{max(1.0, x(end) - x(f.at)):.1f}" height="{plot_h}" '
            f'fill="{colour}" fill-opacity="0.25"><title>{escape(str(f.kind))} at {f.at:.1f}s</title></rect>'
        )
    for key, colour, dash in (("ok", "#2ca02c", ""), ("failed", "#000000", ' stroke-dasharray="4 3"')):
        points = " ".join(f"{x(s['t'] + 0.5):.1f},{y(s[key]):.1f}" for s in series)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>')
    for v in (0, peak):
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
    for t in range(0, seconds + 1, max(1, seconds // 10)):
        parts.append(f'<text x="{x(t):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{t}s</text>')
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">seconds into the run</text>'
    )
    legend = [("succeeded ops/s", "#2ca02c"), ("failed ops/s (dashed)", "#000000")]
    legend += [(k, c) for k, c in COLOURS.items() if any(str(f.kind) == k for f in faults)]
    for i, (label, colour) in enumerate(legend):
        ly = top + 10 + 16 * i
        parts.append(f'<rect x="{left + plot_w + 12}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{left + plot_w + 27}" y="{ly + 1}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    inv = results["invariants"]
    lines = [
        "# Soak run",
        "",
        f"Topology {cfg['topology']}, {results['duration_s']:.0f} s (asked {cfg['minutes']} min), seed {cfg['seed']}, "
        f"rate {cfg['rate']} ops/s, faults: {', '.join(cfg['faults']) or 'none'}.",
        "",
        f"**Invariant violations: {inv['violations_total']}** "
        f"({inv['checker']['grants']} grants in {inv['checker']['entries']} ledger entries; "
        f"{inv['checker']['received']} keys received by clients; {inv['checker']['matched_decrypts']} of "
        f"{inv['checker']['decrypts']} OpenBao KEK decrypts matched, "
        f"{len(inv['checker']['orphan_decrypts'])} orphaned inside fault windows).",
        "",
    ]
    for v in inv["violations"][:20]:
        lines.append(f"- `{v['kind']}` {v['detail']}")
    lines += [
        "",
        "## Faults",
        "",
        "| kind | injected | recovered | recovery p50 s | recovery p99 s | outage p99 s | ops failed / ok during |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for kind, f in results["faults_by_kind"].items():
        lines.append(
            f"| {kind} | {f['injected']} | {f['recovered']} | {f['recovery_p50_s']} | {f['recovery_p99_s']} | "
            f"{f['outage_p99_s']} | {f['ops_failed_during']} / {f['ops_ok_during']} |"
        )
    lines += [
        "",
        "Recovery: from the heal action (restart, SIGCONT, unseal, space freed, route restored, clock reset) to the first successful",
        "",
    ]
    lines[-2] += (
        " release by the probe node of the replica the fault hit; outage: from injection to that release."
    )
    lines += [
        "## Operations",
        "",
        "| operation | attempted | succeeded | refused (code: count) |",
        "|---|---|---|---|",
    ]
    for name, o in results["operations"].items():
        refused = ", ".join(f"{c}: {n}" for c, n in o["refused"].items()) or "-"
        lines.append(f"| {name} | {o['attempted']} | {o['succeeded']} | {refused} |")
    lines += [
        "",
        "## Processes",
        "",
        "| process | RSS MiB first / last / max (bound) | RSS growth MiB | fds first / last / max (bound) |",
    ]
    lines.append("|---|---|---|---|")
    for name, p in results["processes"].items():
        if p.get("samples"):
            lines.append(
                f"| {name} | {p['rss_mib_first']} / {p['rss_mib_last']} / {p['rss_mib_max']} ({p['bound_rss_mib']}) | "
                f"{p['rss_mib_growth']} | "
                f"{p['fds_first']} / {p['fds_last']} / {p['fds_max']} ({p['bound_fds']}) |"
            )
    scan = results["key_scan"]
    lines += [
        "",
        f"Key-material scan: {scan['files']} files, {scan['bytes']} bytes, {scan['keys']} distinct released keys, "
        f"{len(scan['hits'])} hits.",
    ]
    cores = results.get("core_dumps")
    if cores is not None:
        lines.append(
            f"Core dumps scanned: {cores['core_files']} (core_pattern {cores['core_pattern']!r}: {cores['reason']})."
        )
    nodes = results.get("nodes")
    if nodes is not None:
        lines.append(
            f"Nodes made: {nodes['made']}; with {nodes['gpus_per_gpu_node']} simulated GPU(s) attested: "
            f"{nodes['gpu_nodes_attested']}, keys they received: {nodes['gpu_node_releases']}."
        )
    where = f"on a {cfg['db_fs_mib']} MiB tmpfs (SQLite)" if cfg["topology"] == "single" else "(PostgreSQL)"
    lines.append(f"Ledger database at the end: {results['db_bytes']} bytes {where}.")
    checker = inv["checker"]
    orphans = ", ".join(f"{k}: {n}" for k, n in checker.get("orphans_by_window", {}).items()) or "none"
    denials = checker.get("decrypt_denials", {})
    explained = ", ".join(f"{k}: {n}" for k, n in sorted(denials.items())) or "none"
    lines.append(f"Decrypts explained by a release.deny naming them, by code: {explained}.")
    lines.append(
        f"Orphan decrypts by fault window: {orphans}. Ledger entries whose time runs back (clock steps, "
        f"replicas' clocks apart; judged by sequence): {checker.get('time_regressions', 0)}, "
        f"largest step back {checker.get('max_time_regression_s', 0.0)} s."
    )
    if results.get("unexpected_exits"):
        lines.append(f"Unexpected serve exits (restarted): {len(results['unexpected_exits'])}.")
    lines += ["", "![throughput](throughput.svg)", ""]
    return "\n".join(lines)
