# OpenBao raft member 3 of 3 (bao-1, bao-2, bao-3) for the sovereign control plane.
# Install as /etc/openbao/openbao.hcl on bao-3.sovereign.internal. The three files differ only in
# node_id, the addresses of this host and the retry_join list. Initialise ONE member
# (bao operator init on bao-1), then unseal every member; the others join through retry_join.
# See ../README.md (TLS, unseal, AppRole) and docs/scale-out.md (quorum, failover).

ui = false

# OpenBao does not mlock (no disable_mlock field): run on hosts without swap (or with encrypted swap).

storage "raft" {
  path    = "/var/lib/openbao/raft"
  node_id = "bao-3"

  retry_join {
    leader_api_addr         = "https://bao-1.sovereign.internal:8200"
    leader_ca_cert_file     = "/etc/openbao/tls/ca.pem"
    leader_client_cert_file = "/etc/openbao/tls/openbao.pem"
    leader_client_key_file  = "/etc/openbao/tls/openbao-key.pem"
  }
  retry_join {
    leader_api_addr         = "https://bao-2.sovereign.internal:8200"
    leader_ca_cert_file     = "/etc/openbao/tls/ca.pem"
    leader_client_cert_file = "/etc/openbao/tls/openbao.pem"
    leader_client_key_file  = "/etc/openbao/tls/openbao-key.pem"
  }
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_cert_file   = "/etc/openbao/tls/openbao.pem"
  tls_key_file    = "/etc/openbao/tls/openbao-key.pem"
  tls_min_version = "tls13"
}

api_addr     = "https://bao-3.sovereign.internal:8200"
cluster_addr = "https://bao-3.sovereign.internal:8201"

# Identical on every member: the audit table lives in raft, and a member whose audit HCL differs
# (another path, other options) refuses to become active. Reconcile each member's file with the ledger.
audit "file" "file" {
  description = "sovereign: every OpenBao request, for reconciliation with the ledger"
  options {
    file_path = "/var/log/openbao/audit.log"
    mode      = "0600"
  }
}
