"""The audit ledger. Pure core (no I/O, no clock): entries, Merkle tree (RFC 9162), signed checkpoints,
exports, offline verification, reconciliation. Server side, over ``kms.sql``: ``ledger`` (appends in
the caller's transaction), ``reader`` (queries, proofs, export, recovery), ``checkpointer`` (background
OpenBao transit signer) and ``service`` (start/stop in a server process).
"""
