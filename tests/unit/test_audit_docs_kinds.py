"""docs/audit.md lists every audit entry kind: its "Entry kinds" table and ``Kind`` hold the same names."""

from __future__ import annotations

import re
from pathlib import Path

from kms.audit.entry import Kind

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def documented_kinds(text: str) -> list[str]:
    section = text.split("### Entry kinds", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    return re.findall(r"^\| `([a-z.]+)` \|", section, flags=re.MULTILINE)


def test_the_docs_list_every_entry_kind_and_no_other() -> None:
    documented = documented_kinds(DOC.read_text(encoding="utf-8"))
    code = {str(k) for k in Kind}
    assert sorted(code - set(documented)) == [], "kinds in kms.audit.entry.Kind missing from docs/audit.md"
    assert sorted(set(documented) - code) == [], "kinds in docs/audit.md that Kind does not have"
    assert len(documented) == len(set(documented)), "a kind is listed twice"


def test_the_comparison_sees_a_missing_kind() -> None:
    text = DOC.read_text(encoding="utf-8").replace("| `node.renew` |", "| node-renew |")
    assert "node.renew" not in documented_kinds(text)
