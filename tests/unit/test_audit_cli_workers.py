"""``sovereign audit verify --workers N``: the parallel verifier gives the same summary and the same errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from unit.test_audit_cli import files, fresh  # noqa: F401 - ``files`` is the shared export fixture

from sovereign.cli import main


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_workers_give_the_same_report(
    files: tuple[Path, Path, list[bytes]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    export, key, _ = files
    base = ["audit", "verify", str(export), "--public-key", str(key), "--json"]
    one = _json(fresh(base), capsys)
    two = _json(fresh([*base, "--workers", "2"]), capsys)
    assert one[0] == two[0] == 0
    assert one[1] == two[1] and one[1]["entries"] == 10


def test_workers_give_the_same_error(
    files: tuple[Path, Path, list[bytes]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    export, key, lines = files
    lines[5], lines[6] = lines[6], lines[5]
    export.write_bytes(b"".join(lines))
    base = ["audit", "verify", str(export), "--public-key", str(key), "--json"]
    one = _json(base, capsys)
    two = _json([*base, "--workers", "2"], capsys)
    assert one[0] == two[0] == 1
    assert one[1]["error"] == two[1]["error"]
    assert two[1]["error"]["code"].startswith("AUDIT_")  # type: ignore[index]


def test_a_negative_worker_count_is_refused(files: tuple[Path, Path, list[bytes]]) -> None:  # noqa: F811
    export, key, _ = files
    with pytest.raises(SystemExit) as info:
        main(["audit", "verify", str(export), "--public-key", str(key), "--workers", "-1"])
    assert info.value.code == 2
