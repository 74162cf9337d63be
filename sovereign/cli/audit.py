"""``sovereign audit``: verify an export offline; tail, query, export and prove against the server's Audit
RPCs; reconcile OpenBao's audit log with the ledger.

``verify`` needs no server. The other actions talk to the operator endpoint (``--server``, TLS with
``--ca``, the cached ``sovereign login`` token as bearer); ``reconcile`` reads the ledger from
``--export FILE`` or, without it, from the server. The server-side logic lives in ``kms.audit``; this
module only parses arguments, calls and prints.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from kms.audit.checkpoint import AuditKeys, Checkpoint, load_audit_keys
from kms.audit.entry import Entry
from kms.audit.errors import AuditError, ExportInvalid, KeyInvalid, ProofInvalid
from kms.audit.export import parse_json_line, read_lines, write_items
from kms.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from kms.audit.reconcile import parse_bao_log, reconcile
from kms.audit.verify import unchecked_head_error
from kms.audit.verify_parallel import verify_export_file
from kms.domain.transit import AUDIT_KEY_NAME
from kms.errors import Code, KmsError
from kms.oidc.errors import AuthError
from kms.openbao.bootstrap import ROLE_NAME
from kms.openbao.vault import TRANSIT_MOUNT
from sovereign.cli._audit_pin import fingerprints, pin_document, write_pin
from sovereign.cli._installed import operator_address, operator_ca
from sovereign.cli._output import UsageError, error_fields, fail, print_json, print_ok, print_table
from sovereign.cli._session import operator_token
from sovereign.client import AuditClient, OperatorError, operator_channel
from sovereign.client.errors import read_ca
from sovereign.client.records import AuditRecord, Decision

MAX_KEY_FILE = 1 << 20


def _read(path: Path, what: str, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise KeyInvalid(f"cannot read {what} {path}: {err.strerror}") from None
    if len(data) > limit:
        raise KeyInvalid(f"{what} {path} is larger than {limit} bytes")
    return data


def _keys(args: argparse.Namespace) -> tuple[AuditKeys, Checkpoint | None]:
    keys = load_audit_keys(_read(args.public_key, "public key file", MAX_KEY_FILE))
    trusted = None
    if args.checkpoint is not None:
        obj = parse_json_line(_read(args.checkpoint, "checkpoint file", MAX_KEY_FILE), 1, canonical=False)
        trusted = Checkpoint.from_obj(obj.get("checkpoint", obj))
    return keys, trusted


def _server_head(args: argparse.Namespace) -> Checkpoint:
    """The server's latest checkpoint; its signature is checked by the verifier like any other."""
    try:
        client = audit_client(args)
    except OSError as err:
        raise KmsError(
            f"cannot read the server CA {args.ca}: {err.strerror}", code=Code.REQUEST_INVALID
        ) from None
    return client.checkpoint()


def _verify(args: argparse.Namespace) -> int:
    if args.checkpoint is not None and args.server_head:
        raise UsageError("give --checkpoint FILE or --server-head, not both")
    try:
        keys, trusted = _keys(args)
        source = "checkpoint"
        if args.server_head:
            trusted, source = _server_head(args), f"server_head {args.server}"
        report = verify_export_file(
            args.export, keys, workers=args.workers, trusted=trusted, min_size=args.min_size,
            trusted_source=source,
        )  # fmt: skip
    except OSError as err:
        error = ExportInvalid(f"cannot read {args.export}: {err.strerror}", code=Code.AUDIT_MALFORMED_EXPORT)
        return fail(error, as_json=args.json)
    except OperatorError as err:
        return fail(err, as_json=args.json)
    except (KmsError, AuthError) as err:  # AuditError included
        return fail(err, as_json=args.json)
    if not report.fresh and not args.accept_unchecked_head:
        unchecked = unchecked_head_error(report)
        if args.json:
            print_json({**report.to_dict(), "ok": False, "error": error_fields(unchecked)})
            return 1
        return fail(unchecked, as_json=False)
    if args.json:
        print_ok(report.to_dict())
        return 0
    summary = (
        f"{report.entries} entries, {report.checkpoints} checkpoints, final size {report.size}, "
        f"root {report.root} (signed {report.time} by {report.key_id})"
    )
    if report.fresh:
        print(f"OK {summary}; fresh: {_describe(report.checked_against)}")
    else:
        print(f"VERIFIED, FRESHNESS NOT CHECKED (--accept-unchecked-head): {summary}")
        print(
            "warning: nothing outside the export shows it is the latest ledger; pass --checkpoint FILE, "
            "--server-head or --min-size N to check",
            file=sys.stderr,
        )
    return 0


def _describe(against: tuple[tuple[str, object], ...]) -> str:
    parts = []
    for name, value in against:
        if isinstance(value, dict):
            parts.append(f"reaches the {name} of size {value['size']} (signed {value['time']})")
        else:
            parts.append(f"holds at least {value} entries ({name})")
    return "; ".join(parts)


# --- server-backed actions ------------------------------------------------------------------------


_DECISIONS = {"grant": Decision.GRANT, "deny": Decision.DENY}
COLUMNS = ("seq", "time", "kind", "decision", "who", "node", "key_name", "reasons")
_NODE_ID = re.compile(r"n-[0-9a-f]{24}")  # kms.domain.registry.new_node_id


def audit_client(args: argparse.Namespace) -> AuditClient:
    target: str = args.server or operator_address()
    args.server = target
    plaintext = target.startswith("unix:") or args.insecure
    ca_path = Path(args.ca) if args.ca else operator_ca()
    if not plaintext and ca_path is None:
        raise KmsError(
            "no CA to pin for the operator port",
            code=Code.REQUEST_INVALID,
            hint="give --ca or set SOVEREIGN_CA (serve's --tls-ca, or ca.pem in its --dev-tls folder)",
        )
    ca = None if plaintext or ca_path is None else read_ca(ca_path)
    channel = operator_channel(target, ca=ca, insecure=args.insecure)
    # as 'sovereign admin': an expired or missing sign-in is said here, with the command to run
    return AuditClient(channel, metadata=operator_token(args.token_cache).metadata(), target=target)


def _remote(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args, audit_client(args)))
        except (OperatorError, AuditError, KmsError, AuthError) as err:
            return fail(err, as_json=args.json)
        except OSError as err:
            return fail(
                KmsError(f"cannot read or write a file: {err}", code=Code.REQUEST_INVALID), as_json=args.json
            )

    return run


def _row(item: AuditRecord) -> dict[str, Any]:
    entry = Entry.decode(item.canonical)
    return {
        "seq": item.sequence,
        "time": entry.time,
        "kind": str(entry.kind),
        "decision": str(entry.decision),
        "actor": entry.actor,
        "node_id": item.node_id,
        "key_name": item.key_name,
        "reasons": ",".join(r.code for r in entry.reasons),
        "fields": {k: list(v) if isinstance(v, tuple) else v for k, v in entry.fields.items()},
    }


def _people(rows: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """Rows as people read them: the operator's username for the actor (the subject is the record),
    and the node's name for its id (``names``: from entries that carry it, else looked up)."""
    for row in rows:
        fields = row["fields"]
        if isinstance(fields.get("node_name"), str) and row["node_id"]:
            names.setdefault(row["node_id"], fields["node_name"])
    out = []
    for row in rows:
        username = row["fields"].get("username")
        node_id = row["node_id"]
        node = f"{names[node_id]} ({node_id[:8]})" if names.get(node_id) else node_id
        out.append(
            {**row, "who": username if isinstance(username, str) and username else row["actor"], "node": node}
        )
    return out


def _name_nodes(client: AuditClient, rows: list[dict[str, Any]], names: dict[str, str]) -> None:
    """Add to ``names`` the name of every node in ``rows`` not named yet: a node's first ledger entry is
    its registration, which carries the name it registered under (one small call per node; a node with
    no such entry keeps its id, recorded as "" so it is asked once)."""
    _people(rows, names)
    for node_id in dict.fromkeys(row["node_id"] for row in rows if row["node_id"]):
        if node_id in names:
            continue
        first = client.list_entries(node_id=node_id, page_size=1).entries
        name = Entry.decode(first[0].canonical).fields.get("node_name") if first else None
        names[node_id] = name if isinstance(name, str) else ""


def _print(
    rows: list[dict[str, Any]],
    as_json: bool,
    names: dict[str, str],
    *,
    follow: bool = False,
    empty: str = "",
) -> None:
    """One envelope (``entries``), or with ``--follow`` one envelope per line (``entry``); for people, a
    table, or ``empty`` when there is no row."""
    if as_json and follow:
        for row in rows:
            print(json.dumps({"ok": True, "entry": row}, sort_keys=True), flush=True)
    elif as_json:
        print_ok(entries=rows)
    elif rows:
        print_table(_people(rows, names), COLUMNS)
        sys.stdout.flush()
    elif empty:
        print(empty, flush=True)


def _page(client: AuditClient, **query: Any) -> tuple[list[dict[str, Any]], str]:
    reply = client.list_entries(**query)
    return [_row(e) for e in reply.entries], reply.next_page_token


def _size(client: AuditClient) -> int:
    try:
        return client.checkpoint().size
    except OperatorError:
        return 0


@_remote
def _tail(args: argparse.Namespace, client: AuditClient) -> int:
    start = max(0, _size(client) - args.lines)
    rows: list[dict[str, Any]] = []
    token = str(start)
    while True:  # entries after the latest checkpoint are listed too: read to the end
        page, nxt = _page(client, page_token=token, page_size=1000)
        rows += page
        token = nxt or (str(page[-1]["seq"] + 1) if page else token)
        if not nxt:
            break
    names: dict[str, str] = {}
    _people(rows, names)  # names of nodes that registered earlier in what was read
    shown = rows[-args.lines :] if args.lines > 0 else []
    if not args.json:
        _name_nodes(client, shown, names)
    empty = "the ledger has no entries yet" if not rows and not args.follow else ""
    _print(shown, args.json, names, follow=args.follow, empty=empty)
    while args.follow:
        time.sleep(1.0)
        page, nxt = _page(client, page_token=token, page_size=1000)
        if not args.json:
            _name_nodes(client, page, names)
        _print(page, args.json, names, follow=True)
        if page:
            token = str(page[-1]["seq"] + 1)
    return 0


def _node_filter(node: str | None) -> dict[str, str]:
    """A node id is 32 hex digits (the store's ids); anything else is the name it registered under."""
    if not node:
        return {}
    return {"node_id": node} if _NODE_ID.fullmatch(node) else {"node_name": node}


def _key_filter(key: str | None) -> dict[str, str]:
    if not key:
        return {}
    return {"key_prefix": key[:-1]} if key.endswith("*") else {"key_name": key}


@_remote
def _query(args: argparse.Namespace, client: AuditClient) -> int:
    query: dict[str, Any] = {
        **_node_filter(args.node),
        **_key_filter(args.key),
        "reason_code": args.reason,
        "decision": _DECISIONS.get(args.decision or ""),
        "start": args.since.astimezone(UTC) if args.since else None,
        "end": args.until.astimezone(UTC) if args.until else None,
    }
    rows: list[dict[str, Any]] = []
    token = ""
    while len(rows) < args.limit:
        page, token = _page(client, **query, page_size=min(1000, args.limit - len(rows)), page_token=token)
        rows += page
        if not token:
            break
    names: dict[str, str] = {}
    if not args.json:
        _name_nodes(client, rows, names)
    _print(rows, args.json, names, empty="no entries match the query")
    return 0


@_remote
def _export(args: argparse.Namespace, client: AuditClient) -> int:
    with tempfile.TemporaryFile() as spool, args.output.open("wb") as out:
        final = write_items(out, client.export(0, args.size), spool)
    summary = {
        "file": str(args.output),
        "size": final.size,
        "root": final.root.hex(),
        "time": final.time,
    }
    if args.json:
        print_ok(summary)
    else:
        print(
            f"exported {final.size} entries to {args.output} (root {final.root.hex()}, signed {final.time})"
        )
    return 0


@_remote
def _save_checkpoint(args: argparse.Namespace, client: AuditClient) -> int:
    cp = client.checkpoint()
    args.output.write_text(json.dumps({"checkpoint": cp.to_obj()}, sort_keys=True) + "\n")
    if args.json:
        print_ok({"file": str(args.output), **cp.to_obj()})
    else:
        print(
            f"saved the checkpoint of size {cp.size} (root {cp.root.hex()}, signed {cp.time}) to {args.output}"
        )
    return 0


@_remote
def _public_key(args: argparse.Namespace, client: AuditClient) -> int:
    versions = client.signing_keys().get(AUDIT_KEY_NAME, {})
    if not versions:
        raise KeyInvalid(
            f"the server listed no {AUDIT_KEY_NAME} key", hint="check that the server signs checkpoints"
        )
    document = pin_document(AUDIT_KEY_NAME, versions)
    load_audit_keys(document)  # what is pinned must load as the verifiers will load it
    if args.output is not None:
        write_pin(args.output, document)
    out: dict[str, Any] = {"key_name": AUDIT_KEY_NAME, "fingerprints": fingerprints(versions)}
    if args.output is not None:
        out["path"] = str(args.output)
    if args.json:
        print_ok(out)
    else:
        for version, fingerprint in out["fingerprints"].items():
            print(f"{AUDIT_KEY_NAME} v{version} {fingerprint}")
        if args.output is not None:
            print(f"pinned to {args.output}")
    return 0


CHECKPOINT_SIZES = (
    "a size must be that of a signed checkpoint: the size 'sovereign audit checkpoint -o FILE' printed when "
    "you saved one, or the size of a checkpoint line in an export (checkpoints are signed about once a second "
    "while entries are added, so most sizes have none); --size 0 is the latest"
)


def _checkpoint_of(client: AuditClient, size: int, option: str) -> Checkpoint:
    try:
        return client.checkpoint(size)
    except OperatorError as err:
        if err.code != Code.AUDIT_NOT_FOUND.value or size == 0:
            raise
        raise OperatorError(
            err.code, f"{option} {size}: {err.message}", CHECKPOINT_SIZES, err.status
        ) from None


@_remote
def _proof(args: argparse.Namespace, client: AuditClient) -> int:
    keys = load_audit_keys(_read(args.public_key, "public key file", MAX_KEY_FILE))
    cp = _checkpoint_of(client, args.size, "--size")
    keys.verify(cp)
    if args.leaf is not None:
        hashes = list(client.inclusion_proof(args.leaf, cp.size))
        listed = client.list_entries(page_token=str(args.leaf), page_size=1)
        if not listed.entries or listed.entries[0].sequence != args.leaf:
            raise ProofInvalid(f"entry {args.leaf} is not in the ledger")
        leaf = leaf_hash(listed.entries[0].canonical)
        verify_inclusion(args.leaf, cp.size, leaf, hashes, cp.root)
        out: dict[str, Any] = {"kind": "inclusion", "leaf_index": args.leaf, "tree_size": cp.size}
    else:
        first = _checkpoint_of(client, args.first, "--first")
        keys.verify(first)
        hashes = list(client.consistency_proof(first.size, cp.size))
        verify_consistency(first.size, cp.size, first.root, cp.root, hashes)
        out = {"kind": "consistency", "first_size": first.size, "second_size": cp.size}
    out |= {
        "root": cp.root.hex(),
        "checkpoint_time": cp.time,
        "signature": f"verified with {cp.key_id} v{cp.signature.version}",
        "hashes": [h.hex() for h in hashes],
    }
    if args.json:
        print_ok(out)
    else:
        print(
            f"OK {out['kind']} proof checked against the checkpoint of size {cp.size} (root {cp.root.hex()}), "
            f"its signature {out['signature']}"
        )
    return 0


def _reconcile(args: argparse.Namespace, client: AuditClient | None = None) -> int:
    path = f"{args.mount or TRANSIT_MOUNT}/decrypt/{args.kek}"
    with args.bao_log.open("rb") as f:
        decrypts = parse_bao_log(f, role_name=args.role or ROLE_NAME, path=path)
    if args.export is not None:
        with args.export.open("rb") as f:
            entries = [line[9:-2] for line in read_lines(f) if line.startswith(b'{"entry":')]
    else:
        assert client is not None
        entries = [item for item in client.export() if isinstance(item, bytes)]
    report = reconcile(decrypts, entries)
    if args.json and report.ok:
        print_ok({k: v for k, v in report.to_dict().items() if k != "ok"})
    elif args.json:
        error = {
            "code": "AUDIT_RECONCILE_MISMATCH",
            "message": "OpenBao's audit log and the ledger do not match",
            "hint": "see the unmatched decrypts and entries listed with this report",
        }
        print_json({**report.to_dict(), "ok": False, "error": error})
    else:
        print(
            f"{'OK' if report.ok else 'MISMATCH'}: {report.decrypts} OpenBao decrypts, {report.entries} ledger "
            f"entries with a request id, {report.matched} matched"
        )
        for d in report.unmatched_decrypts:
            print(
                f"  decrypt without a ledger entry: request {d.request_id} at {d.time} ({d.batch_size} items)"
            )
        for m in report.mismatched:
            print(
                f"  request {m.request_id}: batch of {m.expected}, ledger entries {list(m.found)} indices {list(m.indices)}"
            )
        for seq in report.unmatched_entries:
            print(f"  ledger entry {seq} names a request id OpenBao did not log")
    return 0 if report.ok else 1


def _reconcile_command(args: argparse.Namespace) -> int:
    if args.export is not None:  # offline: no server needed
        try:
            return _reconcile(args)
        except (AuditError, OSError) as err:
            if isinstance(err, OSError):
                err = AuditError(f"cannot read: {err}", code=Code.AUDIT_RECONCILE_INPUT_INVALID)
            return fail(err, as_json=args.json)
    return int(_remote(_reconcile)(args))
