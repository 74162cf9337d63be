"""``sovereign admin``: operator commands over the control plane's operator endpoint.

Every call goes over TLS pinned to ``--ca`` (the control plane's CA) and carries the token cached by
``sovereign login`` (refused locally, with the login command, once it has expired). Changes held by
the two-person rule print the pending change; a second operator applies it with ``pending approve``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kms.errors import Code, KmsError
from kms.oidc.cache import load_cached_token
from kms.oidc.errors import AuthError
from sovereign.cli._output import fail, print_json, print_table
from sovereign.client import AdminClient, OperatorError, operator_channel, to_json
from sovereign.client.records import ChangeState, KeyKind, KeyState, NodeState

DEFAULT_SERVER = "127.0.0.1:8445"
NODE_STATES = {s.value.lower(): s for s in NodeState}
KINDS = {k.value.lower(): k for k in KeyKind}
KEY_STATES = {s.value.lower(): s for s in KeyState}
CHANGE_STATES = {s.value.lower(): s for s in ChangeState}


def admin_client(server: str, ca: Path, token_cache: Path | None) -> AdminClient:
    """The Admin client over TLS pinned to ``ca``, with the cached bearer token on every call."""
    token = load_cached_token(token_cache, now=datetime.now(UTC))
    channel = operator_channel(server, ca=ca.read_bytes())
    return AdminClient(channel, metadata=token.metadata())


Call = Callable[[AdminClient, argparse.Namespace], Any]


def _run(call: Call, rows: str = "", columns: tuple[str, ...] = ()) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if args.ca is None:
            return fail(
                KmsError("no CA to pin: give --ca or set SOVEREIGN_CA", code=Code.REQUEST_INVALID),
                as_json=args.json,
            )
        try:
            reply = to_json(call(admin_client(args.server, Path(args.ca), args.token_cache), args))
        except (AuthError, OperatorError) as err:
            return fail(err, as_json=args.json)
        except OSError as err:
            return fail(KmsError(f"cannot read a file: {err}", code=Code.REQUEST_INVALID), as_json=args.json)
        if rows and not args.json:
            print_table(reply.get(rows, []), columns)
        else:
            print_json(reply)
        return 0

    return run


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("SOVEREIGN_ADMIN_ADDR", DEFAULT_SERVER),
        help="operator endpoint HOST:PORT ($SOVEREIGN_ADMIN_ADDR)",
    )
    parser.add_argument(
        "--ca", default=os.environ.get("SOVEREIGN_CA"), help="the control plane's CA to pin ($SOVEREIGN_CA)"
    )
    parser.add_argument("--token-cache", type=Path, help="token cache of 'sovereign login'")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _add(  # noqa: PLR0917 (a table of commands reads best positionally)
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    call: Call,
    args: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (),
    rows: str = "",
    columns: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
) -> None:
    parser = group.add_parser(name, help=help_text, description=help_text, aliases=list(aliases))
    for flags, options in args:
        parser.add_argument(*flags, **options)
    _common(parser)
    parser.set_defaults(func=_run(call, rows, columns))


def _a(*flags: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, options


REASON = _a("--reason", required=True, help="why (recorded in the audit ledger)")
COMMENT = _a("--comment", default="", help="why (recorded in the audit ledger)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = sub.add_parser(
        "admin",
        help="operator commands (nodes, keys, policy, pending changes, collateral)",
        description="Talk to the control plane's operator endpoint with the token of 'sovereign login'. "
        "Roles decide what each user may do; policy changes and key destruction wait for a second "
        "operator (sovereign admin pending approve).",
    )
    groups = admin.add_subparsers(dest="admin_group", metavar="GROUP", required=True)

    nodes = groups.add_parser("nodes", help="registered nodes").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(nodes, "list", "list nodes", lambda c, a: c.list_nodes(
        [NODE_STATES[x] for x in a.state], page_size=a.limit),
        (_a("--state", action="append", default=[], choices=sorted(NODE_STATES)),
         _a("--limit", type=int, default=0)),
        rows="nodes", columns=("node_id", "node_name", "state", "groups"))  # fmt: skip
    _add(nodes, "get", "show one node (its claims, GPUs included)", lambda c, a: c.get_node(a.node_id),
         (_a("node_id"),), aliases=("show",))  # fmt: skip
    _add(nodes, "approve", "attest a pending or suspended node into groups",
         lambda c, a: c.approve_node(a.node_id, a.group, a.comment),
         (_a("node_id"), _a("--group", action="append", required=True), COMMENT))  # fmt: skip
    _add(nodes, "revoke", "revoke a node for good",
         lambda c, a: c.revoke_node(a.node_id, a.reason),
         (_a("node_id"), REASON))  # fmt: skip
    _add(nodes, "suspend", "suspend a node (ends its lease)",
         lambda c, a: c.suspend_node(a.node_id, a.reason),
         (_a("node_id"), REASON))  # fmt: skip

    keys = groups.add_parser("keys", help="managed data keys").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(keys, "list", "list keys", lambda c, a: c.list_keys(
        KINDS.get(a.kind or ""), KEY_STATES.get(a.state or "")),
        (_a("--kind", choices=sorted(KINDS)), _a("--state", choices=sorted(KEY_STATES))),
        rows="keys", columns=("name", "kind", "state", "latest_version"))  # fmt: skip
    _add(keys, "create", "create a key",
         lambda c, a: c.create_key(a.name, KINDS[a.kind]),
         (_a("name"), _a("--kind", required=True, choices=sorted(KINDS))))  # fmt: skip
    _add(keys, "rotate", "add a key version",
         lambda c, a: c.rotate_key(a.name), (_a("name"),))  # fmt: skip
    _add(keys, "disable", "stop releases of a key",
         lambda c, a: c.disable_key(a.name, a.reason),
         (_a("name"), REASON))  # fmt: skip
    _add(keys, "enable", "allow releases again",
         lambda c, a: c.enable_key(a.name, a.comment),
         (_a("name"), COMMENT))  # fmt: skip
    _add(keys, "destroy", "destroy a key (held for a second operator by default)",
         lambda c, a: c.destroy_key(a.name, a.confirm, a.reason),
         (_a("name"), _a("--confirm", required=True, help="the key name again"), REASON))  # fmt: skip

    policy = groups.add_parser("policy", help="the release policy").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(policy, "get", "show the active policy", lambda c, a: c.get_policy())
    _add(policy, "put", "replace the policy (held for a second operator by default)",
         lambda c, a: c.put_policy(
             Path(a.file).read_text(), a.expected_version, dry_run=a.dry_run),
         (_a("file", help="policy TOML"), _a("--expected-version", type=int, required=True),
          _a("--dry-run", action="store_true")))  # fmt: skip

    pending = groups.add_parser("pending", help="changes waiting for a second operator").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(pending, "list", "list pending changes", lambda c, a: c.list_pending(
        CHANGE_STATES.get(a.state or "")),
        (_a("--state", choices=sorted(CHANGE_STATES)),),
        rows="changes", columns=("change_id", "method", "summary", "proposed_by", "state"))  # fmt: skip
    _add(pending, "approve", "apply a change proposed by someone else",
         lambda c, a: c.approve(a.change_id, a.comment), (_a("change_id"), COMMENT))  # fmt: skip
    _add(pending, "reject", "drop a pending change",
         lambda c, a: c.reject(a.change_id, a.comment),
         (_a("change_id"), _a("--comment", required=True)))  # fmt: skip

    collateral = groups.add_parser("collateral", help="attestation collateral").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(collateral, "import", "import collateral into the server's store: a signed bundle when the server "
         "has collateral_signers, else loose AMD/Intel items",
         lambda c, a: c.import_collateral(Path(a.file).read_bytes()),
         (_a("file"),))  # fmt: skip
