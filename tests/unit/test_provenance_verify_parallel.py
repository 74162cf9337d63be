"""The parallel batch verifier agrees with the sequential one: every case of test_provenance_verify.py runs
through both.

The test functions of ``unit.test_provenance_verify`` are collected here again with that module's
``verify_statement`` replaced by ``_both``: it writes the keys, the trusted checkpoint and the statement
(twice, so both workers see it, one statement per run) to files, verifies them with ``verify_files`` on two
worker processes, asserts that each result is the sequential verifier's (the same ``Verified``, or the same
code, message and hint), and hands the sequential outcome back to the original test's own assertions.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from provenance_ledger import training_ledger
from unit import test_provenance_verify as cases
from unit.test_provenance_verify import *  # noqa: F403 - every case again, through _both

from kms.audit.checkpoint import AuditKeys
from kms.audit.entry import Kind
from kms.provenance.errors import ProvenanceCode as C
from kms.provenance.errors import ProvenanceError
from kms.provenance.verify import PublicKeys, TrustedCheckpoint, Verified, verify_statement
from kms.provenance.verify_parallel import VerifierInputs, verify_files, whole
from sovereign.cli import main

POOL: list[ProcessPoolExecutor] = []


def _key_json(keys: AuditKeys) -> bytes:
    versions = keys._by_version  # the test's keys are versioned; their raw bytes as the key files hold them
    raw = {str(v): base64.b64encode(k.public_bytes_raw()).decode() for v, k in versions.items()}
    return json.dumps({"type": "ed25519", "keys": raw}).encode()


def inputs_of(keys: PublicKeys, trusted: TrustedCheckpoint | None = None) -> VerifierInputs:
    trusted_json = None
    if trusted is not None:
        obj = {
            "checkpoint": trusted.checkpoint.to_obj(),
            "consistency": [h.hex() for h in trusted.consistency],
        }
        trusted_json = json.dumps(obj).encode()
    return VerifierInputs(_key_json(keys.audit), _key_json(keys.provenance), trusted_json)


def same(got: Verified | ProvenanceError, want: Verified | ProvenanceError) -> bool:
    if isinstance(want, ProvenanceError):
        return isinstance(got, ProvenanceError) and got.to_dict() == want.to_dict()
    return got == want


def _sequential(data: bytes, keys: PublicKeys, **kw: Any) -> Verified | ProvenanceError:
    try:
        return verify_statement(data, keys, **kw)
    except ProvenanceError as err:
        return err


def _both(
    data: bytes,
    keys: PublicKeys,
    *,
    trusted: TrustedCheckpoint | None = None,
    file_sha256: str | None = None,
) -> Verified:
    # a batch has no --file: the parallel result is compared with the sequential one without it
    want = _sequential(data, keys, trusted=trusted)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "a.json", Path(tmp) / "b.json"]
        for p in paths:
            p.write_bytes(data)
        got = verify_files(
            paths, inputs_of(keys, trusted), summarize=whole, workers=2, run=1, executor=POOL[0]
        )
    assert len(got) == 2 and all(same(g, want) for g in got), (got, want)
    outcome = _sequential(data, keys, trusted=trusted, file_sha256=file_sha256)
    if isinstance(outcome, ProvenanceError):
        raise outcome
    return outcome


@pytest.fixture(scope="module", autouse=True)
def _through_both() -> Iterator[None]:
    with (
        ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool,
        pytest.MonkeyPatch.context() as mp,
    ):
        POOL.append(pool)
        mp.setattr(cases, "verify_statement", _both)
        yield
        POOL.clear()


def _run_of(outputs: int) -> tuple[Any, list[bytes]]:
    led, first = training_ledger(datasets=2)
    template = dict(led.entries[first].fields)
    seqs = [first]
    for step in range(1, outputs):
        fields = {**template, "step": step, "request_id": f"{step:032x}", "output_sha256": f"{step:064x}"}
        seqs.append(led.add(Kind.MODEL_OUTPUT, **fields))
    checkpoint = led.checkpoint()
    return led, [led.statement(s, checkpoint) for s in seqs]


def test_a_mixed_batch_gives_the_sequential_results_in_order(tmp_path: Path) -> None:
    led, statements = _run_of(9)
    tampered = [
        cases.edit(statements[1], lambda s: s["predicate"]["datasets"].pop()),
        cases.edit(statements[2], lambda s: s["subject"][0]["digest"].update(sha256="00" * 32)),
        cases._resign_checkpoint(statements[3], cases.Ed25519PrivateKey.generate()),
        b"{}",
    ]
    batch = [*statements[:4], *tampered, *statements[4:]]
    paths = []
    for i, data in enumerate(batch):
        paths.append(tmp_path / f"{i:02}.json")
        paths[-1].write_bytes(data)
    paths.insert(5, tmp_path / "missing.json")  # unreadable: a refusal in its place, as sequentially
    fresh = [_sequential(p.read_bytes(), led.keys()) if p.exists() else None for p in paths]
    sequential = verify_files(paths, inputs_of(led.keys()), summarize=whole, workers=1)
    assert all(same(s, f) for s, f in zip(sequential, fresh, strict=True) if f is not None)
    for run in (1, 3, 16):
        got = verify_files(
            paths, inputs_of(led.keys()), summarize=whole, workers=2, run=run, executor=POOL[0]
        )
        assert len(got) == len(sequential) and all(map(same, got, sequential))
    codes = [r.code if isinstance(r, ProvenanceError) else None for r in sequential]
    assert codes.count(None) == 9 and codes[5] is C.PROVENANCE_MALFORMED
    assert {C.PROVENANCE_PREDICATE_MISMATCH, C.PROVENANCE_SUBJECT_MISMATCH} <= set(codes)
    assert C.PROVENANCE_CHECKPOINT_SIGNATURE_INVALID in codes


def test_a_worker_that_dies_is_a_coded_error_not_a_partial_result(tmp_path: Path) -> None:
    led, statements = _run_of(4)
    paths = []
    for i, data in enumerate(statements):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_bytes(data)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        doomed = pool.submit(os.getpid).result()
        os.kill(doomed, signal.SIGKILL)
        with pytest.raises(ProvenanceError) as info:
            verify_files(paths, inputs_of(led.keys()), summarize=whole, workers=2, run=1, executor=pool)
    assert info.value.code is C.PROVENANCE_VERIFIER_FAILED


def test_bad_worker_counts_are_refused_before_any_work() -> None:
    led, _ = _run_of(1)
    for workers in (-1, 65):
        with pytest.raises(ValueError, match="workers"):
            verify_files([], inputs_of(led.keys()), summarize=whole, workers=workers)


def test_cli_workers_gives_the_same_report_as_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    led, statements = _run_of(6)
    keys = led.key_files(tmp_path / "keys")
    batch = tmp_path / "statements"
    batch.mkdir()
    for i, data in enumerate(statements):
        (batch / f"{i}.json").write_bytes(data)
    (batch / "9.json").write_bytes(
        cases.edit(statements[0], lambda s: s["predicate"]["node"].update(name="x"))
    )
    reports = []
    for workers in ("1", "2", "0"):
        args = [
            "provenance",
            "verify",
            str(batch),
            "--public-keys",
            str(keys),
            "--json",
            "--workers",
            workers,
        ]
        assert main(args) == 1
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0] == reports[1] == reports[2]
    assert (reports[0]["verified"], reports[0]["refused"]) == (6, 1)
    assert reports[0]["statements"][-1]["error"]["code"] == "PROVENANCE_PREDICATE_MISMATCH"
    # one statement with --workers: verified in this process, with its lineage
    one = ["provenance", "verify", str(batch / "0.json"), "--public-keys", str(keys), "--workers", "2"]
    assert main(one) == 0
    assert "statement verified" in capsys.readouterr().out
    # a bad N is a coded usage error, never a traceback
    for bad in ("-1", "two", "65"):
        try:
            code: object = main([*one, "--json", "--workers", bad])
        except SystemExit as exit_:  # the argument parser's own refusal
            code = exit_.code
        assert code == 2
        reply = json.loads(capsys.readouterr().out)
        assert reply["ok"] is False and reply["error"]["code"] == "USAGE_INVALID"
        assert "--workers" in reply["error"]["message"]
