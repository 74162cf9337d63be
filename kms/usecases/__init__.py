"""The control plane's use cases: attestation, key release, admin, the two-person workflow, nonces, the policy
source, the audit service. They orchestrate the domain and the adapters (kms.openbao, kms.sql, kms.oidc); the
servers (kms.server) decode, call and encode."""
