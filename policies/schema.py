"""Strict validation of a decoded policy document (schema 1) into ``policies.model`` values.

Unknown keys are errors, types are exact (a bool is not an int, a string is not a list), hex values have
the length of the field they pin, and release rules may only name groups that appraisal defines. Every
error names the key path (``appraisal.snp.groups[1].measurements[0]``) so ``loader`` can add the line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from attestation.claims import TcbStatus
from kms.envelope.names import KEY_PATTERN_RULE, is_valid_key_pattern
from policies.errors import PolicyError
from policies.model import (
    GPU_ARCHITECTURES,
    SCHEMA_VERSION,
    SNP_SIGNING_KEYS,
    AppraisalRules,
    GpuGroup,
    GpuRules,
    OnFailure,
    Policy,
    Purpose,
    ReleaseRule,
    ReleaseRules,
    Simulated,
    SnpGroup,
    SnpMinTcb,
    SnpRules,
    TdxGroup,
    TdxImage,
    TdxRules,
)

MEASUREMENT_BYTES = 48  # SNP MEASUREMENT, TDX MRTD, RTMRs, MRCONFIGID, MRSEAM
SNP_HOST_DATA_BYTES = 32
SNP_PRODUCTS = ("Milan", "Genoa", "Turin")
MAX_SECONDS = 366 * 24 * 3600
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX = re.compile(r"[0-9a-fA-F]*")
# Never acceptable, whatever a policy says: Intel revoked the level, or the status is not a TDX one.
_TDX_STATUS_NEVER = frozenset({TcbStatus.REVOKED, TcbStatus.NOT_APPLICABLE})

_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T")
_MISSING: Any = object()


class SchemaError(PolicyError):
    """A schema violation at ``path``; ``loader`` re-raises it with the source and line."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path or '<document>'}: {what}", path=path)
        self.what = what


def _type_name(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return names.get(type(value), type(value).__name__)


class _Table:
    """One TOML table being read; ``close()`` rejects whatever keys were not read."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise SchemaError(path, f"expected a table, got {_type_name(data)}")
        self.data: dict[str, Any] = data
        self.path = path
        self._read: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, check: Callable[[object, str], _T], default: _T = _MISSING) -> _T:
        self._read.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise SchemaError(self.sub(key), "required key is missing")
            return default
        return check(self.data[key], self.sub(key))

    def table(self, key: str) -> _Table | None:
        self._read.add(key)
        return _Table(self.data[key], self.sub(key)) if key in self.data else None

    def required_table(self, key: str) -> _Table:
        table = self.table(key)
        if table is None:
            raise SchemaError(self.sub(key), "required table is missing")
        return table

    def tables(self, key: str) -> list[_Table]:
        items: list[Any] = self.get(key, _array, [])
        return [_Table(item, f"{self.sub(key)}[{i}]") for i, item in enumerate(items)]

    def close(self) -> None:
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise SchemaError(self.sub(unknown[0]), "unknown key (check the spelling against the schema)")


def _array(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise SchemaError(path, f"expected an array, got {_type_name(value)}")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise SchemaError(path, f"expected a string, got {_type_name(value)}")
    return value


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise SchemaError(path, f"expected true or false, got {_type_name(value)}")
    return value


def _int_in(low: int, high: int) -> Callable[[object, str], int]:
    def check(value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f"expected an integer, got {_type_name(value)}")
        if not low <= value <= high:
            raise SchemaError(path, f"{value} is outside {low}..{high}")
        return value

    return check


def _seconds(value: object, path: str) -> int:
    return _int_in(1, MAX_SECONDS)(value, path)


def _name(value: object, path: str) -> str:
    text = _string(value, path)
    if not _NAME.fullmatch(text):
        raise SchemaError(path, f"{text!r} is not a name (letters, digits, '.', '_', '-'; at most 64)")
    return text


def _choice(enum: type[_E]) -> Callable[[object, str], _E]:
    def check(value: object, path: str) -> _E:
        text = _string(value, path)
        try:
            return enum(text)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in enum)
            raise SchemaError(path, f"{text!r} is not one of {allowed}") from None

    return check


def _hex(nbytes: int) -> Callable[[object, str], bytes]:
    def check(value: object, path: str) -> bytes:
        text = _string(value, path)
        if not _HEX.fullmatch(text):
            raise SchemaError(path, "expected hexadecimal digits only")
        if len(text) != 2 * nbytes:
            raise SchemaError(path, f"expected {2 * nbytes} hex digits ({nbytes} bytes), got {len(text)}")
        return bytes.fromhex(text)

    return check


def _list_of(
    item: Callable[[object, str], _T], *, non_empty: bool = False
) -> Callable[[object, str], list[_T]]:
    def check(value: object, path: str) -> list[_T]:
        items = _array(value, path)
        if non_empty and not items:
            raise SchemaError(path, "must not be empty")
        return [item(v, f"{path}[{i}]") for i, v in enumerate(items)]

    return check


def _key_pattern(value: object, path: str) -> str:
    text = _string(value, path)
    if not is_valid_key_pattern(text):
        raise SchemaError(path, f"{text[:160]!r} does not follow the key-name rule: {KEY_PATTERN_RULE}")
    return text


def _unique_names(names: list[tuple[str, str]], what: str) -> None:
    seen: set[str] = set()
    for path, name in names:
        if name in seen:
            raise SchemaError(path, f"{what} {name!r} is defined twice")
        seen.add(name)


def _snp_min_tcb(t: _Table, product: str) -> SnpMinTcb:
    byte = _int_in(0, 255)
    value = SnpMinTcb(
        product=product,
        bootloader=t.get("bootloader", byte),
        tee=t.get("tee", byte),
        snp=t.get("snp", byte),
        microcode=t.get("microcode", byte),
        fmc=t.get("fmc", byte, None),
    )
    t.close()
    return value


def _snp_group(t: _Table) -> SnpGroup:
    host_data = t.get("host_data", _list_of(_hex(SNP_HOST_DATA_BYTES), non_empty=True), None)
    group = SnpGroup(
        name=t.get("name", _name),
        measurements=frozenset(t.get("measurements", _list_of(_hex(MEASUREMENT_BYTES), non_empty=True))),
        host_data=frozenset(host_data) if host_data is not None else None,
    )
    t.close()
    return group


def _snp(t: _Table) -> SnpRules:
    products = t.get("products", _list_of(_choice_of(SNP_PRODUCTS), non_empty=True), list(SNP_PRODUCTS))
    min_tables = t.required_table("min_tcb")
    for product in min_tables.data:
        if product not in products:
            raise SchemaError(
                min_tables.sub(product), f"{product!r} is not in products; add it there or remove this"
            )
    minimums = []
    for product in products:
        sub = min_tables.table(product)
        if sub is None:
            raise SchemaError(min_tables.sub(product), f"accepted product {product} needs a minimum TCB")
        minimums.append(_snp_min_tcb(sub, product))
    group_tables = t.tables("groups")
    groups = [_snp_group(g) for g in group_tables]
    _unique_names([(tb.sub("name"), g.name) for tb, g in zip(group_tables, groups, strict=True)], "SNP group")
    rules = SnpRules(
        products=frozenset(products),
        min_tcb=tuple(minimums),
        forbid_debug=t.get("forbid_debug", _bool, True),
        allow_smt=t.get("allow_smt", _bool, True),
        forbid_migration_agent=t.get("forbid_migration_agent", _bool, True),
        require_single_socket=t.get("require_single_socket", _bool, False),
        max_vmpl=t.get("max_vmpl", _int_in(0, 3), 0),
        signing_keys=frozenset(
            t.get(
                "signing_keys", _list_of(_choice_of(SNP_SIGNING_KEYS), non_empty=True), list(SNP_SIGNING_KEYS)
            )
        ),
        groups=tuple(groups),
    )
    t.close()
    return rules


def _choice_of(allowed: tuple[str, ...]) -> Callable[[object, str], str]:
    def check(value: object, path: str) -> str:
        text = _string(value, path)
        if text not in allowed:
            raise SchemaError(path, f"{text!r} is not one of {', '.join(map(repr, allowed))}")
        return text

    return check


def _tdx_image(t: _Table) -> TdxImage:
    h = _hex(MEASUREMENT_BYTES)
    image = TdxImage(
        mrtd=t.get("mrtd", h),
        rtmrs=(
            t.get("rtmr0", h, None),
            t.get("rtmr1", h, None),
            t.get("rtmr2", h, None),
            t.get("rtmr3", h, None),
        ),
    )
    t.close()
    return image


def _tdx_group(t: _Table) -> TdxGroup:
    images = [_tdx_image(i) for i in t.tables("images")]
    if not images:
        raise SchemaError(t.sub("images"), "a TDX group needs at least one [[...images]] entry with an mrtd")
    mrconfigid = t.get("mrconfigid", _list_of(_hex(MEASUREMENT_BYTES), non_empty=True), None)
    group = TdxGroup(
        name=t.get("name", _name),
        images=tuple(images),
        mrconfigid=frozenset(mrconfigid) if mrconfigid is not None else None,
    )
    t.close()
    return group


def _tdx_status(value: object, path: str) -> TcbStatus:
    status = _choice(TcbStatus)(value, path)
    if status in _TDX_STATUS_NEVER:
        raise SchemaError(path, f"{status.value!r} can never be an acceptable TDX TCB status")
    return status


def _tdx(t: _Table) -> TdxRules:
    group_tables = t.tables("groups")
    groups = [_tdx_group(g) for g in group_tables]
    _unique_names([(tb.sub("name"), g.name) for tb, g in zip(group_tables, groups, strict=True)], "TDX group")
    mrseam = t.get("mrseam", _list_of(_hex(MEASUREMENT_BYTES), non_empty=True), None)
    rules = TdxRules(
        tcb_statuses=frozenset(
            t.get("tcb_statuses", _list_of(_tdx_status, non_empty=True), [TcbStatus.UP_TO_DATE])
        ),
        forbid_debug=t.get("forbid_debug", _bool, True),
        forbidden_advisories=frozenset(t.get("forbidden_advisories", _list_of(_name), list[str]())),
        mrseam=frozenset(mrseam) if mrseam is not None else None,
        groups=tuple(groups),
    )
    t.close()
    return rules


_DRIVER = re.compile(r"[0-9]{1,4}(\.[0-9]{1,4}){0,3}")
_VBIOS = re.compile(r"[0-9A-F]{2}(\.[0-9A-F]{2}){4}")
_UEID = re.compile(r"[A-Za-z0-9:._-]{1,128}")
MAX_GPUS = 16


def driver_version(text: str) -> tuple[int, ...] | None:
    """``550.90.07`` -> (550, 90, 7); None for anything else (the GPU claims carry the report's text)."""
    return tuple(int(p) for p in text.split(".")) if _DRIVER.fullmatch(text) else None


def _driver(value: object, path: str) -> tuple[int, ...]:
    parsed = driver_version(_string(value, path))
    if parsed is None:
        raise SchemaError(path, 'expected a driver version such as "550.90.07"')
    return parsed


def _vbios(value: object, path: str) -> str:
    text = _string(value, path)
    if not _VBIOS.fullmatch(text):
        raise SchemaError(path, 'expected a VBIOS version such as "96.00.9F.00.01" (upper-case hex)')
    return text


def _ueid(value: object, path: str) -> str:
    text = _string(value, path)
    if not _UEID.fullmatch(text):
        raise SchemaError(path, 'expected a GPU UEID as the claims show it (e.g. "NVIDIA:GH100:..." or hex)')
    return text


def _gpu_group(t: _Table, groups: frozenset[str]) -> GpuGroup:
    name = t.get("name", _name)
    if name not in groups:
        raise SchemaError(t.sub("name"), f"group {name!r} is not defined under appraisal.snp/tdx.groups")
    ueids = t.get("ueids", _list_of(_ueid, non_empty=True), None)
    group = GpuGroup(
        name=name,
        min_count=t.get("min_count", _int_in(1, MAX_GPUS), 1),
        ueids=frozenset(ueids) if ueids is not None else None,
    )
    t.close()
    return group


def _gpu(t: _Table, groups: frozenset[str]) -> GpuRules:
    group_tables = t.tables("groups")
    gpu_groups = [_gpu_group(g, groups) for g in group_tables]
    _unique_names(
        [(tb.sub("name"), g.name) for tb, g in zip(group_tables, gpu_groups, strict=True)], "GPU group"
    )
    vbios = t.get("vbios_versions", _list_of(_vbios, non_empty=True), None)
    rules = GpuRules(
        min_count=t.get("min_count", _int_in(0, MAX_GPUS), 0),
        architectures=frozenset(
            t.get(
                "architectures",
                _list_of(_choice_of(GPU_ARCHITECTURES), non_empty=True),
                list(GPU_ARCHITECTURES),
            )
        ),
        min_driver=t.get("min_driver", _driver, None),
        vbios_versions=frozenset(vbios) if vbios is not None else None,
        require_rim_match=t.get("require_rim_match", _bool, True),
        require_cc_mode=t.get("require_cc_mode", _bool, True),
        groups=tuple(gpu_groups),
    )
    t.close()
    return rules


def _appraisal(t: _Table) -> AppraisalRules:
    snp = t.table("snp")
    tdx = t.table("tdx")
    snp_rules = _snp(snp) if snp is not None else None
    tdx_rules = _tdx(tdx) if tdx is not None else None
    cpu_groups = frozenset(
        g.name for rules in (snp_rules, tdx_rules) if rules is not None for g in rules.groups
    )
    gpu = t.table("gpu")
    rules = AppraisalRules(
        snp=snp_rules,
        tdx=tdx_rules,
        gpu=_gpu(gpu, cpu_groups) if gpu is not None else None,
        simulated_evidence=t.get("simulated_evidence", _choice(Simulated), Simulated.DENY),
        collateral_expired=t.get("collateral_expired", _choice(OnFailure), OnFailure.DENY),
        unchecked_revocation=t.get("unchecked_revocation", _choice(OnFailure), OnFailure.DENY),
        require_operator_approval=t.get("require_operator_approval", _bool, False),
    )
    t.close()
    return rules


def _release_rule(
    t: _Table, index: int, defaults: ReleaseRules, groups: frozenset[str], gpu_groups: frozenset[str]
) -> ReleaseRule:
    names = t.get("groups", _list_of(_name, non_empty=True))
    for i, name in enumerate(names):
        if name not in groups:
            raise SchemaError(
                f"{t.sub('groups')}[{i}]", f"group {name!r} is not defined under appraisal.snp/tdx.groups"
            )
    require_gpu = t.get("require_gpu_attested", _bool, False)
    if require_gpu:
        for i, name in enumerate(names):
            if name not in gpu_groups:
                raise SchemaError(
                    f"{t.sub('groups')}[{i}]",
                    f"the rule requires GPU-attested groups, and {name!r} is not one of appraisal.gpu.groups",
                )
    rule = ReleaseRule(
        index=index,
        name=t.get("name", _name, f"rule-{index}"),
        groups=frozenset(names),
        keys=tuple(t.get("keys", _list_of(_key_pattern, non_empty=True))),
        purposes=frozenset(t.get("purposes", _list_of(_choice(Purpose), non_empty=True))),
        lease_seconds=t.get("lease_seconds", _seconds, defaults.lease_seconds),
        max_evidence_age=t.get("max_evidence_age", _seconds, defaults.max_evidence_age),
        require_gpu_attested=require_gpu,
        lineage_restricted=t.get("lineage_restricted", _bool, False),
    )
    t.close()
    return rule


def _release(t: _Table | None, groups: frozenset[str], gpu_groups: frozenset[str]) -> ReleaseRules:
    if t is None:
        return ReleaseRules()
    d = t.table("defaults")
    defaults = ReleaseRules()
    if d is not None:
        defaults = ReleaseRules(
            lease_seconds=d.get("lease_seconds", _seconds, defaults.lease_seconds),
            max_evidence_age=d.get("max_evidence_age", _seconds, defaults.max_evidence_age),
        )
        d.close()
    rule_tables = t.tables("rules")
    rules = tuple(_release_rule(r, i, defaults, groups, gpu_groups) for i, r in enumerate(rule_tables))
    _unique_names(
        [(r.sub("name"), rule.name) for r, rule in zip(rule_tables, rules, strict=True)], "release rule"
    )
    t.close()
    return ReleaseRules(defaults.lease_seconds, defaults.max_evidence_age, rules)


def build_policy(document: dict[str, Any], source: str) -> Policy:
    """Validate a decoded TOML document; raises ``SchemaError`` naming the first offending key path."""
    root = _Table(document, "")
    version = root.get("schema", _int_in(0, 2**31))
    if version != SCHEMA_VERSION:
        raise SchemaError(
            "schema", f"schema version {version} is not supported (this build reads {SCHEMA_VERSION})"
        )
    appraisal = _appraisal(root.required_table("appraisal"))
    partial = Policy(appraisal=appraisal, release=ReleaseRules(), source=source)
    gpu_groups = frozenset(g.name for g in appraisal.gpu.groups) if appraisal.gpu is not None else frozenset()
    release = _release(root.table("release"), partial.groups(), gpu_groups)
    root.close()
    return Policy(appraisal=appraisal, release=release, version=version, source=source)
