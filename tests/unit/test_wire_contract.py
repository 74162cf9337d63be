"""The one wire contract (proto.contract): pinned transcript bytes, and neither side keeps its own copy."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

import enclave.client
import enclave.release_request
import kms.server.codec
import kms.server.errors
import kms.server.node_certs
import kms.usecases.release
import sovereign.client.errors
import sovereign.console.backend
from enclave.release_request import ReleaseFields, encode_body
from kms.errors import Code, KmsError
from kms.server.codec import release_in
from kms.server.errors import failure
from proto import contract
from proto.sovereign.v1 import common_pb2, key_release_pb2

ROOT = Path(__file__).resolve().parents[2]
WHEN = datetime(2026, 12, 3, 9, 30, 15, 250_000, tzinfo=UTC)
FIELDS = ReleaseFields("node-7", "dataset/imagenet", "read", bytes(range(16)), WHEN, 3)
# ReleaseRequestBody{node_id=1, key_name=2, purpose=3 (READ=1), request_id=4, timestamp=5, key_version=6},
# deterministic encoding, field order, no defaults.
BODY_HEX = (
    "0a066e6f64652d37"  # 1: "node-7"
    "1210646174617365742f696d6167656e6574"  # 2: "dataset/imagenet"
    "1801"  # 3: PURPOSE_READ
    "2210000102030405060708090a0b0c0d0e0f"  # 4: request id 00..0f
    "2a0b08a7edc4d8061080e59a77"  # 5: Timestamp{seconds=1796290215, nanos=250000000}
    "3003"  # 6: key version 3
)
DOMAIN_HEX = "736f7665726569676e2f76312072656c65617365"  # "sovereign/v1 release"


def test_transcript_vector_pins_the_bytes_on_both_sides() -> None:
    body = encode_body(FIELDS)  # the node's encoder
    assert body.hex() == BODY_HEX
    assert contract.release_transcript(body).hex() == DOMAIN_HEX + BODY_HEX
    assert contract.SIGNING_DOMAIN.hex() == DOMAIN_HEX and contract.MAX_BODY == 1024
    parsed = release_in(
        key_release_pb2.ReleaseRequest(body=body, signature=bytes(64))
    )  # the server's decoder
    f = parsed.fields
    assert (f.node_id, f.key_name, f.purpose, f.request_id, f.timestamp, f.key_version) == (
        "node-7",
        "dataset/imagenet",
        "read",
        bytes(range(16)),
        WHEN,
        3,
    )


def test_tls_key_proof_vector() -> None:
    msg = contract.tls_key_proof_message(b"\x01" * 32, b"\x02\x03")
    assert msg == b"sovereign/v1 client tls key\x00" + b"\x01" * 32 + b"\x02\x03"


def test_a_non_canonical_body_is_refused_by_the_contract_and_the_server() -> None:
    body = bytes.fromhex(BODY_HEX)
    reordered = body[-2:] + body[:-2]  # key_version first: same fields, not the canonical encoding
    with pytest.raises(contract.BodyRejected) as info:
        contract.decode_release_body(reordered)
    assert info.value.code == Code.REQUEST_NOT_CANONICAL.value
    with pytest.raises(KmsError) as err:
        release_in(key_release_pb2.ReleaseRequest(body=reordered, signature=bytes(64)))
    assert err.value.code is Code.REQUEST_NOT_CANONICAL
    for bad in (b"", b"\xff" * 3, bytes(contract.MAX_BODY + 1)):
        with pytest.raises(KmsError) as err:
            release_in(key_release_pb2.ReleaseRequest(body=bad, signature=bytes(64)))
        assert err.value.code is Code.REQUEST_INVALID


def test_the_node_refuses_to_encode_an_oversized_body() -> None:
    big = key_release_pb2.ReleaseRequestBody(node_id="n" * (contract.MAX_BODY + 1))
    with pytest.raises(contract.BodyRejected, match="exceeds 1024"):
        contract.encode_release_body(big)


def test_the_server_packs_what_the_clients_parse() -> None:
    status, message, trailer = failure(KmsError("no", code=Code.REQUEST_INVALID, hint="fix it"))
    detail = contract.parse_error_detail(trailer)
    assert detail == contract.ErrorDetail("REQUEST_INVALID", "kms", "fix it", {})
    assert status is grpc.StatusCode.INVALID_ARGUMENT and message.startswith("REQUEST_INVALID")


def test_the_parse_reads_sync_and_async_metadata() -> None:
    """Nodes and the operator client get a tuple of pairs; the console's grpc.aio gets ``Metadata``."""
    value = contract.pack_error_status(
        7, "AUTH_ROLE_MISSING", domain="kms", message="m", hint="h", metadata={"a": "b"}
    )
    expected = contract.ErrorDetail("AUTH_ROLE_MISSING", "kms", "h", {"a": "b"})
    assert contract.parse_error_detail((("x", "y"), (contract.TRAILER, value))) == expected
    assert contract.parse_error_detail(grpc.aio.Metadata(("x", "y"), (contract.TRAILER, value))) == expected
    assert contract.parse_error_detail(None) is None and contract.parse_error_detail(7) is None


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xff not a status",
        common_pb2.ErrorStatus(code=7, message="x").SerializeToString(),  # no detail
        contract.pack_error_status(7, "lower case", domain="kms", message="x"),  # reason is not a code
    ],
)
def test_the_parse_is_strict(value: bytes) -> None:
    assert contract.parse_error_detail([("x-other", "v"), (contract.TRAILER, value)]) is None


# (module, name it may hold, the contract object it must then be)
SHARED = [
    (enclave.release_request, "SIGNING_DOMAIN", contract.SIGNING_DOMAIN),
    (enclave.release_request, "MAX_BODY", contract.MAX_BODY),
    (enclave.release_request, "transcript", contract.release_transcript),
    (kms.usecases.release, "SIGNING_DOMAIN", contract.SIGNING_DOMAIN),
    (kms.usecases.release, "MAX_BODY", contract.MAX_BODY),
    (kms.server.codec, "MAX_BODY", contract.MAX_BODY),
    (enclave.client, "TLS_KEY_PROOF_LABEL", contract.TLS_KEY_PROOF_LABEL),
    (kms.server.node_certs, "PROOF_LABEL", contract.TLS_KEY_PROOF_LABEL),
    (kms.server.node_certs, "proof_message", contract.tls_key_proof_message),
    (enclave.client, "tls_key_proof_message", contract.tls_key_proof_message),
    (enclave.client, "TRAILER", contract.TRAILER),
    (enclave.client, "ERROR_DETAIL_TYPE", contract.ERROR_DETAIL_TYPE),
    (enclave.client, "parse_error_detail", contract.parse_error_detail),
    (enclave.client, "ServerDetail", contract.ErrorDetail),
    (kms.server.errors, "TRAILER", contract.TRAILER),
    (kms.server.errors, "parse_trailer", contract.parse_error_detail),
    (sovereign.client.errors, "parse_error_detail", contract.parse_error_detail),
    (sovereign.console.backend, "parse_error_detail", contract.parse_error_detail),
    (sovereign.console.backend, "parse_trailer", contract.parse_error_detail),
]


@pytest.mark.parametrize(("module", "name", "shared"), SHARED, ids=lambda v: getattr(v, "__name__", str(v)))
def test_no_side_keeps_its_own_copy(module: object, name: str, shared: object) -> None:
    """A name on either side is absent or is the contract's own object, never a redefinition."""
    if hasattr(module, name):
        assert getattr(module, name) is shared, f"{module.__name__}.{name} redefines proto.contract"  # type: ignore[attr-defined]


WIRE_LITERALS = (b"sovereign/v1 release", b"sovereign/v1 client tls key\x00")
WIRE_TEXT = ("grpc-status-details-bin", "type.googleapis.com/sovereign.v1.ErrorDetail")


def test_no_wire_literal_outside_the_contract() -> None:
    """The domain labels and trailer names are written once, in proto/contract.py (tests aside)."""
    found = []
    for top in ("enclave", "kms", "sovereign", "policies", "attestation", "proto"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.name == "contract.py" or "_pb2" in path.name:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Constant) and (
                    node.value in WIRE_LITERALS or node.value in WIRE_TEXT
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"wire constants redefined outside proto.contract: {found}"
