"""The Admin changes as typed commands, and how each is checked and applied through ``kms.usecases.admin.Admin``.

A command is what an operator asked for, decoded from the wire (``kms.server.servicers``) and nothing
more; ``AdminActions`` is the one place that knows which ``Admin`` call makes it happen and what it
must pass before it may be held for a second operator. ``kms.usecases.pending.PendingChanges`` uses it both for
changes applied at once and for changes applied on approval (then as the proposer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from kms.domain.catalogue import KeyKind, KeyRecord
from kms.domain.registry import NodeRecord
from kms.errors import Code, KmsError
from kms.oidc.tokens import Actor
from kms.oidc.two_person import OperatorRef
from kms.usecases.admin import Admin, PolicyChange, require_text
from policies import parse_policy

Principal = Actor | OperatorRef


def principal_fields(by: Principal) -> dict[str, Any]:
    """Who acted, as the audit ledger records it (``kms.audit.draft.operator_draft``)."""
    return {"subject": by.subject, "username": by.username, "roles": sorted(by.roles)}


@dataclass(frozen=True)
class ApproveNode:
    action: ClassVar[str] = "ApproveNode"
    node_id: str
    groups: tuple[str, ...]
    comment: str = ""


@dataclass(frozen=True)
class RevokeNode:
    action: ClassVar[str] = "RevokeNode"
    node_id: str
    reason: str


@dataclass(frozen=True)
class SuspendNode:
    action: ClassVar[str] = "SuspendNode"
    node_id: str
    reason: str


@dataclass(frozen=True)
class CreateKey:
    action: ClassVar[str] = "CreateKey"
    name: str
    kind: KeyKind


@dataclass(frozen=True)
class RotateKey:
    action: ClassVar[str] = "RotateKey"
    name: str


@dataclass(frozen=True)
class DisableKey:
    action: ClassVar[str] = "DisableKey"
    name: str
    reason: str


@dataclass(frozen=True)
class EnableKey:
    action: ClassVar[str] = "EnableKey"
    name: str
    comment: str = ""


@dataclass(frozen=True)
class DestroyKey:
    action: ClassVar[str] = "DestroyKey"
    name: str
    confirm_name: str
    reason: str


@dataclass(frozen=True)
class RotateKek:
    action: ClassVar[str] = "RotateKek"
    comment: str = ""


@dataclass(frozen=True)
class PutPolicy:
    action: ClassVar[str] = "PutPolicy"
    toml: str
    expected_version: int
    dry_run: bool = False


@dataclass(frozen=True)
class GrantLineageException:
    action: ClassVar[str] = "GrantLineageException"
    key_name: str
    group: str
    reason: str


@dataclass(frozen=True)
class WithdrawLineageException:
    action: ClassVar[str] = "WithdrawLineageException"
    key_name: str
    group: str
    reason: str


@dataclass(frozen=True)
class LineageException:
    key_name: str
    group: str


@dataclass(frozen=True)
class LineageExceptionWithdrawn:
    key_name: str
    group: str


NodeCommand = ApproveNode | RevokeNode | SuspendNode
KeyCommand = CreateKey | RotateKey | DisableKey | EnableKey | DestroyKey
LineageCommand = GrantLineageException | WithdrawLineageException
AdminCommand = NodeCommand | KeyCommand | RotateKek | PutPolicy | LineageCommand
COMMANDS: tuple[type[AdminCommand], ...] = (
    ApproveNode, RevokeNode, SuspendNode, CreateKey, RotateKey, DisableKey, EnableKey, DestroyKey,
    RotateKek, PutPolicy, GrantLineageException, WithdrawLineageException,
)  # fmt: skip


@dataclass(frozen=True)
class KekRotated:
    kek_version: int
    rewrapped: int


AdminResult = (
    NodeRecord | KeyRecord | KekRotated | PolicyChange | LineageException | LineageExceptionWithdrawn
)


def audit_fields(command: AdminCommand) -> dict[str, Any]:
    """What a proposal's audit entry names besides the pending change id."""
    match command:
        case ApproveNode() | RevokeNode() | SuspendNode():
            return {"node_id": command.node_id}
        case PutPolicy():
            return {"policy_version": command.expected_version}
        case RotateKek():
            return {}
        case GrantLineageException() | WithdrawLineageException():
            return {"key_name": command.key_name, "groups": [command.group]}
        case _:
            return {"key_name": command.name}


class AdminActions:
    """``kms.usecases.pending.Actions`` over ``Admin``: check a command before it is held, apply it as someone."""

    def __init__(self, admin: Admin) -> None:
        self._admin = admin

    def check(self, command: AdminCommand) -> str:
        """Every check that can be made before a held change is applied; a summary for humans."""
        match command:
            case PutPolicy():
                parse_policy(command.toml, "PutPolicy")
                active = self._admin.get_policy()
                if active.version != command.expected_version:
                    raise KmsError(
                        f"the active policy is version {active.version}, not {command.expected_version}",
                        code=Code.POLICY_VERSION_CONFLICT,
                    )
                return f"replace policy version {active.version}"
            case DestroyKey():
                require_text(command.reason, "reason", required=True)
                if command.confirm_name != command.name:
                    raise KmsError("confirm_name must repeat the key name exactly", code=Code.REQUEST_INVALID)
                self._admin.describe_key(command.name)
                return f"destroy key {command.name}"
            case ApproveNode():
                groups = self._admin.check_approval(command.node_id, command.groups, command.comment)
                return f"approve node {command.node_id} into [{', '.join(groups)}]"
            case RevokeNode() | SuspendNode():
                return f"{command.action} {command.node_id[:128]}"
            case RotateKek():
                return f"{command.action} "
            case GrantLineageException():
                return self._admin.check_lineage_exception(command.key_name, command.group, command.reason)
            case WithdrawLineageException():
                return self._admin.check_lineage_withdrawal(command.key_name, command.group, command.reason)
            case _:
                return f"{command.action} {command.name[:128]}"

    def apply(self, command: AdminCommand, by: Principal) -> AdminResult:
        a, actor = self._admin, principal_fields(by)
        match command:
            case ApproveNode():
                return a.approve_node(command.node_id, list(command.groups), command.comment, actor=actor)
            case RevokeNode():
                return a.revoke_node(command.node_id, command.reason, actor=actor)
            case SuspendNode():
                return a.suspend_node(command.node_id, command.reason, actor=actor)
            case CreateKey():
                return a.create_key(command.name, command.kind, actor=actor)
            case RotateKey():
                return a.rotate_key(command.name, actor=actor)
            case DisableKey():
                return a.disable_key(command.name, command.reason, actor=actor)
            case EnableKey():
                return a.enable_key(command.name, command.comment, actor=actor)
            case DestroyKey():
                return a.destroy_key(command.name, command.confirm_name, command.reason, actor=actor)
            case RotateKek():
                version, report = a.rotate_kek(command.comment, actor=actor)
                return KekRotated(version, report.rewrapped)
            case GrantLineageException():
                return LineageException(
                    *a.grant_lineage_exception(command.key_name, command.group, command.reason, actor=actor)
                )
            case WithdrawLineageException():
                return LineageExceptionWithdrawn(
                    *a.withdraw_lineage_exception(
                        command.key_name, command.group, command.reason, actor=actor
                    )
                )
            case PutPolicy():
                return a.put_policy(
                    command.toml,
                    command.expected_version,
                    command.dry_run,
                    by=f"operator:{by.subject}",
                    actor=actor,
                )
