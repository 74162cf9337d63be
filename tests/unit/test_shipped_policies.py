"""The OpenBao ACL policies shipped in deploy/openbao/ are exactly the ones the code writes, each can be
printed with ``sovereign kms policy``, and every ``deploy/openbao/*.hcl`` the docs name exists. (That
OpenBao parses them: tests/integration/test_openbao_bootstrap.py reads them back from a real server.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kms.openbao.bootstrap import POLICY_HCL
from kms.openbao.data_owner import OWNER_POLICY_HCL
from sovereign.cli import main

ROOT = Path(__file__).resolve().parents[2]
OPENBAO = ROOT / "deploy" / "openbao"
POLICIES = {"sovereign-control-plane.hcl": (POLICY_HCL, []), "sovereign-data-owner.hcl": (OWNER_POLICY_HCL, ["--data-owner"])}  # fmt: skip
NAMED = re.compile(r"deploy/openbao/[\w./-]+\.hcl")


def test_the_shipped_policies_are_the_ones_the_code_writes(capsys: pytest.CaptureFixture[str]) -> None:
    # a policy file has no listener: every other .hcl is a server configuration (test_openbao_hcl)
    shipped = {p.name for p in OPENBAO.rglob("*.hcl") if 'listener "tcp"' not in p.read_text()}
    assert shipped == set(POLICIES)
    for name, (text, flags) in POLICIES.items():
        assert (OPENBAO / name).read_text() == text, f"regenerate: sovereign kms policy {' '.join(flags)}"
        capsys.readouterr()
        assert main(["kms", "policy", *flags]) == 0
        assert capsys.readouterr().out == text


def test_every_policy_file_the_docs_name_is_shipped_and_each_policy_is_documented() -> None:
    docs = [ROOT / "README.md", OPENBAO / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {m for doc in docs for m in NAMED.findall(doc.read_text())}
    assert named, "the docs name no deploy/openbao file"
    for path in named:
        assert (ROOT / path).is_file(), f"docs name {path}, which is not shipped"
    for name in POLICIES:
        assert f"deploy/openbao/{name}" in named, f"no doc names deploy/openbao/{name}"
