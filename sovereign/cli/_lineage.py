"""``sovereign audit lineage``: what went into a model output, and which outputs a dataset went into.

    sovereign audit lineage --output SHA256     the output's provenance statement, verified (auditor role)
    sovereign audit lineage --dataset KEY       outputs recorded by nodes after they were granted KEY to read

Both run over the Audit RPCs with the caller's token (auditor role). ``--output`` fetches the statement and
the public keys from the same server and verifies it (for a verification that trusts no server, use
``sovereign provenance verify`` with keys obtained out of band). ``--dataset`` reads the ledger: every
``release.grant`` of KEY for reading, then each such node's ``model.output`` entries recorded after that
grant (same node id: the keys it held were in the agent's memory).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kms.audit.checkpoint import AuditKeys
from kms.audit.entry import Entry, Kind
from kms.domain.transit import AUDIT_KEY_NAME, PROVENANCE_KEY_NAME
from kms.errors import Code, KmsError
from kms.provenance.errors import ProvenanceError
from kms.provenance.verify import PublicKeys, Verified, lineage_text, verify_statement
from sovereign.cli._output import fail, print_json, print_table
from sovereign.cli.audit import _remote
from sovereign.client import AuditClient
from sovereign.client.records import Decision

PAGE = 1000
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _entries(client: AuditClient, **query: Any) -> Iterator[Entry]:
    token = ""
    while True:
        page = client.list_entries(page_size=PAGE, page_token=token, **query)
        for record in page.entries:
            yield Entry.decode(record.canonical)
        token = page.next_page_token
        if not token:
            return


def outputs_of_dataset(client: AuditClient, key: str) -> list[dict[str, Any]]:
    """Every recorded output of a node after that node was granted ``key`` for reading."""
    first_read: dict[str, Entry] = {}
    for e in _entries(client, key_name=key, decision=Decision.GRANT):
        if e.kind is Kind.RELEASE_GRANT and e.fields.get("purpose") == "read":
            first_read.setdefault(str(e.fields.get("node_id")), e)
    out = []
    for node_id, grant in sorted(first_read.items()):
        for e in _entries(client, node_id=node_id, decision=Decision.GRANT):
            if e.kind is Kind.MODEL_OUTPUT and e.seq > grant.seq:
                f = e.fields
                out.append(
                    {
                        "output_sequence": e.seq,
                        "time": e.time,
                        "node_id": node_id,
                        "output_sha256": f.get("output_sha256"),
                        "sealed_sha256": f.get("sealed_sha256"),
                        "key": f"{f.get('key_name')}@v{f.get('key_version')}",
                        "job": f.get("job_name", ""),
                        "step": f.get("step"),
                        "dataset_grant": grant.seq,
                    }
                )
    return sorted(out, key=lambda o: o["output_sequence"])


def inputs_of_output(client: AuditClient, sha256: bytes) -> Verified:
    """The output's statement, verified with the server's own public keys."""
    envelope, _ = client.provenance(sha256)
    keys = client.signing_keys()
    public = PublicKeys(
        AuditKeys(
            {v: Ed25519PublicKey.from_public_bytes(k) for v, k in keys.get(AUDIT_KEY_NAME, {}).items()}
        ),
        AuditKeys(
            {v: Ed25519PublicKey.from_public_bytes(k) for v, k in keys.get(PROVENANCE_KEY_NAME, {}).items()}
        ),
    )
    return verify_statement(envelope, public)


def _lineage(args: argparse.Namespace, client: AuditClient) -> int:
    if args.dataset:
        rows = outputs_of_dataset(client, args.dataset)
        if args.json:
            print_json({"ok": True, "dataset": args.dataset, "outputs": rows})
        elif rows:
            print_table(rows, ["output_sequence", "time", "node_id", "output_sha256", "key", "job", "step"])
        else:
            print(f"no recorded output of a node that was granted {args.dataset}")
        return 0
    if not _SHA256.fullmatch(args.output):
        return fail(
            KmsError("--output is 64 lowercase hex digits", code=Code.REQUEST_INVALID), as_json=args.json
        )
    try:
        verified = inputs_of_output(client, bytes.fromhex(args.output))
    except ProvenanceError as err:
        return fail(err, as_json=args.json)
    if args.json:
        p = verified.predicate
        print_json(
            {
                "ok": True,
                "output": p["output"],
                "datasets": p["datasets"],
                "node": p["node"],
                "cpu": {k: v for k, v in p["cpu"].items() if k != "claims"},
                "gpus": p["gpus"],
                "policy": p["policy"],
                "write_grant": p["write_grant"],
            }
        )
    else:
        print("\n".join(lineage_text(verified)))
    return 0


run = _remote(_lineage)
