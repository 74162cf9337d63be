"""Smoke test of the benchmark scripts: each runs in its tiniest mode and prints well-formed JSON rows.

Figures are never checked (nothing here asserts on speed). The scripts run in parallel through the
runner's own ``run(..., tiny=True)``; peers missing from the test environment (dcap-qvl, tink) must show
up as rows with our figure, ``"baseline": null``, ``"met": false`` and a note saying why.
"""

from __future__ import annotations

import importlib.util
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("work", "ours", "baseline", "ratio", "target", "met")


def _runner() -> ModuleType:
    # bench/ is not an installed package; load the runner from its file.
    spec = importlib.util.spec_from_file_location("bench_runner", ROOT / "bench" / "__main__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUNNER = _runner()
SCRIPTS = {p.stem: p for p in RUNNER.scripts(None)}


@pytest.fixture(scope="module")
def outputs() -> dict[str, tuple[list[dict[str, Any]], str]]:
    # Bounded: a dozen scripts each starting OpenBao and serve at once on a 2-core machine would time out
    # their own start-up waits (which is not what this test checks).
    with ThreadPoolExecutor(min(len(SCRIPTS), 6)) as pool:
        results = pool.map(lambda p: RUNNER.run(p, quick=True, tiny=True), SCRIPTS.values())
        return dict(zip(SCRIPTS, results, strict=True))


def test_every_script_is_covered() -> None:
    assert SCRIPTS, "no bench/bench_*.py scripts found"
    assert {"bench_peer_tdx", "bench_peer_snp", "bench_peer_stream", "bench_scaling_verify"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_prints_valid_rows(outputs: dict[str, tuple[list[dict[str, Any]], str]], name: str) -> None:
    rows, error = outputs[name]
    assert not error, f"{name} failed: {error}"
    assert rows, f"{name} printed no JSON row"
    for row in rows:
        assert json.loads(json.dumps(row)) == row
        missing = [k for k in REQUIRED if k not in row]
        assert not missing, f"{name} row {row.get('work')!r} lacks {missing}"
        assert isinstance(row["work"], str) and row["work"]
        assert isinstance(row["ours"], int | float) and math.isfinite(row["ours"])
        assert isinstance(row["met"], bool)
        if row["baseline"] is None:
            # a missing peer: never a pass, and the row says why
            assert row["met"] is False and row["ratio"] is None
            assert "no baseline measured" in row.get("note", "")
        else:
            assert isinstance(row["baseline"], int | float) and row["baseline"] > 0


def test_report_says_plainly_which_rows_miss() -> None:
    rows = [
        {"work": "a", "ours": 2.0, "baseline": 1.0, "unit": "x/s", "ratio": 2.0, "target": 1.0, "met": True},
        {
            "work": "b",
            "ours": 1.0,
            "baseline": None,
            "ratio": None,
            "target": 2.0,
            "met": False,
            "note": "why",
        },
    ]
    text = RUNNER.render(rows, {"bench_broken": "boom"})
    lines = text.splitlines()
    assert next(x for x in lines if x.startswith("| a ")).count("| yes |") == 1
    b = next(x for x in lines if x.startswith("| b "))
    assert "**NO**" in b and "why" in b
    assert "**FAILED**" in next(x for x in lines if x.startswith("| bench_broken "))


def test_plot_without_concurrency_rows_draws_nothing(tmp_path: Path) -> None:
    assert "no concurrency rows" in RUNNER.plot([{"work": "a", "ours": 1.0}], tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def _registry_scale(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is run from the repository root, not installed
    return importlib.import_module("bench.bench_registry_scale")


REGISTRY_CURVE = [
    {"nodes": 100, "rss_mib": 120.0, "policy_s": 0.1, "policy_cpu_s": 0.05},
    {"nodes": 5_000, "rss_mib": 160.0, "policy_s": 0.6, "policy_cpu_s": 0.4},
    {"nodes": 10_000, "rss_mib": 200.0, "policy_s": 1.2, "policy_cpu_s": 0.8},
]


def test_registry_growth_plot_is_skipped_cleanly_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench_registry_scale = _registry_scale(monkeypatch)
    real = importlib.import_module

    def without_matplotlib(name: str, package: str | None = None) -> ModuleType:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(bench_registry_scale.importlib, "import_module", without_matplotlib)
    said = bench_registry_scale.plot_growth(REGISTRY_CURVE, tmp_path / "registry_growth.png")
    assert "matplotlib not installed" in said
    assert not (tmp_path / "registry_growth.png").exists()


def test_registry_growth_plot_draws_memory_against_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")  # .venv-bench has it
    bench_registry_scale = _registry_scale(monkeypatch)

    path = tmp_path / "registry_growth.png"
    assert bench_registry_scale.plot_growth(REGISTRY_CURVE, path) == "wrote registry_growth.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
