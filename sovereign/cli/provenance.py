"""``sovereign provenance``: fetch a model output's signed statement, export the public keys, verify offline.

    sovereign provenance keys --out DIR                  audit.json + provenance.json (public keys)
    sovereign provenance get --output SHA256 -o FILE     the DSSE envelope, over the Audit RPC (auditor role)
    sovereign provenance verify FILE --public-keys DIR [--checkpoint TRUSTED] [--file F] [--json]

``verify`` needs no network: DSSE signature, statement shape, every inclusion proof, the checkpoint's
signature, consistency with a trusted checkpoint if given, the subject against a file if given; it prints
the lineage (datasets -> node and its hardware -> output). docs/provenance.md lists the codes.
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
from kms.provenance.verify import lineage_text, load_public_keys, load_trusted, verify_statement
from sovereign.cli._output import fail, print_json
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


def _verify(args: argparse.Namespace) -> int:
    try:
        try:
            keys = load_public_keys(
                (args.public_keys / AUDIT_FILE).read_bytes(),
                (args.public_keys / PROVENANCE_FILE).read_bytes(),
            )
            data = args.statement.read_bytes()
            trusted = load_trusted(args.checkpoint.read_bytes()) if args.checkpoint else None
            file_sha256 = _file_sha256(args.file) if args.file else None
        except OSError as err:
            code = ProvenanceCode.PROVENANCE_KEYS_INVALID
            raise ProvenanceError(code, f"cannot read an input: {err.strerror}: {err.filename}") from None
        verified = verify_statement(data, keys, trusted=trusted, file_sha256=file_sha256)
    except ProvenanceError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_json(
            {
                "ok": True,
                "subject": {
                    "sha256": verified.subject_sha256[0],
                    "sealed_sha256": verified.subject_sha256[1],
                },
                "lineage": verified.lineage.to_obj(),
                "cpu": {k: v for k, v in verified.predicate["cpu"].items() if k != "claims"},
                "gpus": verified.predicate["gpus"],
                "checkpoint": verified.checkpoint.to_obj(),
                "key_version": verified.key_version,
            }
        )
    else:
        print("statement verified")
        for line in lineage_text(verified):
            print(line)
    return 0
