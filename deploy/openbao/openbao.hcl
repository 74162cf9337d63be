# OpenBao server configuration for the sovereign control plane (production shape).
# The installer renders it to /etc/openbao/openbao.hcl (--openbao-config-dir); replace every
# <PLACEHOLDER> there. See README.md in this folder.

ui = false

# Memory: OpenBao does not mlock (it dropped support; `disable_mlock` is not a field, and
# `disable_mlock = false` stops the server), so unseal and transit keys can reach swap. Run it on hosts
# with swap disabled or encrypted: `swapon --show` must print nothing (or only encrypted devices).

# Integrated storage: one node here; add retry_join blocks for a 3- or 5-node cluster.
storage "raft" {
  path    = "/var/lib/openbao/raft"
  node_id = "<NODE_ID>"

  # retry_join {
  #   leader_api_addr     = "https://<OTHER_NODE>:8200"
  #   leader_ca_cert_file = "/etc/openbao/tls/ca.pem"
  # }
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"

  tls_cert_file      = "/etc/openbao/tls/openbao.pem"
  tls_key_file       = "/etc/openbao/tls/openbao-key.pem"
  tls_min_version    = "tls13"
  # Only the control-plane hosts and operators should reach this port (firewall it).
}

api_addr     = "https://<THIS_HOST>:8200"
cluster_addr = "https://<THIS_HOST>:8201"

# Every request (each transit decrypt included) is logged; the control plane's audit ledger is
# reconciled against it. OpenBao refuses enabling audit devices over the API: declare them here.
# Secret values are HMAC'd in the log, never written in clear.
audit "file" "file" {
  description = "sovereign: every OpenBao request, for reconciliation with the ledger"
  options {
    file_path = "/var/log/openbao/audit.log"
    mode      = "0600"
  }
}
