"""The GPUs in a provenance statement: the verified GPUs the node's registration entry lists (architecture,
UEID, driver and VBIOS versions, the measurement comparison against the RIMs) are the predicate's
``gpus``; the verifier derives them again from the proven entry and refuses any edit; the lineage text
names each GPU, with the RIM-version check from the verified claims."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
import rfc8785
from unit.provenance_ledger import CLAIMS, NODE, OUTPUT, SEALED, Ledger

from kms.audit.entry import Decision, Kind
from kms.provenance.errors import ProvenanceCode, ProvenanceError
from kms.provenance.lineage import LineageInvalid, derive
from kms.provenance.statement import claims_digest
from kms.provenance.verify import lineage_text, verify_statement

GPUS = [
    {
        "architecture": "HOPPER",
        "chip": "GH100",
        "ueid": f"NVIDIA:GH100:{i:040x}",
        "fwid": f"{i:02x}" * 48,
        "driver_version": "550.54.15",
        "vbios_version": "96.00.9F.00.04",
        "measurement_result": "success",
        "rim_versions_match": True,
        "cc_mode": "on",
        "revocation": "good",
        "simulated": True,
    }
    for i in (1, 2)
]
GPU_CLAIMS: dict[str, Any] = {**CLAIMS, "details": {"gpus": GPUS}}


def gpu_fields(gpus: list[dict[str, Any]]) -> dict[str, Any]:
    """A registration entry's GPU fields, as the control plane writes them (kms.usecases.gpu_appraisal)."""
    return {
        "gpu_count": len(gpus),
        "gpu_architectures": [g["architecture"] for g in gpus],
        "gpu_driver_versions": [g["driver_version"] for g in gpus],
        "gpu_vbios_versions": [g["vbios_version"] for g in gpus],
        "gpu_ueids": [g["ueid"] for g in gpus],
        "gpu_measurement_results": [g["measurement_result"] for g in gpus],
    }


def gpu_ledger(registration_gpus: dict[str, Any]) -> tuple[Ledger, int]:
    led = Ledger()
    led.add(Kind.SERVER_START, Decision.NONE, address="127.0.0.1:8443")
    led.add(
        Kind.REGISTRATION, node_id=NODE, node_name="gpu-trainer", tee="snp", state="attested",
        groups=["trainers"], policy_version=2, claims_digest=claims_digest(GPU_CLAIMS),
        measurement=CLAIMS["measurement"], tcb_status="UpToDate", **registration_gpus,
    )  # fmt: skip
    led.add(Kind.RELEASE_GRANT, node_id=NODE, key_name="dataset/d0", key_version=1, purpose="read",
            policy_version=2, request_id="a" * 32)  # fmt: skip
    led.add(Kind.RELEASE_GRANT, node_id=NODE, key_name="model/main", key_version=3, purpose="write",
            policy_version=2, request_id="f" * 32)  # fmt: skip
    out = led.add(
        Kind.MODEL_OUTPUT, node_id=NODE, key_name="model/main", key_version=3, request_id="e" * 32,
        header_sha256="11" * 32, output_sha256=OUTPUT, output_size=1234, sealed_sha256=SEALED,
    )  # fmt: skip
    return led, out


def resign(led: Ledger, envelope: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """Edit the predicate and sign it again with the genuine provenance key: only the ledger can tell."""
    doc = json.loads(envelope)
    statement = json.loads(base64.b64decode(doc["payload"]))
    change(statement["predicate"])
    payload = rfc8785.dumps(statement)
    pae = b"DSSEv1 %d %b %d %b" % (
        len(doc["payloadType"]),
        doc["payloadType"].encode(),
        len(payload),
        payload,
    )
    doc["payload"] = base64.b64encode(payload).decode()
    doc["signatures"][0]["sig"] = base64.b64encode(led.provenance_key.sign(pae)).decode()
    return json.dumps(doc).encode()


def test_the_registered_gpus_are_in_the_statement_and_the_lineage_text() -> None:
    led, out = gpu_ledger(gpu_fields(GPUS))
    verified = verify_statement(led.statement(out, claims=GPU_CLAIMS), led.keys())
    assert verified.predicate["gpus"] == [
        {
            "architecture": "HOPPER",
            "ueid": g["ueid"],
            "driver_version": "550.54.15",
            "vbios_version": "96.00.9F.00.04",
            "measurement_result": "success",
        }
        for g in GPUS
    ]
    assert verified.predicate["cpu"]["claims"]["details"]["gpus"] == GPUS  # the full verified claims
    text = "\n".join(lineage_text(verified))
    assert "GPUs: 2" in text
    for g in GPUS:
        assert f"HOPPER {g['ueid']}  driver 550.54.15  VBIOS 96.00.9F.00.04  measurements success" in text
    assert text.count("RIM versions match True") == 2


def test_gpus_are_named_without_the_full_claims_too() -> None:
    led, out = gpu_ledger(gpu_fields(GPUS))
    verified = verify_statement(led.statement(out, claims={"other": "claims"}), led.keys())
    assert verified.predicate["cpu"]["claims"] is None
    assert [g["ueid"] for g in verified.predicate["gpus"]] == [g["ueid"] for g in GPUS]
    assert "RIM versions match" not in "\n".join(lineage_text(verified))


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["gpus"].pop(),  # hide a GPU
        lambda p: p["gpus"][0].update(ueid="NVIDIA:GH100:" + "0" * 40),  # another device
        lambda p: p["gpus"][1].update(measurement_result="fail"),
        lambda p: p["gpus"].append(dict(p["gpus"][0])),  # one more
        lambda p: p.update(gpus=[]),
    ],
    ids=["hidden", "ueid", "measurement", "added", "emptied"],
)
def test_an_edited_gpu_list_is_refused_even_when_re_signed(change: Callable[[Any], None]) -> None:
    led, out = gpu_ledger(gpu_fields(GPUS))
    envelope = resign(led, led.statement(out, claims=GPU_CLAIMS), change)
    with pytest.raises(ProvenanceError) as info:
        verify_statement(envelope, led.keys())
    assert info.value.code is ProvenanceCode.PROVENANCE_PREDICATE_MISMATCH


def test_a_node_without_gpus_has_an_empty_list() -> None:
    led, out = gpu_ledger({})
    assert verify_statement(led.statement(out), led.keys()).predicate["gpus"] == []


@pytest.mark.parametrize(
    "fields",
    [
        {**gpu_fields(GPUS), "gpu_ueids": [GPUS[0]["ueid"]]},  # one UEID for two GPUs
        {**gpu_fields(GPUS), "gpu_count": "2"},
        {k: v for k, v in gpu_fields(GPUS).items() if k != "gpu_vbios_versions"},
    ],
    ids=["short-list", "count-text", "missing-list"],
)
def test_a_registration_whose_gpu_lists_disagree_supports_no_lineage(fields: dict[str, Any]) -> None:
    led, out = gpu_ledger(fields)
    with pytest.raises(LineageInvalid):
        derive(led.entries, out)
