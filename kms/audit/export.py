"""The export format: JSON Lines, built so the verifier hashes entry bytes without re-encoding them.

Line 1, the header: ``{"checkpoint":<final checkpoint>,"format":"sovereign-audit-export","version":1}``.
The header's checkpoint is the one the export was cut at: the export must hold exactly its ``size``
entries, so a file cut short is detected even when it is cut right after an older checkpoint.
Then, in ledger order:

* an entry line: ``{"entry":`` + the entry's canonical bytes (exactly what was hashed) + ``}``
* a checkpoint line, right after the entry at which it was taken:
  ``{"checkpoint":<checkpoint>}`` or ``{"checkpoint":<checkpoint>,"consistency":[hex, ...]}`` with the
  RFC 9162 consistency proof from the previous checkpoint line (from size 0 for the first one).

Every line is RFC 8785 canonical JSON and ends with "\\n" (the last one too: a missing newline means
the file was cut). An export may carry fewer checkpoint lines than the ledger has (thinned): integrity rests on the
entries and the final checkpoint, and each checkpoint line present is checked in full. Consistency proofs
always link a checkpoint line to the previous checkpoint line present, so a thinned export is made by the
exporter, never by deleting lines from a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, BinaryIO

import rfc8785

from kms.audit.checkpoint import Checkpoint, CheckpointSigner, sign_checkpoint
from kms.audit.entry import format_time
from kms.audit.errors import ExportInvalid
from kms.audit.merkle import CompactRange, MemoryHashStore, consistency_proof, leaf_hash
from kms.errors import Code

FORMAT = "sovereign-audit-export"
VERSION = 1
ENTRY_PREFIX = b'{"entry":'
CHECKPOINT_PREFIX = b'{"checkpoint":'
MAX_LINE = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def header_line(final: Checkpoint) -> bytes:
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "checkpoint": final.to_obj()}
    return rfc8785.dumps(header) + b"\n"


def entry_line(canonical: bytes) -> bytes:
    return ENTRY_PREFIX + canonical + b"}\n"


def checkpoint_line(cp: Checkpoint, consistency: Sequence[bytes] | None = None) -> bytes:
    obj: dict[str, Any] = {"checkpoint": cp.to_obj()}
    if consistency is not None:
        obj["consistency"] = [h.hex() for h in consistency]
    return rfc8785.dumps(obj) + b"\n"


def parse_json_line(line: bytes, lineno: int, *, canonical: bool = True) -> dict[str, Any]:
    """A JSON object on one line; with ``canonical``, exactly its RFC 8785 bytes and a final newline."""
    if canonical and not line.endswith(b"\n"):
        raise ExportInvalid(f"line {lineno} does not end with a newline: the file was cut", line=lineno)
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ExportInvalid(f"line {lineno} is not JSON", line=lineno) from None
    if not isinstance(obj, dict):
        raise ExportInvalid(f"line {lineno} is not a JSON object", line=lineno)
    if canonical:
        try:
            same = rfc8785.dumps(obj) == line[:-1]
        except (rfc8785.CanonicalizationError, UnicodeEncodeError):
            same = False
        if not same:
            raise ExportInvalid(
                f"line {lineno} is not in canonical form (RFC 8785)",
                code=Code.AUDIT_NON_CANONICAL,
                line=lineno,
            )
    return obj


def parse_header(line: bytes) -> Checkpoint:
    obj = parse_json_line(line, 1)
    if obj.get("format") != FORMAT or set(obj) != {"format", "version", "checkpoint"}:
        raise ExportInvalid(f"line 1 is not a {FORMAT} header", line=1)
    if obj["version"] != VERSION:
        raise ExportInvalid(f"export version {obj['version']!r} is not supported (only {VERSION})", line=1)
    try:
        return Checkpoint.from_obj(obj["checkpoint"])
    except ExportInvalid as err:
        raise ExportInvalid(f"line 1: {err.message}", line=1) from None


def parse_checkpoint_line(line: bytes, lineno: int) -> tuple[Checkpoint, list[bytes] | None]:
    obj = parse_json_line(line, lineno)
    if not set(obj) <= {"checkpoint", "consistency"} or "checkpoint" not in obj:
        raise ExportInvalid(
            f"line {lineno}: a checkpoint line has checkpoint and consistency only", line=lineno
        )
    try:
        cp = Checkpoint.from_obj(obj["checkpoint"])
    except ExportInvalid as err:
        raise ExportInvalid(f"line {lineno}: {err.message}", line=lineno) from None
    proof = obj.get("consistency")
    if proof is None:
        return cp, None
    if not isinstance(proof, list) or not all(isinstance(h, str) and _HEX64.fullmatch(h) for h in proof):
        raise ExportInvalid(
            f"line {lineno}: consistency must be a list of 64-digit lowercase hex", line=lineno
        )
    return cp, [bytes.fromhex(h) for h in proof]


def read_lines(stream: BinaryIO, max_line: int = MAX_LINE) -> Iterator[bytes]:
    """Lines of an export file, refusing any longer than ``max_line`` bytes (memory stays bounded)."""
    lineno = 0
    while True:
        line = stream.readline(max_line + 1)
        if not line:
            return
        lineno += 1
        if len(line) > max_line:
            raise ExportInvalid(f"line {lineno} is longer than {max_line} bytes", line=lineno)
        yield line


class ExportBuilder:
    """Builds the lines of an export from canonical entries (tests, benchmarks, the server's exporter).

    ``body`` lines come out as entries are added; ``header()`` is known only at the end, so a writer puts
    it first when it assembles the file (see ``write_export``).
    """

    def __init__(self, signer: CheckpointSigner, *, with_proofs: bool = False) -> None:
        self._signer = signer
        self._tree = CompactRange()
        self._store = MemoryHashStore() if with_proofs else None
        self._last: Checkpoint | None = None

    @property
    def size(self) -> int:
        return self._tree.size

    def add(self, canonical: bytes) -> bytes:
        h = leaf_hash(canonical)
        self._tree.append(h)
        if self._store is not None:
            self._store.append(h)
        return entry_line(canonical)

    def checkpoint(self, now: datetime) -> bytes:
        cp = sign_checkpoint(self._signer, self._tree.size, self._tree.root(), format_time(now))
        proof = None
        if self._store is not None:
            proof = consistency_proof(self._store, self._last.size if self._last else 0, cp.size)
        self._last = cp
        return checkpoint_line(cp, proof)

    def header(self) -> bytes:
        if self._last is None or self._last.size != self._tree.size:
            raise ExportInvalid("an export must end with a checkpoint covering every entry")
        return header_line(self._last)


def write_export(out: BinaryIO, header: bytes, body: BinaryIO) -> None:
    out.write(header)
    while chunk := body.read(1 << 20):
        out.write(chunk)


def write_items(out: BinaryIO, items: Iterable[bytes | Checkpoint], spool: BinaryIO) -> Checkpoint:
    """Write an export from items in ledger order (canonical entry bytes, checkpoints after the entry that
    completes them), e.g. the server's Export stream. The header needs the final checkpoint, so the body
    goes to ``spool`` (a temporary file) first. Returns the final checkpoint."""
    last: Checkpoint | None = None
    entries = 0
    for item in items:
        if isinstance(item, Checkpoint):
            spool.write(checkpoint_line(item))
            last = item
        else:
            spool.write(entry_line(item))
            entries += 1
    if last is None:
        raise ExportInvalid("the ledger has no checkpoint to end the export with")
    if last.size < entries:
        raise ExportInvalid(f"the export ends with a checkpoint of size {last.size} after {entries} entries")
    spool.seek(0)
    write_export(out, header_line(last), spool)
    return last
