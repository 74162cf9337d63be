"""The audit ledger's pure core: entries, Merkle tree (RFC 9162), signed checkpoints, exports, verification.

No I/O and no clock reads here: the storage-backed appender and the RPCs build on these.
"""
