"""Intel PCS v4 JSON collateral: TDX TCB info (id ``TDX``, version 3) and QE identity (``TD_QE``, v2).

PCS serves ``{"tcbInfo": {...}, "signature": "<hex r||s>"}``; the signature covers the exact bytes of the
inner object as they appear in the body. ``split_signed`` cuts that substring out of the raw text with
the JSON scanner itself, so nothing is re-serialised. Duplicate keys are refused at every level.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from attestation.errors import Code, CollateralError

TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)
ISV_TCB_STATUSES = frozenset({"UpToDate", "OutOfDate", "Revoked"})  # QE and TDX module levels


def invalid(message: str) -> CollateralError:
    return CollateralError(
        message,
        code=Code.TDX_COLLATERAL_INVALID,
        hint="import the TCB info / QE identity exactly as Intel PCS serves it",
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise invalid(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def split_signed(raw: bytes, member: str) -> tuple[bytes, bytes]:
    """Return (exact bytes of ``member``'s object, signature bytes) from a PCS response body."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("collateral JSON is not UTF-8") from None
    spans: dict[str, tuple[int, int, Any]] = {}
    try:
        i = _skip_ws(text, 0)
        if text[i : i + 1] != "{":
            raise invalid("collateral JSON is not an object")
        i = _skip_ws(text, i + 1)
        while text[i : i + 1] != "}":
            if text[i : i + 1] != '"':
                raise invalid("collateral JSON: expected a member name")
            key, i = _DECODER.raw_decode(text, i)
            i = _skip_ws(text, i)
            if text[i : i + 1] != ":":
                raise invalid("collateral JSON: expected ':'")
            start = _skip_ws(text, i + 1)
            value, end = _DECODER.raw_decode(text, start)
            if key in spans:
                raise invalid(f"duplicate JSON key {key!r}")
            spans[key] = (start, end, value)
            i = _skip_ws(text, end)
            if text[i : i + 1] == ",":
                i = _skip_ws(text, i + 1)
                if text[i : i + 1] == "}":
                    raise invalid("collateral JSON: trailing comma")
        if _skip_ws(text, i + 1) != len(text):
            raise invalid("collateral JSON has content after the top-level object")
    except ValueError as exc:  # json.JSONDecodeError and scanstring errors
        raise invalid(f"collateral JSON does not parse: {exc}") from None
    if set(spans) != {member, "signature"}:
        raise invalid(f"collateral JSON must hold exactly '{member}' and 'signature', has {sorted(spans)}")
    start, end, value = spans[member]
    if not isinstance(value, dict):
        raise invalid(f"'{member}' is not an object")
    return text[start:end].encode("utf-8"), parse_signature(spans["signature"][2])


def parse_signature(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 128:
        raise invalid("signature must be 128 hex characters (ECDSA P-256 r||s)")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise invalid("signature is not hex") from None


def parse_body(signed: bytes) -> dict[str, Any]:
    try:
        value = _DECODER.decode(signed.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"signed collateral body does not parse: {exc}") from None
    if not isinstance(value, dict):
        raise invalid("signed collateral body is not a JSON object")
    return value


# --- typed accessors ------------------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise invalid(f"{where}: '{key}' is missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise invalid(f"{where}: '{key}' must be {kind.__name__}")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str, maximum: int = 0xFFFF) -> int:
    value: int = _get(obj, key, int, where)
    if not 0 <= value <= maximum:
        raise invalid(f"{where}: '{key}' = {value} is out of range")
    return value


def _hex(obj: Mapping[str, Any], key: str, size: int, where: str) -> bytes:
    value: str = _get(obj, key, str, where)
    try:
        out = bytes.fromhex(value)
    except ValueError:
        raise invalid(f"{where}: '{key}' is not hex") from None
    if len(out) != size:
        raise invalid(f"{where}: '{key}' must be {size} bytes")
    return out


def _time(obj: Mapping[str, Any], key: str, where: str) -> datetime:
    value: str = _get(obj, key, str, where)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(f"{where}: '{key}' is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise invalid(f"{where}: '{key}' has no time zone")
    return parsed.astimezone(UTC)


def _status(obj: Mapping[str, Any], where: str, allowed: frozenset[str]) -> str:
    value: str = _get(obj, "tcbStatus", str, where)
    if value not in allowed:
        raise invalid(f"{where}: unknown tcbStatus {value!r}")
    return value


def _advisories(obj: Mapping[str, Any], where: str) -> tuple[str, ...]:
    value = obj.get("advisoryIDs", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(f"{where}: 'advisoryIDs' must be a list of strings")
    return tuple(value)


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value: list[Any] = _get(obj, key, list, where)
    return value


def _svns(obj: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    comps = _list(obj, key, where)
    if len(comps) != 16 or not all(isinstance(c, dict) for c in comps):
        raise invalid(f"{where}: '{key}' must list 16 components")
    return tuple(_int(c, "svn", f"{where}.{key}", 0xFF) for c in comps)


# --- models --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcbLevel:
    sgx_svns: tuple[int, ...]
    pcesvn: int
    tdx_svns: tuple[int, ...]
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IsvLevel:
    """A TCB level keyed by one ISVSVN (QE identity levels, TDX module identity levels)."""

    isvsvn: int
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModuleIdentity:
    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[IsvLevel, ...]


@dataclass(frozen=True, slots=True)
class TcbInfo:
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    evaluation_data_number: int
    module: ModuleIdentity  # "tdxModule" (id "", no levels)
    module_identities: tuple[ModuleIdentity, ...] | None
    levels: tuple[TcbLevel, ...]


@dataclass(frozen=True, slots=True)
class QeIdentity:
    issue_date: datetime
    next_update: datetime
    evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    levels: tuple[IsvLevel, ...]


def _isv_levels(obj: Mapping[str, Any], where: str, allowed: frozenset[str]) -> tuple[IsvLevel, ...]:
    levels = []
    for n, level in enumerate(_list(obj, "tcbLevels", where)):
        at = f"{where}.tcbLevels[{n}]"
        if not isinstance(level, dict):
            raise invalid(f"{at} is not an object")
        tcb = _get(level, "tcb", dict, at)
        levels.append(
            IsvLevel(
                isvsvn=_int(tcb, "isvsvn", at),
                tcb_date=_get(level, "tcbDate", str, at),
                status=_status(level, at, allowed),
                advisory_ids=_advisories(level, at),
            )
        )
    return tuple(levels)


def _module(obj: Mapping[str, Any], where: str, with_levels: bool) -> ModuleIdentity:
    return ModuleIdentity(
        id=_get(obj, "id", str, where).upper() if with_levels else "",
        mrsigner=_hex(obj, "mrsigner", 48, where),
        attributes=_hex(obj, "attributes", 8, where),
        attributes_mask=_hex(obj, "attributesMask", 8, where),
        levels=_isv_levels(obj, where, ISV_TCB_STATUSES) if with_levels else (),
    )


def parse_tcb_info(body: Mapping[str, Any]) -> TcbInfo:
    where = "tcbInfo"
    if _get(body, "id", str, where) != "TDX":
        raise invalid(f"TCB info id {body['id']!r} is not 'TDX'")
    if _int(body, "version", where) != 3:
        raise invalid(f"TDX TCB info version {body['version']} is not 3")
    if _int(body, "tcbType", where) != 0:
        raise invalid(f"TCB info tcbType {body['tcbType']} is not 0")
    identities = None
    if "tdxModuleIdentities" in body:
        entries = _list(body, "tdxModuleIdentities", where)
        if not all(isinstance(m, dict) for m in entries):
            raise invalid(f"{where}.tdxModuleIdentities must list objects")
        identities = tuple(_module(m, f"{where}.tdxModuleIdentities", True) for m in entries)
    levels = []
    for n, level in enumerate(_list(body, "tcbLevels", where)):
        at = f"{where}.tcbLevels[{n}]"
        if not isinstance(level, dict):
            raise invalid(f"{at} is not an object")
        tcb = _get(level, "tcb", dict, at)
        levels.append(
            TcbLevel(
                sgx_svns=_svns(tcb, "sgxtcbcomponents", at),
                pcesvn=_int(tcb, "pcesvn", at),
                tdx_svns=_svns(tcb, "tdxtcbcomponents", at),
                tcb_date=_get(level, "tcbDate", str, at),
                status=_status(level, at, TCB_STATUSES),
                advisory_ids=_advisories(level, at),
            )
        )
    return TcbInfo(
        issue_date=_time(body, "issueDate", where),
        next_update=_time(body, "nextUpdate", where),
        fmspc=_hex(body, "fmspc", 6, where),
        pce_id=_hex(body, "pceId", 2, where),
        evaluation_data_number=_int(body, "tcbEvaluationDataNumber", where, 0xFFFFFFFF),
        module=_module(_get(body, "tdxModule", dict, where), f"{where}.tdxModule", False),
        module_identities=identities,
        levels=tuple(levels),
    )


def parse_qe_identity(body: Mapping[str, Any]) -> QeIdentity:
    where = "enclaveIdentity"
    if _get(body, "id", str, where) != "TD_QE":
        raise invalid(f"QE identity id {body['id']!r} is not 'TD_QE' (TDX quoting enclave)")
    if _int(body, "version", where) != 2:
        raise invalid(f"QE identity version {body['version']} is not 2")
    return QeIdentity(
        issue_date=_time(body, "issueDate", where),
        next_update=_time(body, "nextUpdate", where),
        evaluation_data_number=_int(body, "tcbEvaluationDataNumber", where, 0xFFFFFFFF),
        miscselect=int.from_bytes(_hex(body, "miscselect", 4, where), "big"),
        miscselect_mask=int.from_bytes(_hex(body, "miscselectMask", 4, where), "big"),
        attributes=_hex(body, "attributes", 16, where),
        attributes_mask=_hex(body, "attributesMask", 16, where),
        mrsigner=_hex(body, "mrsigner", 32, where),
        isvprodid=_int(body, "isvprodid", where),
        levels=_isv_levels(body, where, ISV_TCB_STATUSES),
    )
