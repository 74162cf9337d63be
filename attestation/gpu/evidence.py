"""GPU evidence as it travels: one report and its device chain per GPU (pure).

Two input forms are read: the report as raw bytes or hex text with a PEM chain (NVML's output, NVIDIA's
sample files), and the JSON list NVIDIA's attestation SDK serializes for a node with several GPUs:
``[{"arch": "HOPPER", "certificate": base64(PEM chain), "evidence": base64(report), "nonce": hex}, ...]``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from attestation.errors import Code
from attestation.gpu.chain import load_pem_chain
from attestation.gpu.spdm import malformed

MAX_GPUS = 64
MAX_JSON_BYTES = 4 << 20


@dataclass(frozen=True)
class GpuEvidence:
    report: bytes  # SPDM GET_MEASUREMENTS request || MEASUREMENTS response
    chain: tuple[bytes, ...]  # DER, leaf first
    declared_architecture: str | None = None  # what the sender says; the leaf decides

    def __repr__(self) -> str:
        return f"GpuEvidence(report={len(self.report)} bytes, chain={len(self.chain)} certs)"


def from_pem(report: bytes, chain_pem: bytes, declared_architecture: str | None = None) -> GpuEvidence:
    return GpuEvidence(
        bytes(report), tuple(load_pem_chain(chain_pem, Code.GPU_REPORT_MALFORMED)), declared_architecture
    )


def _field(item: dict[str, Any], name: str, index: int) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise malformed(f"GPU evidence {index}: '{name}' is missing or not a string")
    return value


def parse_evidence_json(data: bytes | str) -> list[GpuEvidence]:
    """The SDK's JSON list, one entry per GPU. Raises GPU_REPORT_MALFORMED on any shape error."""
    if len(data) > MAX_JSON_BYTES:
        raise malformed(f"GPU evidence JSON is larger than {MAX_JSON_BYTES} bytes")
    try:
        items = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise malformed("GPU evidence is not JSON") from exc
    if not isinstance(items, list) or not items or len(items) > MAX_GPUS:
        raise malformed(f"GPU evidence must be a list of 1 to {MAX_GPUS} GPUs")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise malformed(f"GPU evidence {i} is not an object")
        arch = item.get("arch")
        try:
            report = base64.b64decode(_field(item, "evidence", i), validate=True)
            chain_pem = base64.b64decode(_field(item, "certificate", i), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise malformed(f"GPU evidence {i}: evidence or certificate is not base64") from exc
        out.append(from_pem(report, chain_pem, arch if isinstance(arch, str) else None))
    return out
