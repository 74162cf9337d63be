"""Appraisal rules: small objects that each check one property of verified claims.

A rule passes by returning and fails by raising ``Violation`` with one or more coded reasons. A claim a
rule needs but cannot read (missing, wrong type) is a failure too (POLICY_CLAIM_INVALID): rules fail
closed. ``evaluate`` runs every rule and collects every failure, so an operator sees all of them at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from attestation.claims import Claims, TcbStatus, Tee
from policies.errors import Code, Reason
from policies.model import SnpGroup, SnpMinTcb, TdxGroup

_T = TypeVar("_T")


class Violation(Exception):
    """A rule failed. ``warn`` marks a failure the policy downgrades to a warning."""

    def __init__(self, *reasons: Reason, warn: bool = False) -> None:
        super().__init__("; ".join(f"{r.code}: {r.message}" for r in reasons))
        self.reasons = reasons
        self.warn = warn


def fail(code: Code, message: str) -> Violation:
    return Violation(Reason(code, message))


class Rule(Protocol):
    @property
    def name(self) -> str: ...

    def check(self, claims: Claims, now: datetime) -> None:
        """Return if the claims pass; raise ``Violation`` otherwise."""


def detail(claims: Claims, key: str, kind: type[_T]) -> _T:
    """A TEE-specific claim of exactly ``kind`` (a bool is not an int), or a POLICY_CLAIM_INVALID failure."""
    if key not in claims.details:
        raise fail(Code.POLICY_CLAIM_INVALID, f"the claims carry no details.{key}")
    value = claims.details[key]
    if type(value) is not kind:
        raise fail(
            Code.POLICY_CLAIM_INVALID, f"details.{key} is a {type(value).__name__}, expected {kind.__name__}"
        )
    return value


def evaluate(rules: Iterable[Rule], claims: Claims, now: datetime) -> tuple[list[Reason], list[Reason]]:
    """Run every rule; return (failures, warnings). A rule that crashes counts as failed."""
    failures: list[Reason] = []
    warnings: list[Reason] = []
    for rule in rules:
        try:
            rule.check(claims, now)
        except Violation as v:
            (warnings if v.warn else failures).extend(v.reasons)
        except Exception as exc:  # fail closed on claims of a shape no rule expected
            failures.append(
                Reason(
                    Code.POLICY_RULE_ERROR,
                    f"rule {rule.name} could not read the claims ({type(exc).__name__})",
                )
            )
    return failures, warnings


# ---- combinators and rules for any TEE ---------------------------------------------------------


@dataclass(frozen=True)
class Warn:
    """Report ``rule``'s failures as warnings instead of failing the appraisal."""

    rule: Rule

    @property
    def name(self) -> str:
        return f"warn({self.rule.name})"

    def check(self, claims: Claims, now: datetime) -> None:
        try:
            self.rule.check(claims, now)
        except Violation as v:
            raise Violation(*v.reasons, warn=True) from None


@dataclass(frozen=True)
class TeeNotAllowed:
    name = "tee"

    def check(self, claims: Claims, now: datetime) -> None:
        raise fail(Code.POLICY_TEE_NOT_ALLOWED, f"the policy has no [appraisal.{claims.tee.value}] section")


@dataclass(frozen=True)
class NotSimulated:
    name = "simulated_evidence"

    def check(self, claims: Claims, now: datetime) -> None:
        if claims.simulated is not False:
            raise fail(
                Code.POLICY_SIMULATED_EVIDENCE, "evidence is from the TEE simulator; the policy denies it"
            )


@dataclass(frozen=True)
class RevocationChecked:
    """The verifier saw a current CRL for the chain (it may be told not to require one, for archives)."""

    name = "unchecked_revocation"

    def check(self, claims: Claims, now: datetime) -> None:
        if claims.revocation_checked is not True:
            raise fail(
                Code.POLICY_REVOCATION_NOT_CHECKED,
                "the evidence was verified without a current CRL for its certificate chain, so a revoked "
                "platform key would not have been noticed",
            )


@dataclass(frozen=True)
class NoDebug:
    name = "forbid_debug"

    def check(self, claims: Claims, now: datetime) -> None:
        if claims.debug is not False:
            raise fail(Code.POLICY_DEBUG_FORBIDDEN, f"the {claims.tee.value.upper()} guest allows debugging")


@dataclass(frozen=True)
class CollateralFresh:
    """Collateral that was valid at verification may have expired since (stored claims are re-appraised)."""

    name = "collateral_expired"

    def check(self, claims: Claims, now: datetime) -> None:
        # SNP verified without a current CRL (opt-out) and TDX without TCB info (status Unknown) used none.
        absent_ok = claims.tee is Tee.SNP or claims.tcb_status is TcbStatus.UNKNOWN
        if "collateral_expires" not in claims.details and absent_ok:
            return
        text = detail(claims, "collateral_expires", str)
        try:
            expires = datetime.fromisoformat(text)
        except ValueError:
            raise fail(
                Code.POLICY_CLAIM_INVALID, f"details.collateral_expires {text!r} is not ISO 8601"
            ) from None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        if expires <= now:
            raise fail(Code.POLICY_COLLATERAL_EXPIRED, f"collateral expired at {expires.isoformat()}")


# ---- SEV-SNP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductIn:
    products: frozenset[str]
    name = "snp.products"

    def check(self, claims: Claims, now: datetime) -> None:
        if claims.product not in self.products:
            raise fail(
                Code.POLICY_PRODUCT_NOT_ALLOWED,
                f"product {claims.product!r} is not accepted (accepted: {', '.join(sorted(self.products))})",
            )


@dataclass(frozen=True)
class MinimumTcb:
    """Every component of the reported TCB (the one the VCEK certifies) at or above the product's minimum."""

    minimums: tuple[SnpMinTcb, ...]
    name = "snp.min_tcb"

    def check(self, claims: Claims, now: datetime) -> None:
        minimum = next((m for m in self.minimums if m.product == claims.product), None)
        if minimum is None:
            raise fail(Code.POLICY_TCB_BELOW_MINIMUM, f"no minimum TCB is set for product {claims.product!r}")
        below = []
        for component in ("bootloader", "tee", "snp", "microcode", "fmc"):
            required: int | None = getattr(minimum, component)
            if required is None:
                continue
            value = claims.tcb.get(component)
            if type(value) is not int:
                below.append(
                    Reason(Code.POLICY_CLAIM_INVALID, f"the claims carry no integer tcb.{component}")
                )
            elif value < required:
                below.append(
                    Reason(
                        Code.POLICY_TCB_BELOW_MINIMUM,
                        f"TCB component {component} is {value}, below the minimum {required} for {claims.product}",
                    )
                )
        if below:
            raise Violation(*below)


@dataclass(frozen=True)
class MaxVmpl:
    maximum: int
    name = "snp.max_vmpl"

    def check(self, claims: Claims, now: datetime) -> None:
        vmpl = detail(claims, "vmpl", int)
        if vmpl > self.maximum:
            raise fail(
                Code.POLICY_VMPL_TOO_HIGH,
                f"the report was requested at VMPL {vmpl}; maximum is {self.maximum}",
            )


@dataclass(frozen=True)
class PolicyBitClear:
    """An SNP guest-policy permission the policy forbids (SMT, migration agent)."""

    key: str
    code: Code
    what: str

    @property
    def name(self) -> str:
        return f"snp.{self.key}"

    def check(self, claims: Claims, now: datetime) -> None:
        if detail(claims, self.key, bool):
            raise fail(self.code, f"the guest policy allows {self.what}; the appraisal policy forbids it")


@dataclass(frozen=True)
class SingleSocket:
    name = "snp.require_single_socket"

    def check(self, claims: Claims, now: datetime) -> None:
        if not detail(claims, "single_socket", bool):
            raise fail(
                Code.POLICY_SINGLE_SOCKET_REQUIRED, "the guest policy does not require a single socket"
            )


@dataclass(frozen=True)
class SigningKeyIn:
    keys: frozenset[str]
    name = "snp.signing_keys"

    def check(self, claims: Claims, now: datetime) -> None:
        key = detail(claims, "signing_key", str).lower()
        if key not in self.keys:
            raise fail(
                Code.POLICY_SIGNING_KEY_NOT_ALLOWED,
                f"the report is signed by a {key.upper()}; accepted: {', '.join(sorted(self.keys))}",
            )


# ---- Intel TDX -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcbStatusIn:
    statuses: frozenset[TcbStatus]
    name = "tdx.tcb_statuses"

    def check(self, claims: Claims, now: datetime) -> None:
        if claims.tcb_status not in self.statuses:
            raise fail(
                Code.POLICY_TCB_STATUS_NOT_ACCEPTED,
                f"TDX TCB status {claims.tcb_status.value} is not accepted "
                f"(accepted: {', '.join(sorted(s.value for s in self.statuses))})",
            )


@dataclass(frozen=True)
class NoForbiddenAdvisories:
    forbidden: frozenset[str]
    name = "tdx.forbidden_advisories"

    def check(self, claims: Claims, now: datetime) -> None:
        if "advisory_ids" not in claims.details and claims.tcb_status is TcbStatus.UP_TO_DATE:
            return  # an up-to-date level lists no advisories
        ids = detail(claims, "advisory_ids", list)
        hits = sorted({str(i) for i in ids} & self.forbidden)
        if hits:
            raise fail(
                Code.POLICY_ADVISORY_FORBIDDEN, f"the platform's TCB level is affected by {', '.join(hits)}"
            )


@dataclass(frozen=True)
class MrseamIn:
    values: frozenset[bytes]
    name = "tdx.mrseam"

    def check(self, claims: Claims, now: datetime) -> None:
        mrseam = detail(claims, "mrseam", str).lower()
        if mrseam not in {v.hex() for v in self.values}:
            raise fail(Code.POLICY_MRSEAM_NOT_ALLOWED, f"MRSEAM {mrseam} is not an accepted TDX module")


# ---- node groups ---------------------------------------------------------------------------------


def snp_groups(groups: Sequence[SnpGroup], claims: Claims) -> tuple[tuple[str, ...], list[Reason]]:
    """The groups the claims belong to, and the near misses (measurement matched, host data did not)."""
    matched: list[str] = []
    misses: list[Reason] = []
    for group in groups:
        if claims.measurement not in group.measurements:
            continue
        if group.host_data is not None and claims.host_data not in group.host_data:
            misses.append(
                Reason(
                    Code.POLICY_HOST_DATA_MISMATCH,
                    f"measurement is in group {group.name!r} but HOST_DATA {claims.host_data.hex()} is not",
                )
            )
            continue
        matched.append(group.name)
    return tuple(matched), misses


def tdx_groups(groups: Sequence[TdxGroup], claims: Claims) -> tuple[tuple[str, ...], list[Reason]]:
    """As ``snp_groups``: MRTD picks candidate images, pinned RTMRs and MRCONFIGID must then match."""
    matched: list[str] = []
    misses: list[Reason] = []
    for group in groups:
        image_matched = False
        for k, image in enumerate(group.images):
            if claims.measurement != image.mrtd:
                continue
            bad = [
                i
                for i, want in enumerate(image.rtmrs)
                if want is not None and (i >= len(claims.rtmrs) or claims.rtmrs[i] != want)
            ]
            if bad:
                misses.append(
                    Reason(
                        Code.POLICY_RTMR_MISMATCH,
                        f"MRTD matches group {group.name!r} image {k} but "
                        f"{', '.join(f'RTMR{i}' for i in bad)} differ",
                    )
                )
                continue
            image_matched = True
            break
        if not image_matched:
            continue
        if group.mrconfigid is not None and claims.host_data not in group.mrconfigid:
            misses.append(
                Reason(
                    Code.POLICY_HOST_DATA_MISMATCH,
                    f"image is in group {group.name!r} but MRCONFIGID {claims.host_data.hex()} is not",
                )
            )
            continue
        matched.append(group.name)
    return tuple(matched), misses


@dataclass(frozen=True)
class InSomeGroup:
    """The node's image is one a group allows; near misses say which part differed."""

    groups: tuple[SnpGroup, ...] | tuple[TdxGroup, ...]
    name = "groups"

    def match(self, claims: Claims) -> tuple[tuple[str, ...], list[Reason]]:
        if claims.tee is Tee.SNP:
            return snp_groups([g for g in self.groups if isinstance(g, SnpGroup)], claims)
        return tdx_groups([g for g in self.groups if isinstance(g, TdxGroup)], claims)

    def check(self, claims: Claims, now: datetime) -> None:
        matched, misses = self.match(claims)
        if matched:
            return
        if misses:
            raise Violation(*misses)
        what = "MEASUREMENT" if claims.tee is Tee.SNP else "MRTD"
        where = f"{claims.tee.value.upper()} group" if self.groups else "group (the policy defines none)"
        raise fail(Code.POLICY_MEASUREMENT_NOT_ALLOWED, f"{what} {claims.measurement.hex()} is in no {where}")
