"""The data owner's own OpenBao identity: an AppRole whose policy can create data keys under the KEK
(``transit/datakey/plaintext``) and nothing else: no decrypt, no rewrap, no key management.

``sovereign dataset encrypt`` with these credentials seals a dataset under a fresh key version it made
itself, so sealing needs no decrypt by the control plane's AppRole; ``audit reconcile`` (which checks
the control plane's decrypts) then has nothing unexplained to report, and the owner's calls in
OpenBao's audit log carry the owner's role name. ``sovereign kms bootstrap`` writes the policy and the
role and issues a secret id (files ``owner-role-id``, ``owner-secret-id``)."""

from __future__ import annotations

from kms.domain.transit import KEK_NAME
from kms.openbao.vault import TRANSIT_MOUNT

OWNER_POLICY_NAME = "sovereign-data-owner"
OWNER_ROLE_NAME = "sovereign-data-owner"
OWNER_SECRET_ID_FILE = "owner-secret-id"  # noqa: S105 (a file name)
OWNER_ROLE_ID_FILE = "owner-role-id"


def owner_policy_hcl(kek: str = KEK_NAME, mount: str = TRANSIT_MOUNT) -> str:
    return f"""\
# {OWNER_POLICY_NAME}: a data owner seals its datasets under fresh data keys; it cannot decrypt any.
# Generated and written by `sovereign kms bootstrap`.
path "{mount}/datakey/plaintext/{kek}" {{
  capabilities = ["update"]
}}

# Own token upkeep (the role sets token_no_default_policy).
path "auth/token/lookup-self" {{
  capabilities = ["read"]
}}
path "auth/token/renew-self" {{
  capabilities = ["update"]
}}
"""


OWNER_POLICY_HCL = owner_policy_hcl()
