"""The import rules of ARCHITECTURE.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# kms's root modules: stdlib-only mechanisms every control-plane layer may use
KMS_ROOT = {"kms.errors", "kms.config", "kms.clock", "kms.batching"}

# package (path prefix) -> allowed top-level imports besides the stdlib and itself
RULES: dict[str, set[str]] = {
    "attestation": {"cryptography"},
    # attestation.coded (stdlib only) is the one error root: every package may import it (SHARED below)
    # NVIDIA RIMs are XML signatures: verified (gpu/) and minted for tests (simulate/) with signxml + lxml.
    "attestation/gpu": {"attestation", "cryptography", "signxml", "lxml"},
    "attestation/simulate": {"attestation", "cryptography", "signxml", "lxml"},
    # the one key-name rule (stdlib-only module), so release-rule patterns follow the names keys exist under
    "policies": {"attestation", "kms.envelope.names"},
    "kms/envelope": {"cryptography"},
    # prometheus_client: the resident agent's optional metrics endpoint (enclave/agent_metrics.py)
    "enclave": {
        "attestation",
        "proto",
        "kms.envelope",
        "cryptography",
        "nacl",
        "grpc",
        "google",
        "prometheus_client",
    },
    # imported by training code: no gRPC, no control plane (_typeshed: type-checking only)
    "enclave/workload": {"kms.envelope", "cryptography", "_typeshed"},
    # Inside the control plane, each folder has one dependency profile (ARCHITECTURE.md "Layout"):
    # root modules (errors, config, clock, batching: stdlib) <- audit core, domain <- adapters (openbao, sql,
    # oidc) <- use cases <- server. Root modules are checked by test_kms_root_modules_import_only_each_other.
    "kms": set(),
    # the audit core: pure (the offline verifier and the operator client import it)
    "kms/audit": {"kms.errors", "rfc8785", "cryptography"},
    # the domain: records, transitions, premises, the transit port; no I/O library (no sqlalchemy/hvac/grpc)
    "kms/domain": {*KMS_ROOT, "kms.envelope", "kms.audit", "attestation", "policies"},
    "kms/openbao": {*KMS_ROOT, "kms.domain", "hvac", "requests", "cryptography"},
    # SQL only; the pending-change table stores the two-person rule's record (kms.oidc.two_person)
    "kms/sql": {*KMS_ROOT, "kms.domain", "kms.audit", "kms.oidc.two_person", "sqlalchemy"},
    # operator tokens (Keycloak); roles name the Admin/Audit methods from the generated descriptors
    "kms/oidc": {*KMS_ROOT, "kms.domain", "keycloak", "jwcrypto", "proto"},
    # the use cases reach OpenBao only through kms.domain.transit and SQL only through kms.sql's functions:
    # no sqlalchemy, hvac or grpc here
    "kms/usecases": {
        *KMS_ROOT,
        "kms.domain",
        "kms.audit",
        "kms.envelope",
        "kms.sql",
        "kms.oidc",
        # training provenance's pure core (lineage, statements): no I/O, so a use case may build on it
        "kms.provenance",
        "attestation",
        "policies",
        "proto",
        "nacl",
        "cryptography",
        "prometheus_client",
    },
    "kms/server": {
        "kms",
        "attestation",
        "policies",
        "proto",
        "cryptography",
        "nacl",
        "grpc",
        "grpc_health",
        "grpc_reflection",
        "google",
        "prometheus_client",
    },
    # the connected side (AMD KDS, Intel PCS, NVIDIA RIM service and OCSP): OCSP requests are built with cryptography
    "kms/collateral_fetch": {"attestation", "cryptography"},
    # training provenance, the pure core: statements over ledger entries, DSSE and in-toto, no I/O
    "kms/provenance": {
        "kms.audit.checkpoint",
        "kms.audit.entry",
        "kms.audit.errors",
        "kms.audit.merkle",
        "cryptography",
        "rfc8785",
        "securesystemslib",
        "in_toto_attestation",
        "google.protobuf",
    },
    "proto": {"google", "grpc", "grpc_tools"},
    # the typed operator client: the wire (with proto.contract's trailer parser), the audit core's checkpoint form
    "sovereign/client": {"proto", "grpc", "google", "kms.audit"},
}
# On the operator side only sovereign/client sees the generated Admin and Audit types. The web console
# (sovereign/console) has its own async gRPC backend (grpc.aio), which this client does not offer yet; the soak
# driver (sovereign/soak, dev tooling) still calls the stubs with per-call timeouts. Both are to move onto the client.
# The shared error root (Reason, CodedError): stdlib only, so importing it loads nothing else of attestation.
SHARED = ("attestation.coded",)
OPERATOR_SIDE = ("sovereign", "bench")
OPERATOR_WIRE = ("proto.sovereign.v1.admin_pb2", "proto.sovereign.v1.audit_pb2")
OPERATOR_CLIENT = ("sovereign/client/", "sovereign/console/", "sovereign/soak/")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _allowed(name: str, own: str, allowed: set[str]) -> bool:
    top = name.split(".", maxsplit=1)[0]
    own_mod = own.replace("/", ".")
    if top in STDLIB or name == own_mod or name.startswith(own_mod + "."):
        return True
    return any(name == a or name.startswith(a + ".") for a in (*allowed, *SHARED))


def _cases() -> list[tuple[str, Path]]:
    cases = []
    for prefix in RULES:
        for path in sorted((ROOT / prefix).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "_pb2" in rel:
                continue
            # the most specific rule owns a file (kms/envelope before kms)
            owner = max((p for p in RULES if rel.startswith(p + "/")), key=len)
            if owner == prefix:
                cases.append((prefix, path))
    return cases


@pytest.mark.parametrize(("package", "path"), _cases(), ids=lambda v: str(v).split("/main/")[-1])
def test_imports_follow_the_layering(package: str, path: Path) -> None:
    bad = [n for n in _imports(path) if not _allowed(n, package, RULES[package])]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}, outside what {package}/ may import"


def _generated_operator_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = [n for n in _imports(path) if n.startswith(OPERATOR_WIRE)]
    for node in ast.walk(tree):  # from proto.sovereign.v1 import admin_pb2
        if isinstance(node, ast.ImportFrom) and node.module == "proto.sovereign.v1":
            names += [
                f"{node.module}.{a.name}"
                for a in node.names
                if f"{node.module}.{a.name}".startswith(OPERATOR_WIRE)
            ]
    return names


def test_only_the_operator_client_uses_the_generated_admin_and_audit_types() -> None:
    offenders = {
        path.relative_to(ROOT).as_posix(): names
        for top in OPERATOR_SIDE
        for path in sorted((ROOT / top).rglob("*.py"))
        if not path.relative_to(ROOT).as_posix().startswith(OPERATOR_CLIENT)
        and (names := _generated_operator_imports(path))
    }
    assert not offenders, f"use sovereign.client instead of the generated types: {offenders}"


def test_rules_cover_every_package() -> None:
    assert len(_cases()) >= 5


def test_the_workload_library_loads_without_grpc_or_the_control_plane() -> None:
    # the shared error root (attestation.coded, stdlib only) is the one piece of attestation it loads
    probe = (
        "import sys, enclave.workload; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'grpc', 'google', 'proto', 'policies'}"
        " | {m for m in sys.modules if m.startswith('enclave.') and not m.startswith('enclave.workload')}"
        " | {m for m in sys.modules if m.startswith('attestation') and m not in ('attestation', 'attestation.coded')}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_shared_error_root_imports_only_the_stdlib() -> None:
    names = _imports(ROOT / "attestation" / "coded.py")
    assert names and all(n.split(".")[0] in STDLIB for n in names), names


def test_kms_root_modules_import_only_each_other() -> None:
    roots = sorted(p for p in (ROOT / "kms").glob("*.py") if p.name != "__init__.py")
    assert {f"kms.{p.stem}" for p in roots} == KMS_ROOT, "a new module in kms/ belongs in a layer folder"
    bad = {
        p.name: [n for n in _imports(p) if n.startswith("kms") and n not in KMS_ROOT]
        for p in roots
        if any(n.startswith("kms") and n not in KMS_ROOT for n in _imports(p))
    }
    assert not bad, f"kms root modules import control-plane layers: {bad}"


def _unit(module: str) -> str | None:
    """The kms subpackage (or root module) a module belongs to: kms.sql.nodes -> kms.sql."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "kms" and len(parts) > 1 else None


def kms_graph(root: Path) -> dict[str, set[str]]:
    """Import edges between kms's subpackages and root modules, from the AST (TYPE_CHECKING imports count)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "kms").rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        src = _unit(".".join(rel.parts))
        if src is None or src == "kms.__init__":
            continue
        deps = graph.setdefault(src, set())
        for name in _imports(path):
            dst = _unit(name)
            if dst and dst != src:
                deps.add(dst)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A path a -> b -> ... -> a, or None when the graph has no cycle."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return [*stack[stack.index(node) :], node]
        if node in done:
            return None
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if found := visit(nxt):
                return found
        stack.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if found := visit(start):
            return found
    return None


def test_no_import_cycle_between_kms_subpackages() -> None:
    graph = kms_graph(ROOT)
    assert {"kms.domain", "kms.usecases", "kms.sql", "kms.openbao", "kms.oidc", "kms.server"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle_and_names_its_path(tmp_path: Path) -> None:
    files = {
        "kms/sql/nodes.py": "from kms.domain.registry import NodeRecord\n",
        "kms/domain/registry.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kms.usecases.x import Y\n",
        "kms/usecases/x.py": "import kms.sql.nodes\n",
        "kms/errors.py": "import enum\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert find_cycle(kms_graph(tmp_path)) == ["kms.domain", "kms.usecases", "kms.sql", "kms.domain"]
    (tmp_path / "kms/domain/registry.py").write_text("from kms.errors import enum\n")
    assert find_cycle(kms_graph(tmp_path)) is None


def test_a_layer_rule_refuses_an_import_against_the_direction() -> None:
    # the domain may not reach an adapter or a driver, the use cases may not import sqlalchemy or hvac
    assert not _allowed("kms.sql.nodes", "kms/domain", RULES["kms/domain"])
    assert not _allowed("sqlalchemy.engine", "kms/usecases", RULES["kms/usecases"])
    assert not _allowed("hvac", "kms/usecases", RULES["kms/usecases"])
    assert not _allowed("kms.openbao.vault", "kms/usecases", RULES["kms/usecases"])
    assert not _allowed("kms.server.errors", "kms/oidc", RULES["kms/oidc"])
    assert _allowed("kms.domain.transit", "kms/usecases", RULES["kms/usecases"])
