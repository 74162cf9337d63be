"""``[appraisal.gpu]`` rules: the node's verified GPU claims, stored beside its CPU claims.

The control plane verifies every GPU a node presents (``attestation.gpu``) and stores one entry per GPU in
``claims.details["gpus"]`` (the shape of ``GPU_CLAIM_FIELDS``); no entry means the node presented no GPU.
The rules read only that list, so a policy change re-appraises stored claims without re-verification. Each
rule reports every GPU that fails it; a list or entry of the wrong shape fails closed (POLICY_CLAIM_INVALID).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attestation.claims import Claims
from policies import rules as r
from policies.errors import Code, Reason
from policies.model import GpuGroup, GpuRules
from policies.schema import driver_version

GPUS_KEY = "gpus"
# what each entry of details["gpus"] holds (kms/gpu_appraisal.py writes it)
GPU_CLAIM_FIELDS: Mapping[str, type] = {
    "architecture": str,
    "ueid": str,
    "driver_version": str,
    "vbios_version": str,
    "measurement_result": str,  # "success" when every active RIM index matched
    "rim_versions_match": bool,  # both RIMs are for the report's driver and VBIOS versions
    "cc_mode": str,  # "on": a CC attestation report signed by the GPU's firmware; "devtools" if reported
    "simulated": bool,
}


def gpu_claims(claims: Claims) -> list[dict[str, Any]]:
    """The node's GPU entries ([] when it presented none), each checked for ``GPU_CLAIM_FIELDS``."""
    value = claims.details.get(GPUS_KEY, [])
    if not isinstance(value, list):
        raise r.fail(Code.POLICY_CLAIM_INVALID, f"details.{GPUS_KEY} is a {type(value).__name__}, not a list")
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise r.fail(Code.POLICY_CLAIM_INVALID, f"details.{GPUS_KEY}[{i}] is not a table")
        for key, kind in GPU_CLAIM_FIELDS.items():
            if type(entry.get(key)) is not kind:
                raise r.fail(
                    Code.POLICY_CLAIM_INVALID,
                    f"details.{GPUS_KEY}[{i}].{key} is missing or not a {kind.__name__}",
                )
    return value


def _label(i: int, gpu: Mapping[str, Any]) -> str:
    return f"GPU {i} ({gpu['ueid'][:40]})"


def _each(claims: Claims, check: Any) -> None:
    reasons = [reason for i, gpu in enumerate(gpu_claims(claims)) if (reason := check(i, gpu)) is not None]
    if reasons:
        raise r.Violation(*reasons)


@dataclass(frozen=True)
class GpuCount:
    minimum: int
    name = "gpu.min_count"

    def check(self, claims: Claims, now: datetime) -> None:
        count = len(gpu_claims(claims))
        if count < self.minimum:
            raise r.fail(
                Code.POLICY_GPU_COUNT,
                f"the node presented {count} verified GPU(s); the policy requires at least {self.minimum}",
            )


@dataclass(frozen=True)
class GpuArchitectureIn:
    architectures: frozenset[str]
    name = "gpu.architectures"

    def check(self, claims: Claims, now: datetime) -> None:
        accepted = ", ".join(sorted(self.architectures))

        def one(i: int, gpu: Mapping[str, Any]) -> Reason | None:
            if gpu["architecture"] in self.architectures:
                return None
            return Reason(
                Code.POLICY_GPU_ARCHITECTURE_NOT_ALLOWED,
                f"{_label(i, gpu)} is {gpu['architecture']}; accepted: {accepted}",
            )

        _each(claims, one)


@dataclass(frozen=True)
class GpuMinDriver:
    minimum: tuple[int, ...]
    name = "gpu.min_driver"

    def check(self, claims: Claims, now: datetime) -> None:
        wanted = ".".join(str(p) for p in self.minimum)

        def one(i: int, gpu: Mapping[str, Any]) -> Reason | None:
            version = driver_version(gpu["driver_version"])
            if version is None:
                return Reason(
                    Code.POLICY_CLAIM_INVALID,
                    f"{_label(i, gpu)}: driver version {gpu['driver_version'][:40]!r}",
                )
            if version >= self.minimum:
                return None
            return Reason(
                Code.POLICY_GPU_DRIVER_BELOW_MINIMUM,
                f"{_label(i, gpu)} runs driver {gpu['driver_version']}, below the minimum {wanted}",
            )

        _each(claims, one)


@dataclass(frozen=True)
class GpuVbiosIn:
    versions: frozenset[str]
    name = "gpu.vbios_versions"

    def check(self, claims: Claims, now: datetime) -> None:
        def one(i: int, gpu: Mapping[str, Any]) -> Reason | None:
            if gpu["vbios_version"] in self.versions:
                return None
            return Reason(
                Code.POLICY_GPU_VBIOS_NOT_ALLOWED,
                f"{_label(i, gpu)} runs VBIOS {gpu['vbios_version']}, not an allowed one",
            )

        _each(claims, one)


@dataclass(frozen=True)
class GpuRimMatched:
    name = "gpu.require_rim_match"

    def check(self, claims: Claims, now: datetime) -> None:
        def one(i: int, gpu: Mapping[str, Any]) -> Reason | None:
            if gpu["measurement_result"] == "success" and gpu["rim_versions_match"]:
                return None
            return Reason(
                Code.POLICY_GPU_RIM_NOT_MATCHED,
                f"{_label(i, gpu)}: measurements {gpu['measurement_result']}, RIMs for the reported versions: "
                f"{gpu['rim_versions_match']}",
            )

        _each(claims, one)


@dataclass(frozen=True)
class GpuCcMode:
    name = "gpu.require_cc_mode"

    def check(self, claims: Claims, now: datetime) -> None:
        def one(i: int, gpu: Mapping[str, Any]) -> Reason | None:
            if gpu["cc_mode"] == "on":
                return None
            return Reason(
                Code.POLICY_GPU_CC_MODE_REQUIRED, f"{_label(i, gpu)}: CC mode is {gpu['cc_mode'][:20]}"
            )

        _each(claims, one)


@dataclass(frozen=True)
class GpuNotSimulated:
    name = "gpu.simulated_evidence"

    def check(self, claims: Claims, now: datetime) -> None:
        def one(i: int, gpu: Mapping[str, Any]) -> Reason | None:
            if not gpu["simulated"]:
                return None
            return Reason(
                Code.POLICY_SIMULATED_EVIDENCE, f"{_label(i, gpu)} is simulated; the policy denies it"
            )

        _each(claims, one)


def gpu_rules(p: GpuRules, *, deny_simulated: bool) -> list[r.Rule]:
    rules: list[r.Rule] = [GpuCount(p.min_count), GpuArchitectureIn(p.architectures)]
    if deny_simulated:
        rules.append(GpuNotSimulated())
    if p.min_driver is not None:
        rules.append(GpuMinDriver(p.min_driver))
    if p.vbios_versions is not None:
        rules.append(GpuVbiosIn(p.vbios_versions))
    if p.require_rim_match:
        rules.append(GpuRimMatched())
    if p.require_cc_mode:
        rules.append(GpuCcMode())
    return rules


def _group_miss(group: GpuGroup, gpus: Sequence[Mapping[str, Any]]) -> Reason | None:
    if len(gpus) < group.min_count:
        return Reason(
            Code.POLICY_GPU_COUNT,
            f"group {group.name!r} is GPU-attested: it needs {group.min_count} GPU(s), the node presented {len(gpus)}",
        )
    if group.ueids is not None:
        strangers = [g["ueid"] for g in gpus if g["ueid"] not in group.ueids]
        if strangers:
            return Reason(
                Code.POLICY_GPU_UEID_NOT_ALLOWED,
                f"group {group.name!r} admits listed GPUs only; not listed: {', '.join(s[:40] for s in strangers[:4])}",
            )
    return None


@dataclass(frozen=True)
class InSomeGpuGroup:
    """``InSomeGroup`` whose GPU-attested groups are kept only when the node's GPUs satisfy them."""

    inner: r.InSomeGroup
    gpu: GpuRules
    name = "groups"

    def match(self, claims: Claims) -> tuple[tuple[str, ...], list[Reason]]:
        matched, misses = self.inner.match(claims)
        gpus = gpu_claims(claims)
        kept: list[str] = []
        for name in matched:
            group = self.gpu.group(name)
            miss = _group_miss(group, gpus) if group is not None else None
            if miss is None:
                kept.append(name)
            else:
                misses.append(miss)
        return tuple(kept), misses

    def check(self, claims: Claims, now: datetime) -> None:
        matched, misses = self.match(claims)
        if matched:
            return
        if misses:
            raise r.Violation(*misses)
        self.inner.check(claims, now)
