"""The committed generated code matches the .proto files, imports as proto.sovereign.v1, and works."""

from __future__ import annotations

import ast
import importlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

from proto import generate, grpc_stubs
from proto.sovereign.v1 import admin_pb2, attestation_pb2, audit_pb2, common_pb2, key_release_pb2

PACKAGE = "proto.sovereign.v1"
STEMS = [p.stem for p in generate.proto_sources()]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fresh")
    generate.generate_into(out)
    return out


def _copy_generated(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        if generate.is_generated(path.name):
            shutil.copyfile(path, dst / path.name)
    return dst


# --- regeneration ---------------------------------------------------------------------------------


def test_committed_generated_code_matches_a_fresh_generation(fresh: Path) -> None:
    differences = generate.compare(fresh, generate.PROTO_DIR)
    assert not differences, "run ./dev proto:\n" + "\n".join(
        d.describe(generate.PROTO_DIR) for d in differences
    )


def test_every_proto_yields_messages_stubs_and_grpc_modules(fresh: Path) -> None:
    names = {p.name for p in fresh.iterdir()}
    for stem in STEMS:
        for suffix in generate.GENERATED_SUFFIXES:
            assert stem + suffix in names


def test_generation_is_deterministic(fresh: Path, tmp_path: Path) -> None:
    generate.generate_into(tmp_path)
    assert generate.compare(tmp_path, fresh) == []


def test_compare_names_each_differing_missing_and_stale_file(fresh: Path, tmp_path: Path) -> None:
    committed = _copy_generated(fresh, tmp_path / "committed")
    (committed / "admin_pb2.py").write_bytes((committed / "admin_pb2.py").read_bytes() + b"# edited\n")
    (committed / "audit_pb2_grpc.pyi").unlink()
    (committed / "retired_pb2.py").write_text("")
    found = {(d.name, d.kind) for d in generate.compare(fresh, committed)}
    assert found == {
        ("admin_pb2.py", "differs"),
        ("audit_pb2_grpc.pyi", "missing"),
        ("retired_pb2.py", "stale"),
    }


def test_check_command_exits_nonzero_naming_the_file(
    fresh: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    committed = _copy_generated(fresh, tmp_path / "committed")
    assert generate.main(["--check", "--out", str(committed)]) == 0
    (committed / "key_release_pb2.pyi").write_text("tampered\n")
    assert generate.main(["--check", "--out", str(committed)]) == 1
    assert "key_release_pb2.pyi: differs" in capsys.readouterr().err


def test_write_removes_stale_generated_files_only(tmp_path: Path) -> None:
    (tmp_path / "retired_pb2_grpc.py").write_text("")
    (tmp_path / "notes.txt").write_text("kept")
    names = generate.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, "notes.txt"])


# --- imports --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", STEMS)
def test_generated_modules_import_under_the_package(stem: str) -> None:
    pb2 = importlib.import_module(f"{PACKAGE}.{stem}_pb2")
    assert pb2.DESCRIPTOR.name == f"proto/sovereign/v1/{stem}.proto"
    assert pb2.DESCRIPTOR.package == "sovereign.v1"
    importlib.import_module(f"{PACKAGE}.{stem}_pb2_grpc")


@pytest.mark.parametrize("stem", STEMS)
def test_generated_imports_resolve_as_proto_sovereign_v1(stem: str) -> None:
    for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi"):
        tree = ast.parse((generate.PROTO_DIR / f"{stem}{suffix}").read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{stem}{suffix}: relative import"
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.endswith("_pb2") and not name.startswith("google.protobuf."):
                    assert name.startswith(PACKAGE + "."), f"{stem}{suffix} imports {name}"
    grpc_module = importlib.import_module(f"{PACKAGE}.{stem}_pb2_grpc")
    referenced = [v for v in vars(grpc_module).values() if isinstance(v, ModuleType)]
    for module in referenced:
        if module.__name__.endswith("_pb2"):
            assert module is importlib.import_module(module.__name__)
            assert module.__name__.startswith(PACKAGE + ".")


# --- gRPC wiring and round trips ------------------------------------------------------------------


class _RecordingChannel:
    """Stands in for grpc.Channel: records the (de)serializers a generated stub registers."""

    def __init__(self) -> None:
        self.methods: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {}

    def _register(self, path: str, request_serializer: Any, response_deserializer: Any, **_: Any) -> str:
        self.methods[path] = (request_serializer, response_deserializer)
        return path

    unary_unary = unary_stream = stream_unary = stream_stream = _register


def _register_request() -> Message:
    keys = attestation_pb2.NodeKeys(
        kem_suite=attestation_pb2.KemSuite(kem_id=0x0020, kdf_id=0x0001, aead_id=0x0002),
        kem_public_key=bytes(range(32)),
        signing_public_key=bytes(range(32, 64)),
    )
    evidence = attestation_pb2.Evidence(
        tee=common_pb2.TEE_SNP,
        report=b"\x05" * 1184,
        endorsements=[attestation_pb2.Endorsement(guid="63da758d-e664-4564-adc5-f4b93be8accd", der=b"0\x82")],
    )
    return attestation_pb2.RegisterRequest(
        nonce=bytes(32), evidence=evidence, keys=keys, node_name="trainer-0", requested_groups=["train"]
    )


def _release_request() -> Message:
    body = key_release_pb2.ReleaseRequestBody(
        node_id="n-1", key_name="imagenet", purpose=common_pb2.PURPOSE_READ, request_id=bytes(16)
    )
    body.timestamp.FromSeconds(1_700_000_000)
    return key_release_pb2.ReleaseRequest(
        body=body.SerializeToString(deterministic=True), signature=bytes(64)
    )


def _put_policy_request() -> Message:
    return admin_pb2.PutPolicyRequest(toml="[appraisal]\nallow_debug = false\n", expected_version=7)


def _list_entries_request() -> Message:
    request = audit_pb2.ListEntriesRequest(
        node_id="n-1", decision=audit_pb2.DECISION_DENY, reason_code="LEASE_EXPIRED", page_size=50
    )
    request.start_time.FromSeconds(1_700_000_000)
    return request


ROUND_TRIPS = [
    ("attestation", "Attestation", "Register", _register_request, attestation_pb2.AttestationResult),
    ("key_release", "KeyRelease", "ReleaseKey", _release_request, key_release_pb2.ReleaseResponse),
    ("admin", "Admin", "PutPolicy", _put_policy_request, admin_pb2.PutPolicyResponse),
    ("audit", "Audit", "ListEntries", _list_entries_request, audit_pb2.ListEntriesResponse),
]


def test_round_trips_cover_every_service() -> None:
    services = {
        s.name
        for stem in STEMS
        for s in importlib.import_module(f"{PACKAGE}.{stem}_pb2").DESCRIPTOR.services_by_name.values()
    }
    assert services == {service for _, service, _, _, _ in ROUND_TRIPS}


@pytest.mark.parametrize(("stem", "service", "method", "make_request", "response_type"), ROUND_TRIPS)
def test_one_message_per_service_round_trips_through_the_generated_stub(
    stem: str, service: str, method: str, make_request: Callable[[], Message], response_type: type[Message]
) -> None:
    grpc_module = importlib.import_module(f"{PACKAGE}.{stem}_pb2_grpc")
    channel = _RecordingChannel()
    getattr(grpc_module, f"{service}Stub")(channel)
    path = f"/sovereign.v1.{service}/{method}"
    serialize, deserialize_response = channel.methods[path]

    request = make_request()
    wire = serialize(request)
    decoded = type(request).FromString(wire)
    assert decoded == request
    assert decoded.SerializeToString(deterministic=True) == wire

    response = response_type()
    assert deserialize_response(response.SerializeToString()) == response


@pytest.mark.parametrize("stem", STEMS)
def test_stub_registers_every_rpc_of_the_descriptor(stem: str) -> None:
    pb2 = importlib.import_module(f"{PACKAGE}.{stem}_pb2")
    grpc_module = importlib.import_module(f"{PACKAGE}.{stem}_pb2_grpc")
    for service in pb2.DESCRIPTOR.services_by_name.values():
        channel = _RecordingChannel()
        getattr(grpc_module, f"{service.name}Stub")(channel)
        assert set(channel.methods) == {f"/{service.full_name}/{m.name}" for m in service.methods}


# --- the signed release body ----------------------------------------------------------------------


def _canonical(body: bytes) -> bool:
    """The rule documented in key_release.proto: one request, one encoding."""
    parsed = key_release_pb2.ReleaseRequestBody.FromString(body)
    parsed.DiscardUnknownFields()
    return parsed.SerializeToString(deterministic=True) == body


def test_release_body_canonical_rule_accepts_the_node_encoding() -> None:
    request = _release_request()
    assert isinstance(request, key_release_pb2.ReleaseRequest)
    assert _canonical(request.body)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda b: b + bytes([0x78, 0x01]), id="unknown-field"),
        pytest.param(lambda b: b + bytes([0x18, 0x02]), id="repeated-field"),
        pytest.param(lambda b: bytes([0x30, 0x00]) + b, id="explicit-default"),
        pytest.param(
            lambda b: b.replace(bytes([0x18, 0x01]), bytes([0x18, 0x81, 0x00])), id="overlong-varint"
        ),
        # node_id "n-1" is the first 5 bytes (tag, length, value), key_name "imagenet" the next 10
        pytest.param(lambda b: b[5:15] + b[:5] + b[15:], id="reordered"),
    ],
)
def test_release_body_canonical_rule_refuses_alternative_encodings(mutate: Callable[[bytes], bytes]) -> None:
    request = _release_request()
    assert isinstance(request, key_release_pb2.ReleaseRequest)
    altered = mutate(request.body)
    assert altered != request.body
    assert not _canonical(altered)


def test_release_signing_domain_is_documented_in_the_contract() -> None:
    text = (generate.PROTO_DIR / "key_release.proto").read_text()
    assert '"sovereign/v1 release" || body' in text


# --- typed gRPC stubs -----------------------------------------------------------------------------


def test_grpc_stub_renderer_refuses_unknown_rpc_types() -> None:
    files = descriptor_pb2.FileDescriptorSet()
    fd = files.file.add(name="x/y.proto", package="p")
    fd.service.add(name="S").method.add(name="M", input_type=".p.Missing", output_type=".p.Missing")
    with pytest.raises(grpc_stubs.StubError, match="not a top-level message"):
        grpc_stubs.render("x/y.proto", files)


def test_the_contract_states_the_servers_default_clock_skew() -> None:
    """key_release.proto documents the acceptance window; it must be the one the server uses by default."""
    from kms.config import ServerConfig
    from kms.usecases.release import DEFAULT_SKEW

    text = " ".join((generate.PROTO_DIR / "key_release.proto").read_text().split())
    stated = [int(s) for s in re.findall(r"default \+/- (\d+) s", text)]
    assert stated == [ServerConfig().clock_skew] == [int(DEFAULT_SKEW.total_seconds())]
