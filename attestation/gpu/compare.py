"""Runtime measurements against the driver and VBIOS RIMs, as NVIDIA's verifier compares them (pure).

The active golden measurements of both RIMs are merged by index; an index active in both is a conflict
(``GPU_RIM_INDEX_CONFLICT``): neither RIM may speak for the other's measurement. Each golden index ``i``
(0-based) must match the report's measurement block ``i + 1`` by one of its alternatives, with the size
the RIM states. Index 35 is measured by NVDEC0, so it is not compared when the report's opaque data says
NVDEC0 is disabled. A golden index the report does not carry is a mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from attestation.errors import Code, EndorsementMismatch
from attestation.gpu.rim import GoldenMeasurement
from attestation.gpu.spdm import OPAQUE_NVDEC0_STATUS, STATUS_DISABLED, SpdmReport

NVDEC0_INDEX = 35


@dataclass(frozen=True)
class Comparison:
    compared: tuple[int, ...]  # 0-based golden indexes that matched
    skipped: tuple[int, ...]  # not compared, with the reason in docs (NVDEC0 disabled)


def merge_golden(
    driver: Mapping[int, GoldenMeasurement], vbios: Mapping[int, GoldenMeasurement]
) -> dict[int, GoldenMeasurement]:
    conflicts = sorted(set(driver) & set(vbios))
    if conflicts:
        raise EndorsementMismatch(
            f"the driver and VBIOS RIMs both have active measurements at indexes {conflicts}",
            code=Code.GPU_RIM_INDEX_CONFLICT,
            hint="the RIMs do not belong together; fetch the RIMs for this GPU's driver and VBIOS",
        )
    return {**driver, **vbios}


Golden = tuple[tuple[int, int, tuple[bytes, ...]], ...]  # (0-based index, size, alternatives), by index


def prepare_golden(golden: Mapping[int, GoldenMeasurement]) -> Golden:
    """The comparison's view of a golden set, sorted once: a merged RIM pair is compared with many reports."""
    return tuple((i, golden[i].size, golden[i].alternatives) for i in sorted(golden))


def compare(report: SpdmReport, golden: Mapping[int, GoldenMeasurement] | Golden) -> Comparison:
    prepared = golden if isinstance(golden, tuple) else prepare_golden(golden)
    runtime = report.measurements
    nvdec = report.opaque.get(OPAQUE_NVDEC0_STATUS)
    nvdec_disabled = nvdec is not None and nvdec == bytes([STATUS_DISABLED])
    mismatched: list[int] = []
    compared: list[int] = []
    skipped: list[int] = []
    for index, size, alternatives in prepared:
        if index == NVDEC0_INDEX and nvdec_disabled:
            skipped.append(index)
            continue
        value = runtime.get(index + 1)
        if value is None or len(value) != size or value not in alternatives:
            mismatched.append(index)
        else:
            compared.append(index)
    if mismatched:
        raise EndorsementMismatch(
            f"GPU measurements at indexes {mismatched} match none of the RIMs' golden values",
            code=Code.GPU_MEASUREMENT_MISMATCH,
        )
    return Comparison(tuple(compared), tuple(skipped))
