"""Which roles may call which operator RPC.

The map is keyed by the full gRPC method path (``/sovereign.v1.Admin/PutPolicy``); a method needs any
one of its roles. Every method of the Admin and Audit services must be mapped (checked against the
wire contract at construction), and an unmapped method is refused: the map fails closed.

Defaults: ``sovereign-admin`` (nodes, policy, collateral), ``sovereign-key-custodian`` (keys, KEK),
``sovereign-auditor`` (audit reads), ``sovereign-operator`` (read-only views). Sites may rename the
roles and override single methods (``RoleMap.from_config``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kms.oidc.errors import AuthError, Code
from kms.oidc.tokens import Actor
from proto.sovereign.v1 import admin_pb2, audit_pb2

ADMIN_SERVICE = "sovereign.v1.Admin"
AUDIT_SERVICE = "sovereign.v1.Audit"
OPERATOR_SERVICES = (ADMIN_SERVICE, AUDIT_SERVICE)


def method_path(service: str, name: str) -> str:
    return f"/{service}/{name}"


def _service_methods() -> frozenset[str]:
    paths: set[str] = set()
    for module, name in ((admin_pb2, "Admin"), (audit_pb2, "Audit")):
        service = module.DESCRIPTOR.services_by_name[name]
        paths.update(method_path(service.full_name, m.name) for m in service.methods)
    return frozenset(paths)


OPERATOR_METHODS = _service_methods()


@dataclass(frozen=True)
class RoleNames:
    """The realm (or client) role names a site uses for the four duties."""

    admin: str = "sovereign-admin"
    key_custodian: str = "sovereign-key-custodian"
    auditor: str = "sovereign-auditor"
    operator: str = "sovereign-operator"


def default_requirements(names: RoleNames = RoleNames()) -> dict[str, frozenset[str]]:
    admin, custodian, auditor, operator = names.admin, names.key_custodian, names.auditor, names.operator
    by_name: dict[str, Iterable[str]] = {
        "ListNodes": (admin, operator),
        "GetNode": (admin, operator),
        "ApproveNode": (admin,),
        "RevokeNode": (admin,),
        "SuspendNode": (admin,),
        "CreateKey": (custodian,),
        "RotateKey": (custodian,),
        "DisableKey": (custodian,),
        "EnableKey": (custodian,),
        "DestroyKey": (custodian,),
        "ListKeys": (custodian, operator),
        "RotateKek": (custodian,),
        "GetPolicy": (admin, operator),
        "PutPolicy": (admin,),
        "ListPendingChanges": (admin, custodian, operator),
        # The two-person rule then checks the role of the held change's own method.
        "ApprovePendingChange": (admin, custodian),
        "RejectPendingChange": (admin, custodian),
        "ImportCollateral": (admin,),
        "GrantLineageException": (admin,),
        "WithdrawLineageException": (admin,),
    }
    out = {method_path(ADMIN_SERVICE, name): frozenset(roles) for name, roles in by_name.items()}
    audit_reads = ("ListEntries", "GetCheckpoint", "GetInclusionProof", "GetConsistencyProof", "Export")
    for name in (*audit_reads, "GetProvenance", "GetSigningKeys"):
        out[method_path(AUDIT_SERVICE, name)] = frozenset({auditor})
    return out


def normalize_method(name: str) -> str:
    """``/sovereign.v1.Admin/PutPolicy``, ``sovereign.v1.Admin/PutPolicy`` or ``Admin/PutPolicy`` -> full path."""
    stripped = name.strip().lstrip("/")
    if stripped.count("/") == 1 and "." not in stripped.split("/")[0]:
        stripped = "sovereign.v1." + stripped
    path = "/" + stripped
    if path not in OPERATOR_METHODS:
        raise AuthError(Code.AUTH_CONFIG_INVALID, f"role map names unknown operator method {name[:128]!r}")
    return path


class RoleMap:
    """method path -> roles (any one suffices)."""

    def __init__(self, requirements: Mapping[str, Iterable[str]]) -> None:
        table = {normalize_method(m): frozenset(r) for m, r in requirements.items()}
        missing = OPERATOR_METHODS - table.keys()
        if missing:
            raise AuthError(Code.AUTH_CONFIG_INVALID, f"role map does not cover {sorted(missing)}")
        if any(not roles or "" in roles for roles in table.values()):
            raise AuthError(
                Code.AUTH_CONFIG_INVALID, "every operator method needs at least one non-empty role"
            )
        self._table = table

    @classmethod
    def default(cls, names: RoleNames = RoleNames()) -> RoleMap:
        return cls(default_requirements(names))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RoleMap:
        """``{"roles": {"admin": "...", ...}, "methods": {"Admin/PutPolicy": ["..."], ...}}``; both optional."""
        unknown = set(config) - {"roles", "methods"}
        if unknown:
            raise AuthError(Code.AUTH_CONFIG_INVALID, f"unknown role map settings {sorted(unknown)}")
        renames = dict(config.get("roles") or {})
        allowed = {"admin", "key_custodian", "auditor", "operator"}
        if not set(renames) <= allowed or not all(isinstance(v, str) and v for v in renames.values()):
            raise AuthError(
                Code.AUTH_CONFIG_INVALID, f"role names must be non-empty strings for {sorted(allowed)}"
            )
        table = default_requirements(RoleNames(**renames))
        for method, roles in dict(config.get("methods") or {}).items():
            if isinstance(roles, str) or not all(isinstance(r, str) for r in roles):
                raise AuthError(Code.AUTH_CONFIG_INVALID, f"roles for {method!r} must be a list of strings")
            table[normalize_method(method)] = frozenset(roles)
        return cls(table)

    def required(self, method: str) -> frozenset[str]:
        roles = self._table.get(method)
        if roles is None:
            raise AuthError(Code.AUTH_METHOD_UNMAPPED, f"no roles are configured for {method[:128]!r}")
        return roles

    def authorize(self, actor: Actor, method: str) -> None:
        """Raise AUTH_ROLE_MISSING unless ``actor`` holds one of the method's roles."""
        needed = self.required(method)
        if actor.roles.isdisjoint(needed):
            raise AuthError(
                Code.AUTH_ROLE_MISSING,
                f"{actor.username!r} needs one of the roles {sorted(needed)} for {method.rsplit('/', 1)[-1]}",
            )


def authorize(actor: Actor, method: str, roles: RoleMap | None = None) -> None:
    """Refuse ``actor`` for ``method`` unless it holds a required role (default role map)."""
    (roles or RoleMap.default()).authorize(actor, method)
