"""Offline verification of an export file with worker processes: the same checks as ``verify_export``.

The per-entry work that needs no state (the line's shape and length, the entry grammar and canonical form,
the leaf hash) is ~85% of the sequential verifier's time, so worker processes do it over byte ranges of the
file, each range starting at a line start. Each worker also checks that the sequence numbers inside its
range run on by one. The parent takes the ranges in file order and keeps everything that needs the
entries before: the first sequence number of each range against the entries so far, the final checkpoint's
size, the tree (one node hash per entry on average), the trusted checkpoint's root, and every checkpoint
line through the sequential verifier's own ``_checkpoint``. At most ``2 * workers`` ranges are in flight,
so memory stays bounded whatever the file's size.

Failures are reported by the sequential verifier: on any problem the parallel pass stops and
``verify_export`` runs over the file from the start, so the error (code, message, line, index) is exactly
the one it gives. The parallel pass never accepts what the sequential verifier refuses
(tests/unit/test_audit_verify_parallel.py runs every tamper case of test_audit_verify.py through both).

Arithmetic: a worker spends ~7 µs per entry on a quiet core and the parent ~1 µs, so the rate is bounded by
about cores / 7 µs with the parent's share taken off one core: about twice the sequential rate on 2 cores,
never more than the number of cores.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from pathlib import Path

from kms.audit.checkpoint import AuditKeys, Checkpoint
from kms.audit.entry import match_ascii, match_canonical
from kms.audit.errors import ExportInvalid
from kms.audit.export import CHECKPOINT_PREFIX, ENTRY_PREFIX, MAX_LINE, read_lines
from kms.audit.merkle import EMPTY_ROOT, fold_root
from kms.audit.verify import VerifyReport, _Verifier, check_header, conclude, verify_export

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20

# What a worker returns for a range that passed: (first seq or -1, entry count, leaf hashes joined,
# checkpoint lines as (entries before it in the range, line number in the range, line), lines in the range).
RangeResult = tuple[int, int, bytes, list[tuple[int, int, bytes]], int]


class _Refused(Exception):
    """The parallel pass found a problem; the sequential verifier says which."""


def check_range(path: str, start: int, end: int) -> RangeResult | None:
    """Shape, grammar, in-range sequence and leaf hash of every line in ``[start, end)``; None on a problem."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    if len(data) != end - start or not data.endswith(b"\n"):
        return None
    lines = data.split(b"\n")
    lines.pop()  # the empty tail after the last newline
    sha256 = hashlib.sha256
    match = match_ascii
    entry_prefix, checkpoint_prefix = ENTRY_PREFIX, CHECKPOINT_PREFIX
    longest = MAX_LINE - 1  # read_lines refuses lines longer than MAX_LINE bytes, newline included
    hashes: list[bytes] = []
    add = hashes.append
    checkpoints: list[tuple[int, int, bytes]] = []
    first = expected = -1
    for number, line in enumerate(lines):
        if len(line) > longest:
            return None
        if line.startswith(entry_prefix):
            if not line.endswith(b"}"):
                return None
            canon = line[9:-1]
            m = match(canon)
            if m is None:
                m = match_canonical(canon)
                if m is None:
                    return None
            seq = int(m.group(1))
            if seq != expected:
                if first != -1:
                    return None
                first = seq
            expected = seq + 1
            add(sha256(b"\x00" + canon).digest())
        elif line.startswith(checkpoint_prefix):
            checkpoints.append((len(hashes), number + 1, line + b"\n"))
        else:
            return None
    return first, len(hashes), b"".join(hashes), checkpoints, len(lines)


def line_ranges(path: Path, body_start: int, chunk: int) -> Iterator[tuple[int, int]]:
    """Byte ranges of about ``chunk`` bytes from ``body_start`` to the end, each starting at a line start.
    A line too long to be an export line stops the pass (``_Refused``) without reading it whole."""
    total = path.stat().st_size
    start = body_start
    with path.open("rb") as f:
        while start < total:
            if start + chunk >= total:
                end = total
            else:
                f.seek(start + chunk)
                tail = f.readline(MAX_LINE + 1)
                if not tail.endswith(b"\n"):
                    raise _Refused
                end = f.tell()
            yield start, end
            start = end


def verify_export_file(
    path: Path,
    keys: AuditKeys,
    *,
    workers: int = 0,
    trusted: Checkpoint | None = None,
    min_size: int | None = None,
    trusted_source: str = "checkpoint",
    chunk_bytes: int = CHUNK_BYTES,
    executor: Executor | None = None,
) -> VerifyReport:
    """``verify_export`` over the file at ``path``, with ``workers`` processes (0: one per CPU; 1: the
    sequential verifier). ``executor``: a process pool to use instead of starting one."""
    count = workers or os.cpu_count() or 1
    if count > 1 or executor is not None:
        run = functools.partial(
            _parallel, path, keys, workers=count, chunk_bytes=chunk_bytes,
            trusted=trusted, min_size=min_size, trusted_source=trusted_source,
        )  # fmt: skip
        try:
            if executor is not None:
                return run(executor)
            context = multiprocessing.get_context("spawn")  # no fork of a threaded caller
            with ProcessPoolExecutor(count, mp_context=context) as pool:
                return run(pool)
        except (_Refused, ExportInvalid):
            pass  # the sequential verifier below names the problem
        except (BrokenExecutor, OSError) as err:
            # a worker died or the pool could not start: the sequential verifier gives the same answer
            log.warning("parallel verification failed (%s); verifying in this process", type(err).__name__)
    with path.open("rb") as f:
        return verify_export(
            read_lines(f), keys, trusted=trusted, min_size=min_size, trusted_source=trusted_source
        )


def _parallel(
    path: Path,
    keys: AuditKeys,
    pool: Executor,
    *,
    workers: int,
    chunk_bytes: int,
    trusted: Checkpoint | None,
    min_size: int | None,
    trusted_source: str,
) -> VerifyReport:
    with path.open("rb") as f:
        final = check_header(next(read_lines(f), None), keys, trusted=trusted, min_size=min_size)
        body_start = f.tell()  # read_lines read exactly the header line
    v = _Verifier(iter(()), keys, final, trusted)
    stack = v.stack
    push, pop = stack.append, stack.pop
    sha256 = hashlib.sha256
    limit = final.size
    mark = trusted.size if trusted is not None and trusted.size <= limit else -1
    if mark == 0:
        v._check_trusted_root(EMPTY_ROOT)
    size, lineno = 0, 1
    pending: deque[Future[RangeResult | None]] = deque()
    ranges = line_ranges(path, body_start, chunk_bytes)
    name = str(path)
    while True:
        while len(pending) < 2 * workers and (nxt := next(ranges, None)) is not None:
            pending.append(pool.submit(check_range, name, *nxt))
        if not pending:
            break
        result = pending.popleft().result()
        if result is None:
            raise _Refused
        first, count, hashes, checkpoints, lines = result
        if count and (first != size or size + count > limit):
            raise _Refused
        done = 0
        for before, at, line in [*checkpoints, (count, 0, b"")]:
            for i in range(done * 32, before * 32, 32):
                h = hashes[i : i + 32]
                n = size
                while n & 1:
                    h = sha256(b"\x01" + pop() + h).digest()
                    n >>= 1
                push(h)
                size += 1
                if size == mark:
                    v._check_trusted_root(fold_root(stack))
            done = before
            if line:
                v.lineno, v.size = lineno + at, size
                v._checkpoint(line)
        lineno += lines
    v.lineno, v.size = lineno, size
    return conclude(v._finish(), trusted=trusted, min_size=min_size, trusted_source=trusted_source)
