"""The OpenBao adapter: settings, failures, the client session, transit (the ``Transit`` port), the
bootstrap of keys, policy and AppRole. ``kms.openbao.vault`` keeps the old import path."""
