"""Node identity keys, the node error type, and the identity + simulated evidence + verifier chain."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime

import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from attestation.binding import expected_report_data, verify_binding
from attestation.claims import Tee
from attestation.errors import BindingError
from attestation.simulate import shared_pki
from attestation.snp.collateral import SnpCollateral
from attestation.snp.verify import verify_report
from enclave.errors import NodeCode, NodeError
from enclave.identity import NodeIdentity
from enclave.providers import simulated_snp, simulated_tdx
from enclave.providers.base import embedded_report_data
from kms.envelope import MLKEM768_X25519_SUITE, X25519_SUITE, open_sealed_key, seal_key

NONCE = bytes(range(32))
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def test_report_data_is_the_binding_of_nonce_and_both_public_keys() -> None:
    node = NodeIdentity.generate()
    rd = node.report_data(NONCE)
    assert rd == expected_report_data(NONCE, node.kem_suite, node.kem_public, node.signing_public)
    verify_binding(rd, NONCE, **node.public_keys())
    assert node.report_data(bytes(32)) != rd
    with pytest.raises(BindingError):
        verify_binding(rd, NONCE, **NodeIdentity.generate().public_keys())


def test_default_suite_is_x25519_and_hybrid_is_available() -> None:
    node = NodeIdentity.generate()
    assert node.suite is X25519_SUITE and node.kem_suite == bytes.fromhex("002000010002")
    assert len(node.kem_public) == 32 and len(node.signing_public) == 32
    hybrid = NodeIdentity.generate(MLKEM768_X25519_SUITE)
    assert hybrid.kem_suite == MLKEM768_X25519_SUITE.id_bytes() and len(hybrid.kem_public) == 1216


@pytest.mark.parametrize("suite", [X25519_SUITE, MLKEM768_X25519_SUITE], ids=lambda s: s.name)
def test_the_kem_key_opens_keys_sealed_to_its_public_key(suite: object) -> None:
    node = NodeIdentity.generate(suite)  # type: ignore[arg-type]
    sealed = seal_key(node.kem_public, node.suite, b"k" * 32, b"aad")
    assert open_sealed_key(node.kem_private_key(), sealed, b"aad") == b"k" * 32


def test_every_identity_is_fresh() -> None:
    a, b = NodeIdentity.generate(), NodeIdentity.generate()
    assert a.kem_public != b.kem_public and a.signing_public != b.signing_public


def test_signatures_verify_with_the_published_key_only() -> None:
    node = NodeIdentity.generate()
    signature = node.sign(b"release dataset-key")
    assert len(signature) == 64
    verifier = VerifyKey(node.signing_public)
    verifier.verify(b"release dataset-key", signature)
    with pytest.raises(BadSignatureError):
        verifier.verify(b"release model-key", signature)
    with pytest.raises(BadSignatureError):
        VerifyKey(NodeIdentity.generate().signing_public).verify(b"release dataset-key", signature)


def test_repr_and_public_keys_never_show_private_material() -> None:
    node = NodeIdentity.generate()
    secret_kem = node.kem_private_key().export_secret()
    seed = bytes(node._signing_key)  # the Ed25519 seed
    text = repr(node) + str(node) + repr(node.public_keys())
    for secret in (secret_kem, seed):
        assert secret.hex() not in text and repr(secret) not in text
    assert node.kem_public.hex() in text and node.signing_public.hex() in text
    assert set(node.public_keys()) == {"kem_suite", "kem_public", "signing_public"}


def test_identity_cannot_be_pickled_or_copied() -> None:
    node = NodeIdentity.generate()
    with pytest.raises(TypeError):
        pickle.dumps(node)
    with pytest.raises(TypeError):
        copy.copy(node)
    with pytest.raises(TypeError):
        copy.deepcopy(node)
    assert not hasattr(node, "__dict__")  # nothing else can be hung on it and dumped


@pytest.mark.parametrize("nonce", [b"", "nonce", b"n" * 70_000], ids=["empty", "str", "huge"])
def test_report_data_refuses_bad_nonces(nonce: object) -> None:
    with pytest.raises(NodeError) as exc:
        NodeIdentity.generate().report_data(nonce)  # type: ignore[arg-type]
    assert exc.value.code is NodeCode.REPORT_DATA_INVALID


def test_invalid_construction_and_signing_input() -> None:
    node = NodeIdentity.generate()
    with pytest.raises(NodeError) as exc:
        NodeIdentity(kem_private=b"\x01" * 32, signing_key=SigningKey.generate())  # type: ignore[arg-type]
    assert exc.value.code is NodeCode.IDENTITY_INVALID
    with pytest.raises(NodeError) as exc:
        NodeIdentity(kem_private=node.kem_private_key(), signing_key=b"\x02" * 32)  # type: ignore[arg-type]
    assert exc.value.code is NodeCode.IDENTITY_INVALID
    with pytest.raises(NodeError) as exc:
        node.sign("text")  # type: ignore[arg-type]
    assert exc.value.code is NodeCode.IDENTITY_INVALID


def test_node_error_shape() -> None:
    err = NodeError("no device", code=NodeCode.PROVIDER_UNAVAILABLE)
    assert str(err) == "PROVIDER_UNAVAILABLE: no device"
    assert err.to_dict() == {"code": "PROVIDER_UNAVAILABLE", "message": "no device", "hint": err.hint}
    assert err.hint and "PROVIDER_UNAVAILABLE" in repr(err)
    assert NodeError("x", code=NodeCode.PROVIDER_FAILED, hint="do y").hint == "do y"
    assert all(code.value == code.name for code in NodeCode)


# ------------------------------------------------ identity -> simulated evidence -> verifier


def test_simulated_snp_evidence_verifies_and_binds_the_identity() -> None:
    pki = shared_pki(NOW)
    node = NodeIdentity.generate()
    evidence = simulated_snp(pki).get_evidence(node.report_data(NONCE))
    assert evidence.tee is Tee.SNP and len(evidence.endorsements) == 3
    crls = pki.snp_collateral_items()["crls"]
    claims = verify_report(
        evidence.blob,
        trust=pki.trust_store(),
        collateral=SnpCollateral.from_der(certs=[], crls=crls),  # the chain comes from the evidence
        now=NOW,
        endorsements=evidence.endorsements,
    )
    assert claims.simulated
    verify_binding(claims.report_data, NONCE, **node.public_keys())


def test_simulated_vlek_evidence_carries_the_vlek_chain() -> None:
    pki = shared_pki(NOW)
    node = NodeIdentity.generate()
    evidence = simulated_snp(pki, signing_key="vlek", product="Genoa").get_evidence(node.report_data(NONCE))
    claims = verify_report(
        evidence.blob,
        trust=pki.trust_store(),
        collateral=SnpCollateral.from_der(certs=[], crls=pki.snp_collateral_items()["crls"]),
        now=NOW,
        endorsements=evidence.endorsements,
    )
    assert claims.details["signing_key"] == "vlek"


def test_simulated_tdx_quote_carries_the_identity_binding() -> None:
    node = NodeIdentity.generate()
    rd = node.report_data(NONCE)
    evidence = simulated_tdx(shared_pki(NOW)).get_evidence(rd)
    assert evidence.tee is Tee.TDX and evidence.provider == "simulated-tdx"
    assert embedded_report_data(Tee.TDX, evidence.blob) == rd
