"""``sovereign provenance``: fetch a model output's signed statement, export the public keys, verify offline.

    sovereign provenance keys --out DIR                  audit.json + provenance.json (public keys)
    sovereign provenance get --output SHA256 -o FILE     the DSSE envelope, over the Audit RPC (auditor role)
    sovereign provenance verify FILE --public-keys DIR [--checkpoint TRUSTED] [--file F] [--json]
    sovereign provenance verify FILE... | DIR --public-keys DIR [--checkpoint TRUSTED] [--workers N] [--json]

``verify`` needs no network: DSSE signature, statement shape, every inclusion proof, the checkpoint's
signature, consistency with a trusted checkpoint if given, the subject against a file if given; it prints
the lineage (datasets -> node and its hardware -> output). Given several statements (or a directory of
them) it prints one result per statement, verifying with one ``StatementVerifier`` so a checkpoint and
the entries they share are checked once; ``--workers N`` splits the batch over N processes
(``kms/provenance/verify_parallel.py``), with the same results. docs/provenance.md lists the codes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from kms.audit.errors import AuditError
from kms.domain.transit import AUDIT_KEY_NAME, PROVENANCE_KEY_NAME
from kms.errors import Code, KmsError
from kms.oidc.errors import AuthError
from kms.provenance.errors import ProvenanceCode, ProvenanceError
from kms.provenance.verify import StatementVerifier, Verified, lineage_text
from kms.provenance.verify_parallel import MAX_WORKERS, VerifierInputs, verify_files
from sovereign.cli._output import UsageError, fail, print_json
from sovereign.cli.audit import audit_client
from sovereign.client import AuditClient, OperatorError

AUDIT_FILE = "audit.json"
PROVENANCE_FILE = "provenance.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _key_file(name: str, versions: dict[int, bytes]) -> str:
    body = {
        "name": name,
        "type": "ed25519",
        "keys": {str(v): base64.b64encode(k).decode() for v, k in versions.items()},
    }
    return json.dumps(body, sort_keys=True, indent=1) + "\n"


def write_public_keys(client: AuditClient, out: Path) -> dict[str, list[int]]:
    """Write DIR/audit.json and DIR/provenance.json (OpenBao transit key JSON form); their versions."""
    keys = client.signing_keys()
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[int]] = {}
    for name, filename in ((AUDIT_KEY_NAME, AUDIT_FILE), (PROVENANCE_KEY_NAME, PROVENANCE_FILE)):
        versions = keys.get(name, {})
        if not versions:
            raise KmsError(f"the server sent no public key for {name}", code=Code.PROVENANCE_SIGNER_FAILED)
        (out / filename).write_text(_key_file(name, versions))
        written[name] = sorted(versions)
    return written


def _remote(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args, audit_client(args)))
        except (OperatorError, AuditError, KmsError, AuthError) as err:
            return fail(err, as_json=args.json)
        except OSError as err:
            return fail(KmsError(f"cannot write a file: {err}", code=Code.REQUEST_INVALID), as_json=args.json)

    return run


@_remote
def _get(args: argparse.Namespace, client: AuditClient) -> int:
    if not _SHA256.fullmatch(args.output):
        return fail(
            KmsError("--output is 64 lowercase hex digits", code=Code.REQUEST_INVALID), as_json=args.json
        )
    envelope, sequence = client.provenance(bytes.fromhex(args.output))
    args.out.write_bytes(envelope)
    if args.json:
        print_json({"ok": True, "file": str(args.out), "output_sequence": sequence})
    else:
        print(f"wrote the statement of output {args.output[:16]}... (ledger #{sequence}) to {args.out}")
    return 0


@_remote
def _keys(args: argparse.Namespace, client: AuditClient) -> int:
    written = write_public_keys(client, args.out)
    if args.json:
        print_json({"ok": True, "directory": str(args.out), "versions": written})
    else:
        for name, versions in written.items():
            print(f"{name}: versions {', '.join(map(str, versions))}")
        print(f"wrote {args.out / AUDIT_FILE} and {args.out / PROVENANCE_FILE}")
    return 0


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verified_obj(verified: Verified) -> dict[str, Any]:
    """What a verified statement proves, as ``--json`` prints it (run in the worker that verified it)."""
    return {
        "subject": {"sha256": verified.subject_sha256[0], "sealed_sha256": verified.subject_sha256[1]},
        "lineage": verified.lineage.to_obj(),
        "cpu": {k: v for k, v in verified.predicate["cpu"].items() if k != "claims"},
        "gpus": verified.predicate["gpus"],
        "checkpoint": verified.checkpoint.to_obj(),
        "key_version": verified.key_version,
    }


def _unreadable(err: OSError) -> ProvenanceError:
    code = ProvenanceCode.PROVENANCE_KEYS_INVALID
    return ProvenanceError(code, f"cannot read an input: {err.strerror}: {err.filename}")


def _statement_files(paths: list[Path]) -> list[Path]:
    """Each path as given, a directory as its regular files in name order (not recursing)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file())
        else:
            files.append(path)
    return files


def _verify(args: argparse.Namespace) -> int:
    batch = len(args.statement) > 1 or args.statement[0].is_dir()
    if batch and args.file:
        raise UsageError(
            "--file names one output: give it with one statement",
            "verify the batch without --file, then the one statement with --file",
        )
    if args.workers > MAX_WORKERS:
        raise UsageError(
            f"--workers is at most {MAX_WORKERS}, got {args.workers}",
            "give the number of CPUs to use, or 0 for one worker per CPU",
        )
    try:
        try:
            inputs = VerifierInputs(
                (args.public_keys / AUDIT_FILE).read_bytes(),
                (args.public_keys / PROVENANCE_FILE).read_bytes(),
                args.checkpoint.read_bytes() if args.checkpoint else None,
            )
            file_sha256 = _file_sha256(args.file) if args.file else None
            files = _statement_files(args.statement)
        except OSError as err:
            raise _unreadable(err) from None
        keys, trusted = inputs.load()
        if batch:
            return _verify_batch(files, inputs, workers=args.workers, as_json=args.json)
        try:
            data = files[0].read_bytes()
        except OSError as err:
            raise _unreadable(err) from None
        verified = StatementVerifier(keys, trusted=trusted).verify(data, file_sha256=file_sha256)
    except ProvenanceError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_json({"ok": True, **verified_obj(verified)})
    else:
        print("statement verified")
        for line in lineage_text(verified):
            print(line)
    return 0


def _verify_batch(files: list[Path], inputs: VerifierInputs, *, workers: int, as_json: bool) -> int:
    """One result per statement; exit 0 only if every one verified."""
    if not files:
        raise UsageError(
            "no statement files: the directory is empty", "give statement files or a directory of them"
        )
    results: list[dict[str, Any]] = []
    for path, outcome in zip(
        files, verify_files(files, inputs, summarize=verified_obj, workers=workers), strict=True
    ):
        if isinstance(outcome, ProvenanceError):
            results.append({"file": str(path), "ok": False, "error": outcome.to_dict()})
        else:
            results.append({"file": str(path), "ok": True, **outcome})
    refused = sum(1 for r in results if not r["ok"])
    if as_json:
        print_json(
            {
                "ok": refused == 0,
                "verified": len(results) - refused,
                "refused": refused,
                "statements": results,
            }
        )
    else:
        for r in results:
            if r["ok"]:
                print(f"verified  {r['file']}  output {r['subject']['sha256']}")
            else:
                print(f"REFUSED   {r['file']}  {r['error']['code']}: {r['error']['message']}")
        print(f"{len(results) - refused} verified, {refused} refused")
    return 0 if refused == 0 else 1
