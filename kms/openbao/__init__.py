"""The OpenBao adapter: transit over hvac (kms.openbao.vault) and the bootstrap of keys, policy and AppRole."""
