"""``sovereign admin``: operator commands over the control plane's operator endpoint.

Every call goes over TLS pinned to ``--ca`` (the control plane's CA) and carries the token cached by
``sovereign login`` (refused locally, with the login command, once it has expired). Changes held by
the two-person rule print the pending change; a second operator applies it with ``pending approve``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kms.errors import Code, KmsError
from kms.oidc.errors import AuthError
from policies import PolicyError, load_policy
from sovereign.cli import _admin_views as views
from sovereign.cli._common import existing_file, non_negative_int, positive_int
from sovereign.cli._installed import operator_address, operator_ca
from sovereign.cli._output import fail, print_ok
from sovereign.cli._session import operator_token
from sovereign.client import AdminClient, OperatorError, operator_channel, to_json
from sovereign.client.errors import read_ca
from sovereign.client.records import ChangeState, KeyKind, KeyState, NodeState, PolicyPut

NODE_STATES = {s.value.lower(): s for s in NodeState}
KINDS = {k.value.lower(): k for k in KeyKind}
KEY_STATES = {s.value.lower(): s for s in KeyState}
CHANGE_STATES = {s.value.lower(): s for s in ChangeState}


def admin_client(server: str, ca: Path, token_cache: Path | None) -> AdminClient:
    """The Admin client over TLS pinned to ``ca``, with the operator's bearer token on every call
    (refreshed first when it is about to expire)."""
    token = operator_token(token_cache)
    channel = operator_channel(server, ca=read_ca(ca))
    return AdminClient(channel, metadata=token.metadata(), target=server)


Call = Callable[[AdminClient, argparse.Namespace], Any]


def _run(call: Call) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        server = args.server or operator_address()
        ca = Path(args.ca) if args.ca else operator_ca()
        try:
            if ca is None:
                raise KmsError(
                    "no CA to pin for the operator port",
                    code=Code.REQUEST_INVALID,
                    hint="give --ca or set SOVEREIGN_CA (serve's --tls-ca, or ca.pem in its --dev-tls folder)",
                )
            client = admin_client(server, ca, args.token_cache)
            reply = call(client, args)
            if args.json:
                print_ok(to_json(reply))
            elif isinstance(reply, PolicyPut) and reply.applied is not None:
                before = client.get_policy() if reply.applied.dry_run else None
                views.show_applied(reply.applied, before, args.policy_text)
            else:
                views.show(reply, datetime.now(UTC))
        except (AuthError, OperatorError, KmsError, PolicyError) as err:
            return fail(err, as_json=args.json)
        except OSError as err:
            return fail(KmsError(f"cannot read a file: {err}", code=Code.REQUEST_INVALID), as_json=args.json)
        return 0

    return run


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        help="operator endpoint HOST:PORT (default $SOVEREIGN_ADMIN_ADDR, the installed config's "
        "admin_listen, or 127.0.0.1:8445)",
    )
    parser.add_argument(
        "--ca",
        help="the control plane's CA to pin (default $SOVEREIGN_CA, or the installed config's tls_ca)",
    )
    parser.add_argument("--token-cache", type=Path, help="token cache of 'sovereign login'")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _policy_put(client: AdminClient, args: argparse.Namespace) -> PolicyPut:
    # Checked here first, so a mistake names the file and line (the server sees only the text).
    args.policy_text = args.file.read_text()
    load_policy(args.file)
    try:
        return client.put_policy(args.policy_text, args.expected_version, dry_run=args.dry_run)
    except OperatorError as err:
        # the server names the text it was sent after the RPC; the operator knows it as the file
        if err.code.startswith("POLICY_") and err.message.startswith("PutPolicy"):
            err.message = f"{args.file}{err.message.removeprefix('PutPolicy')}"
        raise


def _add(
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    call: Call,
    args: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (),
    *,
    aliases: tuple[str, ...] = (),
) -> None:
    parser = group.add_parser(name, help=help_text, description=help_text, aliases=list(aliases))
    for flags, options in args:
        parser.add_argument(*flags, **options)
    _common(parser)
    parser.set_defaults(func=_run(call))


def _a(*flags: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, options


REASON = _a("--reason", required=True, help="why (recorded in the audit ledger)")
COMMENT = _a("--comment", default="", help="why (recorded in the audit ledger)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = sub.add_parser(
        "admin",
        help="operator commands (nodes, keys, policy, pending changes, lineage exceptions, collateral)",
        description="Talk to the control plane's operator endpoint with the token of 'sovereign login'. "
        "Roles decide what each user may do; policy changes, key destruction and lineage "
        "exceptions wait for a second operator (sovereign admin pending approve).",
    )
    groups = admin.add_subparsers(dest="admin_group", metavar="GROUP", required=True)

    nodes = groups.add_parser("nodes", help="registered nodes").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(nodes, "list", "list nodes", lambda c, a: c.list_nodes(
        [NODE_STATES[x] for x in a.state], page_size=a.limit),
        (_a("--state", action="append", default=[], choices=sorted(NODE_STATES)),
         _a("--limit", type=non_negative_int, default=0, help="at most this many (0: the server's page)")))  # fmt: skip
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
        (_a("--kind", choices=sorted(KINDS)), _a("--state", choices=sorted(KEY_STATES))))  # fmt: skip
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
         _policy_put,
         (_a("file", type=existing_file, help="policy TOML"),
          _a("--expected-version", type=positive_int, required=True),
          _a("--dry-run", action="store_true")))  # fmt: skip

    pending = groups.add_parser("pending", help="changes waiting for a second operator").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(pending, "list", "list pending changes", lambda c, a: c.list_pending(
        CHANGE_STATES.get(a.state or "")),
        (_a("--state", choices=sorted(CHANGE_STATES)),))  # fmt: skip
    _add(pending, "approve", "apply a change proposed by someone else",
         lambda c, a: c.approve(a.change_id, a.comment), (_a("change_id"), COMMENT))  # fmt: skip
    _add(pending, "reject", "drop a pending change",
         lambda c, a: c.reject(a.change_id, a.comment),
         (_a("change_id"), _a("--comment", required=True)))  # fmt: skip

    lineage = groups.add_parser(
        "lineage-exception", help="exceptions to lineage-restricted release rules"
    ).add_subparsers(dest="action", metavar="ACTION", required=True)
    _add(lineage, "grant", "let a group read a model key trained on datasets it may not read "
         "(always held for a second operator)",
         lambda c, a: c.grant_lineage_exception(a.key_name, a.group, a.reason),
         (_a("key_name", help="the model key"),
          _a("--group", required=True, help="a group of the active policy"), REASON))  # fmt: skip

    collateral = groups.add_parser("collateral", help="attestation collateral").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(collateral, "import", "import collateral into the server's store: a signed bundle when the server "
         "has collateral_signers, else loose AMD/Intel items",
         lambda c, a: c.import_collateral(a.file.read_bytes()),
         (_a("file", type=existing_file),))  # fmt: skip
