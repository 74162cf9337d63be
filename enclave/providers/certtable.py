"""The SEV-SNP extended-report certificate table (GHCB spec, MSG_REPORT_REQ ``cert_table``).

Layout, all offsets relative to the start of the table: a run of 24-byte entries
``GUID (16 bytes, RFC 4122 byte order) || u32 offset || u32 length`` (little-endian), ended by an
all-zero entry, followed by the certificates the entries point at. configfs-tsm exposes it as
``auxblob``; SNP_GET_EXT_REPORT writes it to the caller's buffer (zero-filled when the host has
no certificates). Pure: bytes in, typed error or entries out.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from enum import StrEnum

from enclave.errors import NodeCode, NodeError

ENTRY_SIZE = 24
_ENTRY = struct.Struct("<16sII")
_ZERO_ENTRY = bytes(ENTRY_SIZE)


class CertKind(StrEnum):
    VCEK = "vcek"
    VLEK = "vlek"
    ASK = "ask"
    ARK = "ark"


GUIDS: dict[uuid.UUID, CertKind] = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): CertKind.VCEK,
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): CertKind.VLEK,
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): CertKind.ASK,
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): CertKind.ARK,
}
# Leaf first, then its issuer, then the root: the order the verifier expects a chain in.
_CHAIN_ORDER = (CertKind.VCEK, CertKind.VLEK, CertKind.ASK, CertKind.ARK)


@dataclass(frozen=True)
class CertEntry:
    guid: uuid.UUID
    kind: CertKind | None  # None: a GUID this node does not know (kept for diagnostics)
    data: bytes


def _bad(message: str) -> NodeError:
    return NodeError(f"SNP certificate table: {message}", code=NodeCode.PROVIDER_BAD_OUTPUT)


def _der_span(data: bytes, guid: uuid.UUID) -> int:
    """Length of the DER SEQUENCE at the start of ``data`` (a certificate is one SEQUENCE)."""
    if len(data) < 2 or data[0] != 0x30:
        raise _bad(f"entry {guid} is not a DER certificate")
    first = data[1]
    if first < 0x80:
        header, body = 2, first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or len(data) < 2 + n:
            raise _bad(f"entry {guid} has an invalid DER length")
        header, body = 2 + n, int.from_bytes(data[2 : 2 + n], "big")
    if header + body > len(data):
        raise _bad(f"entry {guid} is truncated: DER needs {header + body} bytes, entry has {len(data)}")
    return header + body


def parse_cert_table(table: bytes) -> tuple[CertEntry, ...]:
    """Parse a certificate table. Empty or all-zero input means no certificates."""
    entries: list[tuple[uuid.UUID, int, int]] = []
    pos = 0
    while True:
        if pos + ENTRY_SIZE > len(table):
            if not table.strip(b"\x00"):
                return ()
            raise _bad(f"no terminating all-zero entry within {len(table)} bytes")
        raw = table[pos : pos + ENTRY_SIZE]
        pos += ENTRY_SIZE
        if raw == _ZERO_ENTRY:
            break
        guid_bytes, offset, length = _ENTRY.unpack(raw)
        entries.append((uuid.UUID(bytes=guid_bytes), offset, length))
    header_end = pos
    seen: set[uuid.UUID] = set()
    out: list[CertEntry] = []
    for guid, offset, length in entries:
        if guid in seen:
            raise _bad(f"GUID {guid} appears twice")
        seen.add(guid)
        if length == 0 or offset < header_end or offset + length > len(table):
            raise _bad(
                f"entry {guid} (offset {offset}, length {length}) lies outside the "
                f"{len(table)}-byte table's data area"
            )
        out.append(CertEntry(guid, GUIDS.get(guid), table[offset : offset + length]))
    return tuple(out)


def endorsements(table: bytes) -> tuple[bytes, ...]:
    """The known certificates of a table as DER, leaf first. Hosts may pad an entry with zeros
    after the certificate; anything else after it is refused."""
    by_kind = {e.kind: e for e in parse_cert_table(table) if e.kind is not None}
    out: list[bytes] = []
    for kind in _CHAIN_ORDER:
        entry = by_kind.get(kind)
        if entry is None:
            continue
        span = _der_span(entry.data, entry.guid)
        if entry.data[span:].strip(b"\x00"):
            raise _bad(f"entry {entry.guid} ({kind.value}) has trailing data after the certificate")
        out.append(entry.data[:span])
    return tuple(out)


def build_cert_table(certs: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """Lay out a table the way hosts do (used by tests and the simulator adapter)."""
    header = ENTRY_SIZE * (len(certs) + 1)
    parts: list[bytes] = []
    body = b""
    for guid, der in certs:
        parts.append(_ENTRY.pack(guid.bytes, header + len(body), len(der)))
        body += der
    return b"".join(parts) + _ZERO_ENTRY + body


GUID_BY_KIND: dict[CertKind, uuid.UUID] = {kind: guid for guid, kind in GUIDS.items()}
