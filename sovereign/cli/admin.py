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

import grpc
from google.protobuf.json_format import MessageToDict

from kms.auth.cache import load_cached_token
from kms.auth.errors import AuthError
from kms.errors import Code, KmsError
from kms.server.errors import parse_trailer
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from sovereign.cli._output import fail, print_json, print_table

DEFAULT_SERVER = "127.0.0.1:8445"
NODE_STATES: dict[str, Any] = {
    s.removeprefix("NODE_STATE_").lower(): v for s, v in common_pb2.NodeState.items() if v
}
KINDS: dict[str, Any] = {"dataset": common_pb2.KEY_KIND_DATASET, "model": common_pb2.KEY_KIND_MODEL}
KEY_STATES: dict[str, Any] = {
    s.removeprefix("KEY_STATE_").lower(): v for s, v in admin_pb2.KeyState.items() if v
}
CHANGE_STATES: dict[str, Any] = {
    s.removeprefix("PENDING_CHANGE_STATE_").lower(): v for s, v in admin_pb2.PendingChangeState.items() if v
}


class RemoteError(KmsError):
    """A refused call, with the server's code (ErrorDetail) and hint."""

    def __init__(self, err: grpc.RpcError) -> None:
        call: Any = err
        detail = parse_trailer(call.trailing_metadata())
        super().__init__(str(call.details() or ""), hint=detail.hint if detail else "")
        self.code = detail.reason if detail else call.code().name  # type: ignore[assignment]  # a server code


def operator_stub(server: str, ca: Path, token_cache: Path | None) -> tuple[admin_pb2_grpc.AdminStub, Any]:
    """(Admin stub over TLS pinned to ``ca``, call metadata with the cached bearer token)."""
    token = load_cached_token(token_cache, now=datetime.now(UTC))
    channel = grpc.secure_channel(server, grpc.ssl_channel_credentials(root_certificates=ca.read_bytes()))
    return admin_pb2_grpc.AdminStub(channel), token.metadata()


Call = Callable[[admin_pb2_grpc.AdminStub, argparse.Namespace], Any]


def _run(call: Call, rows: str = "", columns: tuple[str, ...] = ()) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if args.ca is None:
            return fail(
                KmsError("no CA to pin: give --ca or set SOVEREIGN_CA", code=Code.REQUEST_INVALID),
                as_json=args.json,
            )
        try:
            stub, metadata = operator_stub(args.server, Path(args.ca), args.token_cache)
            bound = _Bound(stub, metadata)
            reply = MessageToDict(call(bound, args), preserving_proto_field_name=True)  # type: ignore[arg-type]
        except AuthError as err:
            return fail(err, as_json=args.json)
        except grpc.RpcError as err:
            return fail(RemoteError(err), as_json=args.json)
        except OSError as err:
            return fail(KmsError(f"cannot read a file: {err}", code=Code.REQUEST_INVALID), as_json=args.json)
        if rows and not args.json:
            print_table(reply.get(rows, []), columns)
        else:
            print_json(reply)
        return 0

    return run


class _Bound:
    """The stub with the bearer token on every call."""

    def __init__(self, stub: admin_pb2_grpc.AdminStub, metadata: Any) -> None:
        self._stub, self._metadata = stub, metadata

    def __getattr__(self, method: str) -> Callable[[Any], Any]:
        fn = getattr(self._stub, method)
        return lambda request: fn(request, metadata=self._metadata, timeout=60)


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
) -> None:
    parser = group.add_parser(name, help=help_text, description=help_text)
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
    _add(nodes, "list", "list nodes", lambda s, a: s.ListNodes(admin_pb2.ListNodesRequest(
        states=[NODE_STATES[x] for x in a.state], page_size=a.limit)),
        (_a("--state", action="append", default=[], choices=sorted(NODE_STATES)),
         _a("--limit", type=int, default=0)),
        rows="nodes", columns=("node_id", "node_name", "state", "groups"))  # fmt: skip
    _add(nodes, "get", "show one node", lambda s, a: s.GetNode(admin_pb2.GetNodeRequest(node_id=a.node_id)),
         (_a("node_id"),))  # fmt: skip
    _add(nodes, "approve", "attest a pending or suspended node into groups",
         lambda s, a: s.ApproveNode(admin_pb2.ApproveNodeRequest(node_id=a.node_id, groups=a.group,
                                                                 comment=a.comment)),
         (_a("node_id"), _a("--group", action="append", required=True), COMMENT))  # fmt: skip
    _add(nodes, "revoke", "revoke a node for good",
         lambda s, a: s.RevokeNode(admin_pb2.RevokeNodeRequest(node_id=a.node_id, reason=a.reason)),
         (_a("node_id"), REASON))  # fmt: skip
    _add(nodes, "suspend", "suspend a node (ends its lease)",
         lambda s, a: s.SuspendNode(admin_pb2.SuspendNodeRequest(node_id=a.node_id, reason=a.reason)),
         (_a("node_id"), REASON))  # fmt: skip

    keys = groups.add_parser("keys", help="managed data keys").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(keys, "list", "list keys", lambda s, a: s.ListKeys(admin_pb2.ListKeysRequest(
        kind=KINDS.get(a.kind or "", 0), state=KEY_STATES.get(a.state or "", 0))),
        (_a("--kind", choices=sorted(KINDS)), _a("--state", choices=sorted(KEY_STATES))),
        rows="keys", columns=("name", "kind", "state", "latest_version"))  # fmt: skip
    _add(keys, "create", "create a key",
         lambda s, a: s.CreateKey(admin_pb2.CreateKeyRequest(name=a.name, kind=KINDS[a.kind])),
         (_a("name"), _a("--kind", required=True, choices=sorted(KINDS))))  # fmt: skip
    _add(keys, "rotate", "add a key version",
         lambda s, a: s.RotateKey(admin_pb2.RotateKeyRequest(name=a.name)), (_a("name"),))  # fmt: skip
    _add(keys, "disable", "stop releases of a key",
         lambda s, a: s.DisableKey(admin_pb2.DisableKeyRequest(name=a.name, reason=a.reason)),
         (_a("name"), REASON))  # fmt: skip
    _add(keys, "enable", "allow releases again",
         lambda s, a: s.EnableKey(admin_pb2.EnableKeyRequest(name=a.name, comment=a.comment)),
         (_a("name"), COMMENT))  # fmt: skip
    _add(keys, "destroy", "destroy a key (held for a second operator by default)",
         lambda s, a: s.DestroyKey(admin_pb2.DestroyKeyRequest(name=a.name, confirm_name=a.confirm,
                                                               reason=a.reason)),
         (_a("name"), _a("--confirm", required=True, help="the key name again"), REASON))  # fmt: skip

    policy = groups.add_parser("policy", help="the release policy").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(policy, "get", "show the active policy", lambda s, a: s.GetPolicy(admin_pb2.GetPolicyRequest()))
    _add(policy, "put", "replace the policy (held for a second operator by default)",
         lambda s, a: s.PutPolicy(admin_pb2.PutPolicyRequest(
             toml=Path(a.file).read_text(), expected_version=a.expected_version, dry_run=a.dry_run)),
         (_a("file", help="policy TOML"), _a("--expected-version", type=int, required=True),
          _a("--dry-run", action="store_true")))  # fmt: skip

    pending = groups.add_parser("pending", help="changes waiting for a second operator").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(pending, "list", "list pending changes", lambda s, a: s.ListPendingChanges(
        admin_pb2.ListPendingChangesRequest(state=CHANGE_STATES.get(a.state or "", 0))),
        (_a("--state", choices=sorted(CHANGE_STATES)),),
        rows="changes", columns=("change_id", "method", "summary", "proposed_by", "state"))  # fmt: skip
    _add(pending, "approve", "apply a change proposed by someone else",
         lambda s, a: s.ApprovePendingChange(admin_pb2.ApprovePendingChangeRequest(
             change_id=a.change_id, comment=a.comment)), (_a("change_id"), COMMENT))  # fmt: skip
    _add(pending, "reject", "drop a pending change",
         lambda s, a: s.RejectPendingChange(admin_pb2.RejectPendingChangeRequest(
             change_id=a.change_id, comment=a.comment)),
         (_a("change_id"), _a("--comment", required=True)))  # fmt: skip

    collateral = groups.add_parser("collateral", help="attestation collateral").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add(collateral, "import", "import collateral into the server's store: a signed bundle when the server "
         "has collateral_signers, else loose AMD/Intel items",
         lambda s, a: s.ImportCollateral(admin_pb2.ImportCollateralRequest(bundle=Path(a.file).read_bytes())),
         (_a("file"),))  # fmt: skip
