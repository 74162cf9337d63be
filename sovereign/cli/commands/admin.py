"""``sovereign admin``: the arguments; the implementation is ``sovereign.cli.admin``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sovereign.cli._common import existing_file, non_negative_int, positive_int
from sovereign.cli._lazy import runs

if TYPE_CHECKING:
    from sovereign.client import AdminClient

# the lower-case values of sovereign.client.records' enums (importing that package loads gRPC);
# tests/unit/test_cli_lazy_imports.py checks they match
NODE_STATES = ("attested", "pending_approval", "rejected", "revoked", "suspended")
KINDS = ("dataset", "model")
KEY_STATES = ("destroyed", "disabled", "enabled")
CHANGE_STATES = ("applied", "expired", "pending", "rejected")


def _member(enum: str, value: str | None) -> Any:
    """The member of ``sovereign.client.records.<enum>`` with this lower-case value; None for none.
    Called when the command runs, so the client package loads only then."""
    if not value:
        return None
    from sovereign.client import records

    return {m.value.lower(): m for m in getattr(records, enum)}[value]


# how an action calls the Admin client; sovereign.cli.admin._run connects, calls and prints
Call = Callable[["AdminClient", argparse.Namespace], Any]


def _add(
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    call: Call | str,
    args: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (),
    *,
    aliases: tuple[str, ...] = (),
) -> None:
    parser = group.add_parser(name, help=help_text, description=help_text, aliases=list(aliases))
    for flags, options in args:
        parser.add_argument(*flags, **options)
    _common(parser)
    # a name: a runner of its own in sovereign.cli.admin (it needs more than the client call)
    runner = (
        runs(f"sovereign.cli.admin:{call}")
        if isinstance(call, str)
        else runs("sovereign.cli.admin:_run", call)
    )
    parser.set_defaults(func=runner)


def _a(*flags: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, options


REASON = _a("--reason", required=True, help="why (recorded in the audit ledger)")


COMMENT = _a("--comment", default="", help="why (recorded in the audit ledger)")


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
        [_member("NodeState", x) for x in a.state], page_size=a.limit),
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
        _member("KeyKind", a.kind), _member("KeyState", a.state)),
        (_a("--kind", choices=sorted(KINDS)), _a("--state", choices=sorted(KEY_STATES))))  # fmt: skip
    _add(keys, "create", "create a key",
         lambda c, a: c.create_key(a.name, _member("KeyKind", a.kind)),
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
         "run_policy_put",
         (_a("file", type=existing_file, help="policy TOML"),
          _a("--expected-version", type=positive_int, required=True),
          _a("--dry-run", action="store_true")))  # fmt: skip

    pending = groups.add_parser("pending", help="changes waiting for a second operator").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(pending, "list", "list pending changes", lambda c, a: c.list_pending(
        _member("ChangeState", a.state)),
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
    _add(lineage, "withdraw", "refuse a group a model key again: withdraw its lineage exception "
         "(one operator suffices: it only tightens)",
         lambda c, a: c.withdraw_lineage_exception(a.key_name, a.group, a.reason),
         (_a("key_name", help="the model key"),
          _a("--group", required=True, help="the group the exception lets read it"), REASON))  # fmt: skip

    collateral = groups.add_parser("collateral", help="attestation collateral").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(collateral, "import", "import collateral into the server's store: a signed bundle when the server "
         "has collateral_signers, else loose AMD/Intel items",
         lambda c, a: c.import_collateral(a.file.read_bytes()),
         (_a("file", type=existing_file),))  # fmt: skip
