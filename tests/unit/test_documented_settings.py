"""Every ``SOVEREIGN_*`` variable the documentation and the deploy files name is one the code reads.

What counts as read: the ``serve`` table (``kms.config.OPTIONS``, old names included), the node agent's
variables (recorded by calling ``NodeConfig.resolve`` with a recording environment), a literal name
looked up in an environment in Python (``environ.get(NAME)``, ``os.getenv(NAME)``, ``env[NAME]``,
``NAME in env``), and a shell expansion (``$NAME``, ``${NAME...}``) in the scripts.
"""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from enclave.config import NodeConfig
from enclave.errors import NodeError
from kms.config import BAO_TOKEN_ENV, OPTIONS

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bSOVEREIGN_[A-Z0-9_]*[A-Z0-9]\b")
DOCS = ("README.md", "ARCHITECTURE.md", "docs", "deploy")
PYTHON = ("attestation", "policies", "kms", "enclave", "sovereign", "proto", "tests/vectorlib.py")
SHELL = ("dev", "deploy")
# Names the documents may mention that are not settings anyone reads, and why.
NOT_SETTINGS: dict[str, str] = {}


def _files(*roots: str) -> Iterator[Path]:
    for root in roots:
        path = ROOT / root
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (p for p in sorted(path.rglob("*")) if p.is_file())


def documented() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in _files(*DOCS):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for name in NAME.findall(text):
            out.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return out


class _Recording(Mapping[str, str]):
    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _python_reads(tree: ast.AST) -> set[str]:
    def literal(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.fullmatch(node.value):
            return node.value
        return None

    found = set()
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("get", "getenv", "pop", "setdefault"):
                name = literal(node.args[0])
        elif isinstance(node, ast.Subscript):
            name = literal(node.slice)
        elif isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
            name = literal(node.left)
        if name is not None:
            found.add(name)
    return found


def read_by_code() -> set[str]:
    names = {o.env for o in OPTIONS} | {old for o in OPTIONS for old in o.old_env} | {BAO_TOKEN_ENV}
    recording = _Recording()
    with contextlib.suppress(NodeError):  # nothing set: refused after every variable was looked up
        NodeConfig.resolve(recording)
    names |= recording.asked
    for path in _files(*PYTHON):
        if path.suffix == ".py" and "_pb2" not in path.name:
            names |= _python_reads(ast.parse(path.read_text(), filename=str(path)))
    for path in _files(*SHELL):
        if path.suffix in ("", ".sh") and path.read_bytes().startswith(b"#!"):
            names |= set(re.findall(r"\$\{?(SOVEREIGN_[A-Z0-9_]*[A-Z0-9])", path.read_text()))
    return names


def test_every_documented_variable_is_read() -> None:
    docs = documented()
    assert docs, "found no SOVEREIGN_* name in the documents: is the walk broken?"
    reads = read_by_code() | set(NOT_SETTINGS)
    unread = {name: sorted(where) for name, where in docs.items() if name not in reads}
    assert not unread, f"documented but read by no code: {unread}"


def test_the_walk_finds_what_it_should() -> None:
    reads = read_by_code()
    # one of each kind of reader: the serve table, the node agent, a CLI default, a shell script
    assert {
        "SOVEREIGN_BAO_CA_CERT",
        "SOVEREIGN_NODE_SERVER",
        "SOVEREIGN_ADMIN_ADDR",
        "SOVEREIGN_PYTHON",
    } <= reads
    # the old name of a serve setting is read (with a warning); a removed one is not
    assert "SOVEREIGN_BAO_CACERT" in reads and "SOVEREIGN_ADMIN_SOCKET" not in reads
    assert "SOVEREIGN_OIDC_SERVER_URL" in _python_reads(
        ast.parse('import os\nos.environ.get("SOVEREIGN_OIDC_SERVER_URL")')
    )
    assert not _python_reads(ast.parse('print("set SOVEREIGN_CA")'))
