"""The GPU binding rule of proto/contract.py and attestation/binding.py: vectors pinning the bytes, the
no-GPU report data unchanged from before GPUs existed, and every input changing the result."""

from __future__ import annotations

import hashlib

import pytest

from attestation.binding import expected_report_data, verify_binding
from attestation.errors import AttestationError
from proto.contract import (
    MAX_GPUS,
    GpuEvidenceItem,
    GpuEvidenceRejected,
    check_gpu_evidence,
    gpu_commitment,
    gpu_nonce,
)

NONCE = bytes(range(32))
SUITE = bytes.fromhex("002000010002")
KEM = bytes([7]) * 32
SIGNING = bytes([9]) * 32
ITEMS = [
    GpuEvidenceItem(b"report-0", (b"leaf-0", b"root"), "HOPPER"),
    GpuEvidenceItem(b"report-1", (b"leaf-1",), ""),
]
# Pinned: a change to either rule breaks every node that registers GPUs with an older or newer peer.
GPU_NONCE = "78c0bad93108adbdb143ca10818ef932698978e2d699d4e893262b7a519ca5f3"
COMMITMENT = "95bdbdc9ce67ec2698f464c97c984bf1c8079f4787fea85ef11025b9181960c2"
# What attestation/binding.py computed before GPUs existed (commit 1548ce0), for the same inputs.
REPORT_DATA_NO_GPU = (
    "912053946bc31c3e6eb364a6a1deaff67ba073aabf033052fe1a15ec3646b6d8"
    "dba13612dfdbecf8b7e40f3aa4ea9c927743d6b0ac5f03af86ad8af24c690132"
)
REPORT_DATA_GPUS = (
    "624953be183da828891ae8e663e8a9de690cca913cd0e4afd91dc05e06b41762"
    "efd6d2b7264100b41a71fc40d26641b1b0813028bb29c034af62e21c57759a5d"
)


def _len2(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def test_gpu_nonce_vector_and_layout() -> None:
    assert gpu_nonce(NONCE, SUITE, KEM, SIGNING).hex() == GPU_NONCE
    layout = b"sovereign/v1 gpu nonce" + b"".join(_len2(f) for f in (NONCE, SUITE, KEM, SIGNING))
    assert hashlib.sha256(layout).hexdigest() == GPU_NONCE


def test_commitment_vector_and_layout() -> None:
    assert gpu_commitment(ITEMS).hex() == COMMITMENT
    layout = (
        b"sovereign/v1 gpu evidence" + (2).to_bytes(2, "big")
        + (8).to_bytes(4, "big") + b"report-0" + b"\x02" + (6).to_bytes(4, "big") + b"leaf-0"
        + (4).to_bytes(4, "big") + b"root" + b"\x06HOPPER"
        + (8).to_bytes(4, "big") + b"report-1" + b"\x01" + (6).to_bytes(4, "big") + b"leaf-1" + b"\x00"
    )  # fmt: skip
    assert hashlib.sha256(layout).hexdigest() == COMMITMENT


def test_no_gpu_keeps_the_report_data_of_old_nodes() -> None:
    assert gpu_commitment([]) == b""
    assert expected_report_data(NONCE, SUITE, KEM, SIGNING).hex() == REPORT_DATA_NO_GPU
    assert expected_report_data(NONCE, SUITE, KEM, SIGNING, gpu_commitment=b"").hex() == REPORT_DATA_NO_GPU


def test_report_data_commits_to_the_gpu_list() -> None:
    with_gpus = expected_report_data(NONCE, SUITE, KEM, SIGNING, gpu_commitment=gpu_commitment(ITEMS))
    assert with_gpus.hex() == REPORT_DATA_GPUS
    verify_binding(with_gpus, NONCE, SUITE, KEM, SIGNING, gpu_commitment=gpu_commitment(ITEMS))
    # the CPU report of a GPU node does not bind the same node without its GPUs, nor with other GPUs
    with pytest.raises(AttestationError):
        verify_binding(with_gpus, NONCE, SUITE, KEM, SIGNING)
    with pytest.raises(AttestationError):
        verify_binding(with_gpus, NONCE, SUITE, KEM, SIGNING, gpu_commitment=gpu_commitment(ITEMS[:1]))


@pytest.mark.parametrize(
    "changed",
    [
        [ITEMS[1], ITEMS[0]],  # order
        [GpuEvidenceItem(b"report-0", (b"leaf-0", b"root"), "BLACKWELL"), ITEMS[1]],  # declared architecture
        [GpuEvidenceItem(b"report-0x", (b"leaf-0", b"root"), "HOPPER"), ITEMS[1]],  # report
        [GpuEvidenceItem(b"report-0", (b"leaf-0",), "HOPPER"), ITEMS[1]],  # chain
        [GpuEvidenceItem(b"report-0", (b"leaf-0root",), "HOPPER"), ITEMS[1]],  # bytes moved between certs
        ITEMS[:1],
    ],
)
def test_every_change_changes_the_commitment(changed: list[GpuEvidenceItem]) -> None:
    assert gpu_commitment(changed).hex() != COMMITMENT


@pytest.mark.parametrize("which", range(4))
def test_every_transcript_field_changes_the_gpu_nonce(which: int) -> None:
    fields = [NONCE, SUITE, KEM, SIGNING]
    fields[which] = fields[which] + b"\x00"
    assert gpu_nonce(*fields).hex() != GPU_NONCE


@pytest.mark.parametrize(
    "items",
    [
        [GpuEvidenceItem(b"", (b"leaf",), "")],
        [GpuEvidenceItem(b"r", (), "")],
        [GpuEvidenceItem(b"r", (b"",), "")],
        [GpuEvidenceItem(b"r" * (16 << 10 + 1), (b"leaf",), "")],
        [GpuEvidenceItem(b"r", (b"c",) * 9, "")],
        [GpuEvidenceItem(b"r", (b"leaf",), "H" * 33)],
        [GpuEvidenceItem(b"r", (b"leaf",), "HÖPPER")],
        [GpuEvidenceItem(b"r", (b"leaf",), "")] * (MAX_GPUS + 1),
    ],
)
def test_out_of_limits_lists_are_refused(items: list[GpuEvidenceItem]) -> None:
    with pytest.raises(GpuEvidenceRejected):
        check_gpu_evidence(items)
    with pytest.raises(GpuEvidenceRejected):
        gpu_commitment(items)


def test_gpu_nonce_needs_the_whole_transcript() -> None:
    with pytest.raises(GpuEvidenceRejected):
        gpu_nonce(b"", SUITE, KEM, SIGNING)
