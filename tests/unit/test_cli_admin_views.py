"""What ``sovereign admin`` shows people: readable states and groups, the lease expiry with the time left,
names before ids, a held change with the command that applies it (records in, text out)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sovereign.cli import _admin_views as views
from sovereign.client.records import (
    ApprovedChange,
    ChangeState,
    Key,
    KeyChange,
    KeyKind,
    KeyPage,
    KeyState,
    Lease,
    LineageException,
    LineageExceptionChange,
    Node,
    NodePage,
    NodeState,
    PendingChange,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_nodes_list_reads_as_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    page = NodePage(
        nodes=(
            Node(
                node_id="0f3a9c",
                node_name="trainer-1",
                state=NodeState.ATTESTED,
                groups=("trainers", "eval"),
                lease=Lease("l1", NOW, NOW + timedelta(minutes=52)),
            ),
            Node(
                node_id="77b1",
                node_name="trainer-2",
                state=NodeState.PENDING_APPROVAL,
                requested_groups=("trainers",),
            ),
        )
    )
    views.show(page, NOW)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "NODE_ID", "STATE", "GROUPS", "LEASE_EXPIRES"]
    assert lines[1].split()[:4] == ["trainer-1", "0f3a9c", "attested", "trainers,eval"]
    assert "2026-12-03 12:52:00 (in 52 min)" in lines[1]
    assert "pending approval" in lines[2] and lines[2].rstrip().endswith("-")
    assert "NODE_STATE_" not in "\n".join(lines) and "['" not in "\n".join(lines)


def test_keys_list_and_a_held_change(capsys: pytest.CaptureFixture[str]) -> None:
    views.show(KeyPage(keys=(Key("dataset/train", KeyKind.DATASET, KeyState.ENABLED, 2),)), NOW)
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:4] == ["dataset/train", "dataset", "enabled", "2"]
    held = PendingChange(
        change_id="c-42",
        method="DestroyKey",
        summary="destroy key model/main",
        proposed_by="alice",
        expires_at=NOW + timedelta(hours=23),
        state=ChangeState.PENDING,
    )
    views.show(KeyChange(pending_change=held), NOW)
    out = capsys.readouterr().out
    assert "held for a second operator: change c-42 (destroy key model/main)" in out
    assert "proposed by alice" in out and "sovereign admin pending approve c-42" in out


def test_a_policy_the_server_refuses_is_named_by_its_file(tmp_path: Path) -> None:
    import argparse

    from sovereign.cli.admin import _policy_put
    from sovereign.client import OperatorError

    shipped = Path(__file__).resolve().parents[2] / "policies" / "defaults" / "demo.toml"
    file = tmp_path / "site.toml"
    file.write_text(shipped.read_text())

    class Refusing:
        def put_policy(self, toml: str, expected_version: int, *, dry_run: bool = False) -> None:
            raise OperatorError("POLICY_INVALID", "PutPolicy line 3: group 'x' is not defined", "fix it")

    args = argparse.Namespace(file=file, expected_version=1, dry_run=False)
    with pytest.raises(OperatorError) as info:
        _policy_put(Refusing(), args)  # type: ignore[arg-type]
    assert info.value.message == f"{file} line 3: group 'x' is not defined"


def test_a_held_lineage_exception_prints_the_approve_command(capsys: pytest.CaptureFixture[str]) -> None:
    held = PendingChange(
        change_id="c-7",
        method="GrantLineageException",
        summary="lineage exception model/main for inference",
        proposed_by="alice",
        expires_at=NOW + timedelta(hours=23),
        state=ChangeState.PENDING,
    )
    views.show(LineageExceptionChange(pending_change=held), NOW)
    out = capsys.readouterr().out
    assert "held for a second operator: change c-7 (lineage exception model/main for inference)" in out
    assert "sovereign admin pending approve c-7" in out
    applied = ApprovedChange(change=held, lineage_exception=LineageException("model/main", "inference"))
    views.show(applied, NOW)
    out = capsys.readouterr().out
    assert "applied change c-7" in out and "group inference may now read model/main" in out
