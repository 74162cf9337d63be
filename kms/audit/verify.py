"""Offline verification of an export: streaming, constant memory apart from the O(log n) tree edge.

Checks, in file order, stopping at the first problem (``ExportInvalid`` with code, line and index):
every line parses; every entry is the canonical encoding of a valid entry; sequence numbers run 0, 1, 2...
(gaps, duplicates, inserted and reordered entries each get their own code); every checkpoint is signed by
the audit key, never goes back in size or time, covers exactly the entries before it, has the root of
those entries, and, when the line carries one, a valid consistency proof from the previous checkpoint;
the export holds exactly the entries of its header's checkpoint and ends with a checkpoint. Consistency
between consecutive checkpoints also follows from recomputing every root from one incremental tree.

Freshness is separate: an export cut back to an older signed checkpoint, header included, is itself a valid
older export. Only something obtained apart from the file says how far the ledger has got: a trusted
checkpoint (its signature checked with the same audit key; the export must reach its size with the same
root) or a pinned minimum size. The report says whether either was given (``fresh``) and what it was;
``unchecked_head_error`` is the refusal a caller raises when neither was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import rfc8785

from kms.audit.checkpoint import AuditKeys, Checkpoint
from kms.audit.entry import match_ascii, match_canonical
from kms.audit.errors import ExportInvalid, ProofInvalid
from kms.audit.export import CHECKPOINT_PREFIX, ENTRY_PREFIX, parse_checkpoint_line, parse_header
from kms.audit.merkle import EMPTY_ROOT, fold_root, verify_consistency
from kms.errors import Code

_RECENT = 1024  # leaf hashes kept to tell a duplicate (same bytes) from an inserted entry (same seq)
_LOOKAHEAD = 1024  # entry lines read past a sequence break to tell a gap from a reorder or an insertion


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    checkpoints: int
    size: int
    root: str
    time: str
    key_id: str
    fresh: bool = False
    checked_against: tuple[tuple[str, object], ...] = ()  # what freshness was checked with, if anything

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "size": self.size,
            "root": self.root,
            "time": self.time,
            "key_id": self.key_id,
            "fresh": self.fresh,
        }
        if self.checked_against:
            out["checked_against"] = dict(self.checked_against)
        return out


def verify_export(
    lines: Iterable[bytes],
    keys: AuditKeys,
    *,
    trusted: Checkpoint | None = None,
    min_size: int | None = None,
    trusted_source: str = "checkpoint",
) -> VerifyReport:
    """Verify an export line by line.

    ``trusted``: a checkpoint obtained separately (the server's latest, a witness, a previous run), signed
    by the audit key; the export must reach its size with the same root. ``min_size``: a tree size pinned
    by the operator; the export must hold at least that many entries. Either catches an export cut back
    to an older checkpoint together with its header (``AUDIT_EXPORT_STALE``) and makes the report
    ``fresh``; ``trusted_source`` names where the trusted checkpoint came from, for the report."""
    it = iter(lines)
    final = check_header(next(it, None), keys, trusted=trusted, min_size=min_size)
    report = _Verifier(it, keys, final, trusted).run()
    return conclude(report, trusted=trusted, min_size=min_size, trusted_source=trusted_source)


def check_header(
    first: bytes | None, keys: AuditKeys, *, trusted: Checkpoint | None, min_size: int | None
) -> Checkpoint:
    """The checks before the body: ``min_size``'s type, the header line and its signature, the trusted
    checkpoint's signature. Returns the header's (final) checkpoint."""
    if min_size is not None and (type(min_size) is not int or min_size < 0):
        raise ExportInvalid(
            f"the minimum tree size must be a non-negative integer, not {min_size!r}",
            code=Code.AUDIT_FRESHNESS_UNCHECKED,
        )
    if first is None:
        raise ExportInvalid("the export is empty (no header line)", line=1)
    final = parse_header(first)
    _check_signature(keys, final, line=1, index=None)
    if trusted is not None:
        _check_signature(keys, trusted, line=None, index=None)
    return final


def conclude(
    report: VerifyReport, *, trusted: Checkpoint | None, min_size: int | None, trusted_source: str
) -> VerifyReport:
    """The checks after the body: ``min_size``, and what freshness was checked against."""
    if min_size is not None and report.size < min_size:
        raise ExportInvalid(
            f"the export ends at {report.size} entries but at least {min_size} were required (--min-size): "
            "the export is older than the ledger or was cut back",
            code=Code.AUDIT_EXPORT_STALE,
            index=report.size,
        )
    against: list[tuple[str, object]] = []
    if trusted is not None:
        seen = {"size": trusted.size, "root": trusted.root.hex(), "time": trusted.time}
        against.append((trusted_source, seen))
    if min_size is not None:
        against.append(("min_size", min_size))
    return dataclasses.replace(report, fresh=bool(against), checked_against=tuple(against))


def unchecked_head_error(report: VerifyReport) -> ExportInvalid:
    """The refusal for a report whose head nothing outside the export vouches for."""
    return ExportInvalid(
        f"the export verifies up to its own final checkpoint (size {report.size}, signed {report.time}), "
        "but nothing outside it says that is the latest: an export cut back to an older signed checkpoint "
        "looks exactly like this",
        code=Code.AUDIT_FRESHNESS_UNCHECKED,
    )


def _check_signature(keys: AuditKeys, cp: Checkpoint, *, line: int | None, index: int | None) -> None:
    try:
        keys.verify(cp)
    except ExportInvalid as err:
        where = f"line {line}: " if line is not None else "trusted checkpoint: "
        raise ExportInvalid(where + err.message, code=err.code, line=line, index=index) from None


class _Verifier:
    def __init__(
        self, it: Iterator[bytes], keys: AuditKeys, final: Checkpoint, trusted: Checkpoint | None
    ) -> None:
        self.it = it
        self.keys = keys
        self.final = final
        self.trusted = trusted
        self.lineno = 1
        self.stack: list[bytes] = []  # compact range of the entries so far, largest subtree first
        self.size = 0
        self.recent: list[bytes] = [b""] * _RECENT
        self.checkpoints = 0
        self.last: Checkpoint | None = None

    def run(self) -> VerifyReport:
        # The hot loop: one regex match (grammar, canonical form, key order, seq; ASCII-only fast path), one leaf hash and on
        # average one node hash per entry. Locals for speed; ``stack`` is merkle.CompactRange inlined.
        sha256 = hashlib.sha256
        match = match_ascii
        entry_prefix = ENTRY_PREFIX
        ring_mask = _RECENT - 1
        stack = self.stack
        push, pop = stack.append, stack.pop
        recent = self.recent
        size = 0
        limit = self.final.size
        mark = self.trusted.size if self.trusted is not None and self.trusted.size <= limit else -1
        if mark == 0:
            self._check_trusted_root(EMPTY_ROOT)
        lineno = self.lineno
        for line in self.it:
            lineno += 1
            if line.startswith(entry_prefix):
                if not line.endswith(b"}\n"):
                    raise ExportInvalid(
                        f"line {lineno}: an entry line ends with '}}' and a newline", line=lineno, index=size
                    )
                canon = line[9:-2]
                m = match(canon)
                if m is None:
                    m = match_canonical(canon)  # non-ASCII text, or not an entry at all
                    if m is None:
                        raise _bad_entry(canon, lineno, size)
                seq = int(m.group(1))
                h = sha256(b"\x00" + canon).digest()
                if seq != size:
                    self.lineno, self.size = lineno, size
                    raise self._sequence_problem(seq, size, h)
                if size >= limit:
                    raise ExportInvalid(
                        f"line {lineno}: entry {size} is beyond the export's final checkpoint "
                        f"(size {limit}): no signature covers it",
                        code=Code.AUDIT_UNSIGNED_TAIL,
                        line=lineno,
                        index=size,
                    )
                recent[size & ring_mask] = h
                n = size
                while n & 1:
                    h = sha256(b"\x01" + pop() + h).digest()
                    n >>= 1
                push(h)
                size += 1
                if size == mark:
                    self._check_trusted_root(fold_root(stack))
            elif line.startswith(CHECKPOINT_PREFIX):
                self.lineno, self.size = lineno, size
                self._checkpoint(line)
            else:
                raise ExportInvalid(
                    f"line {lineno} is neither an entry nor a checkpoint line", line=lineno, index=size
                )
        self.lineno, self.size = lineno, size
        return self._finish()

    def _checkpoint(self, line: bytes) -> None:
        lineno, size = self.lineno, self.size
        cp, proof = parse_checkpoint_line(line, lineno)
        number = self.checkpoints
        _check_signature(self.keys, cp, line=lineno, index=number)
        last = self.last
        if cp.size < size:
            raise ExportInvalid(
                f"line {lineno}: checkpoint {number} covers {cp.size} entries but {size} precede it: "
                "an older checkpoint was put here",
                code=Code.AUDIT_CHECKPOINT_ROLLBACK,
                line=lineno,
                index=number,
            )
        if cp == last:
            raise ExportInvalid(
                f"line {lineno}: checkpoint {number} repeats the previous checkpoint",
                code=Code.AUDIT_SEQUENCE_DUPLICATE,
                line=lineno,
                index=number,
            )
        if last is not None and cp.time <= last.time:
            raise ExportInvalid(
                f"line {lineno}: checkpoint {number} (size {cp.size}, {cp.time}) is not later than the "
                f"previous one (size {last.size}, {last.time})",
                code=Code.AUDIT_CHECKPOINT_ROLLBACK,
                line=lineno,
                index=number,
            )
        if cp.size > size:
            at_end = self._at_end()
            raise ExportInvalid(
                f"line {lineno}: checkpoint {number} covers {cp.size} entries but only {size} precede it"
                + (": the export was cut short" if at_end else f": entries from {size} are missing"),
                code=Code.AUDIT_TRUNCATED if at_end else Code.AUDIT_SEQUENCE_GAP,
                line=lineno,
                index=size,
            )
        root = fold_root(self.stack)
        if cp.root != root:
            raise ExportInvalid(
                f"line {lineno}: checkpoint {number} root mismatch after entry {size - 1}: the signed "
                f"root is {cp.root.hex()}, the entries hash to {root.hex()}",
                code=Code.AUDIT_ROOT_MISMATCH,
                line=lineno,
                index=number,
            )
        if proof is not None:
            first, first_root = (last.size, last.root) if last is not None else (0, EMPTY_ROOT)
            try:
                verify_consistency(first, cp.size, first_root, cp.root, proof)
            except ProofInvalid as err:
                raise ExportInvalid(
                    f"line {lineno}: checkpoint {number}: {err.message}",
                    code=Code.AUDIT_CONSISTENCY_INVALID,
                    line=lineno,
                    index=number,
                ) from None
        self.last = cp
        self.checkpoints += 1

    def _at_end(self) -> bool:
        """True if no entry line follows (consumes the rest only on this failure path)."""
        return not any(line.startswith(ENTRY_PREFIX) for line in self.it)

    def _finish(self) -> VerifyReport:
        size, final = self.size, self.final
        if size < final.size:
            raise ExportInvalid(
                f"the export ends after {size} entries but its header checkpoint covers {final.size}: "
                "the file was cut short",
                code=Code.AUDIT_TRUNCATED,
                line=self.lineno,
                index=size,
            )
        covered = self.last.size if self.last is not None else 0
        if covered < size:
            raise ExportInvalid(
                f"entries {covered}..{size - 1} come after the last checkpoint line: no signature in "
                "the export body covers them",
                code=Code.AUDIT_UNSIGNED_TAIL,
                line=self.lineno,
                index=covered,
            )
        root = fold_root(self.stack)
        if root != final.root:
            raise ExportInvalid(
                f"the header checkpoint's root {final.root.hex()} is not the root of the {size} entries",
                code=Code.AUDIT_ROOT_MISMATCH,
                line=1,
            )
        if self.trusted is not None and self.trusted.size > size:
            raise ExportInvalid(
                f"the export ends at {size} entries but the trusted checkpoint covers {self.trusted.size}: "
                "the export is older than the ledger or was cut back",
                code=Code.AUDIT_EXPORT_STALE,
                line=self.lineno,
                index=size,
            )
        last_time = self.last.time if self.last is not None else final.time
        return VerifyReport(size, self.checkpoints, size, root.hex(), last_time, final.key_id)

    def _check_trusted_root(self, root: bytes) -> None:
        assert self.trusted is not None
        if root != self.trusted.root:
            raise ExportInvalid(
                f"the export's root at size {self.trusted.size} differs from the trusted checkpoint's",
                code=Code.AUDIT_ROOT_MISMATCH,
                index=self.trusted.size,
            )

    def _sequence_problem(self, seq: int, expected: int, h: bytes) -> ExportInvalid:
        lineno = self.lineno
        where = f"line {lineno}: entry with seq {seq} where seq {expected} was expected"
        if seq < expected:
            if expected - seq <= _RECENT and self.recent[seq & (_RECENT - 1)] != h:
                return ExportInvalid(
                    f"{where}: a different entry with seq {seq} came earlier: an entry was inserted",
                    code=Code.AUDIT_SEQUENCE_INSERTED,
                    line=lineno,
                    index=seq,
                )
            return ExportInvalid(
                f"{where}: seq {seq} appears a second time",
                code=Code.AUDIT_SEQUENCE_DUPLICATE,
                line=lineno,
                index=seq,
            )
        rest = self._following_seqs()
        if rest and rest == list(range(expected, expected + len(rest))):
            return ExportInvalid(
                f"{where}; without this line the sequence continues: an entry was inserted",
                code=Code.AUDIT_SEQUENCE_INSERTED,
                line=lineno,
                index=seq,
            )
        if expected in rest:
            return ExportInvalid(
                f"{where}; seq {expected} comes later: entries were reordered",
                code=Code.AUDIT_SEQUENCE_REORDERED,
                line=lineno,
                index=expected,
            )
        return ExportInvalid(
            f"{where}: entries {expected}..{seq - 1} are missing",
            code=Code.AUDIT_SEQUENCE_GAP,
            line=lineno,
            index=expected,
        )

    def _following_seqs(self) -> list[int]:
        seqs: list[int] = []
        for line in self.it:
            if line.startswith(ENTRY_PREFIX):
                m = match_canonical(line[9:-2])
                seqs.append(int(m.group(1)) if m else -1)
                if len(seqs) >= _LOOKAHEAD:
                    break
        return seqs


def _bad_entry(canon: bytes, lineno: int, index: int) -> ExportInvalid:
    """Why an entry line failed the grammar: not JSON, JSON but not canonical, or canonical but invalid."""
    try:
        obj = json.loads(canon)
    except (ValueError, UnicodeDecodeError):
        return ExportInvalid(f"line {lineno}: the entry is not JSON", line=lineno, index=index)
    try:
        canonical = rfc8785.dumps(obj) == canon
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):
        canonical = False
    if not canonical:
        return ExportInvalid(
            f"line {lineno}: entry {index} is not in canonical form (RFC 8785): its bytes were altered",
            code=Code.AUDIT_NON_CANONICAL,
            line=lineno,
            index=index,
        )
    return ExportInvalid(
        f"line {lineno}: entry {index} is canonical JSON but not a valid audit entry "
        "(unknown kind or field, or a value of the wrong type)",
        code=Code.AUDIT_ENTRY_INVALID,
        line=lineno,
        index=index,
    )
