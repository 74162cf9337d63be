"""Offline verification of many statement files with worker processes: the same checks, codes and messages
as one ``StatementVerifier`` in this process.

The files are split into runs of consecutive files, in input order, and each run goes to a worker process.
A worker keeps one ``StatementVerifier`` for the whole call (the key files' bytes travel with each run: the
loaded keys do not pickle), so what it remembers between statements (a checkpoint's signature, entries,
proofs) it remembers across the runs it gets: a checkpoint shared by the whole batch is checked at most
once per worker, not once per run. Sorting statements by checkpoint first would mean parsing every
envelope in this process, which is most of the work the workers are there to take off it; consecutive
files (a directory in name order, a training run fetched in order) usually share their checkpoint anyway.

Each statement gets the result the sequential verifier gives it: ``StatementVerifier.verify`` is
deterministic and what it remembers never changes a result (only successes are remembered, by their exact
inputs), so which worker sees which statement changes nothing but the time
(tests/unit/test_provenance_verify_parallel.py runs every tamper case through both). Results come back in
input order. At most ``2 * workers`` runs are in flight. A worker that dies, or a pool that cannot start,
is ``PROVENANCE_VERIFIER_FAILED`` for the whole call: no partial list of results.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kms.provenance.errors import ProvenanceCode, ProvenanceError
from kms.provenance.verify import (
    PublicKeys,
    StatementVerifier,
    TrustedCheckpoint,
    Verified,
    load_public_keys,
    load_trusted,
)

RUN = 16  # at most this many statements per run sent to a worker: a few runs per worker balance the load
MAX_WORKERS = 64

T = TypeVar("T")
# What a worker sends back per statement: (True, the summary) or (False, the refusal's code, message,
# hint) - ProvenanceError itself does not unpickle (its constructor takes more than its message).
_Sent = tuple[bool, Any]


@dataclass(frozen=True)
class VerifierInputs:
    """What a verifier is built from, as bytes: the two public key files and, if given, the trusted
    checkpoint file (a worker process loads them itself)."""

    audit_json: bytes
    provenance_json: bytes
    trusted_json: bytes | None = None

    def load(self) -> tuple[PublicKeys, TrustedCheckpoint | None]:
        """The loaded keys and trusted checkpoint; ``ProvenanceError`` (KEYS_INVALID, MALFORMED) if not."""
        keys = load_public_keys(self.audit_json, self.provenance_json)
        trusted = load_trusted(self.trusted_json) if self.trusted_json is not None else None
        return keys, trusted


def read_statement(path: Path) -> bytes:
    """The statement file's bytes; ``PROVENANCE_MALFORMED`` if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise ProvenanceError(
            ProvenanceCode.PROVENANCE_MALFORMED, f"cannot read the statement: {err.strerror}"
        ) from None


def whole(verified: Verified) -> Verified:
    """The summary that is the ``Verified`` itself."""
    return verified


def verify_one(
    verifier: StatementVerifier, path: Path, summarize: Callable[[Verified], T]
) -> T | ProvenanceError:
    try:
        verified = verifier.verify(read_statement(path))
    except ProvenanceError as err:
        return err
    return summarize(verified)


def verify_files(
    paths: Sequence[Path],
    inputs: VerifierInputs,
    *,
    summarize: Callable[[Verified], T],
    workers: int = 1,
    run: int = RUN,
    executor: Executor | None = None,
) -> list[T | ProvenanceError]:
    """One result per file, in order (a refusal does not stop the others): ``summarize`` of the
    ``Verified``, or the refusal. ``summarize`` runs where the statement was verified, so with workers it
    must pickle (a module-level function) and only its result travels back: a ``Verified`` carries the whole
    statement, ledger evidence included, which costs about a quarter of verifying it to pickle and
    unpickle. ``workers``: processes (0: one per CPU; 1: in this process); ``executor``: a process pool to
    use instead of starting one. Raises ``ProvenanceError`` if the inputs do not load (before any
    statement) or the workers fail."""
    if not 0 <= workers <= MAX_WORKERS or run < 1:
        raise ValueError(f"workers must be 0 to {MAX_WORKERS} and run at least 1")
    keys, trusted = inputs.load()
    wanted = workers or os.cpu_count() or 1
    run = min(run, -(-len(paths) // wanted) or 1)  # a small batch still goes to every worker
    runs = [list(paths[i : i + run]) for i in range(0, len(paths), run)]
    count = min(wanted, len(runs))
    if count <= 1 and executor is None:
        verifier = StatementVerifier(keys, trusted=trusted)
        return [verify_one(verifier, p, summarize) for p in paths]
    try:
        if executor is not None:
            return _in_pool(executor, runs, inputs, summarize, max(count, 1))
        context = multiprocessing.get_context("spawn")  # no fork of a threaded caller
        with ProcessPoolExecutor(count, mp_context=context) as pool:
            return _in_pool(pool, runs, inputs, summarize, count)
    except (BrokenExecutor, OSError) as err:
        raise ProvenanceError(
            ProvenanceCode.PROVENANCE_VERIFIER_FAILED,
            f"a verifier worker process failed ({type(err).__name__}): no statement was reported",
        ) from None


def _in_pool(
    pool: Executor,
    runs: list[list[Path]],
    inputs: VerifierInputs,
    summarize: Callable[[Verified], T],
    count: int,
) -> list[T | ProvenanceError]:
    token = os.urandom(16)  # this call's verifier in each worker: nothing carries over from another call
    results: list[T | ProvenanceError] = []
    pending: deque[Future[list[_Sent]]] = deque()
    todo = iter(runs)
    while True:
        while len(pending) < 2 * count and (nxt := next(todo, None)) is not None:
            pending.append(pool.submit(verify_run, token, inputs, summarize, [str(p) for p in nxt]))
        if not pending:
            return results
        for ok, sent in pending.popleft().result():
            results.append(sent if ok else _refusal(*sent))


def _refusal(code: str, message: str, hint: str) -> ProvenanceError:
    return ProvenanceError(ProvenanceCode(code), message, hint)


_verifiers: dict[bytes, StatementVerifier] = {}  # in a worker process: the current call's, by its token


def verify_run(
    token: bytes, inputs: VerifierInputs, summarize: Callable[[Verified], Any], paths: list[str]
) -> list[_Sent]:
    """In a worker: verify ``paths`` with this call's verifier (made on the call's first run here)."""
    verifier = _verifiers.get(token)
    if verifier is None:
        _verifiers.clear()  # the previous call's verifier goes before the next one is built
        keys, trusted = inputs.load()
        verifier = _verifiers[token] = StatementVerifier(keys, trusted=trusted)
    sent: list[_Sent] = []
    for path in paths:
        outcome = verify_one(verifier, Path(path), summarize)
        if isinstance(outcome, ProvenanceError):
            sent.append((False, (outcome.code.value, outcome.message, outcome.hint)))
        else:
            sent.append((True, outcome))
    return sent
