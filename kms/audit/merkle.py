"""Merkle tree of RFC 9162 section 2.1: hashes, incremental tree, inclusion and consistency proofs.

Leaf hash = SHA-256(0x00 || entry), node hash = SHA-256(0x01 || left || right), the root of n leaves splits
at the largest power of two smaller than n. ``CompactRange`` keeps only the O(log n) roots of the perfect
subtrees covering the leaves appended so far. Proofs are built from a ``HashStore`` of perfect-subtree
hashes (``node(level, index)`` covers leaves ``[index * 2**level, (index + 1) * 2**level)``), which an
appender fills from what ``CompactRange.append`` reports, so a proof never needs all the leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

from kms.audit.errors import ProofInvalid

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves, straight from the definition (reference and small trees)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = split_point(n)
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


class CompactRange:
    """The right edge of a tree: roots of its perfect subtrees, largest (leftmost) first."""

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count() or any(len(h) != HASH_SIZE for h in hashes):
            raise ProofInvalid(f"a compact range of size {size} needs {size.bit_count()} 32-byte hashes")
        self._size = size
        self._hashes = list(hashes)

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return every perfect subtree it completes as (level, index, hash)."""
        index = self._size
        done = [(0, index, leaf)]
        level, h, stack = 0, leaf, self._hashes
        while index & 1:
            h = node_hash(stack.pop(), h)
            index >>= 1
            level += 1
            done.append((level, index, h))
        stack.append(h)
        self._size += 1
        return done

    def root(self) -> bytes:
        return fold_root(self._hashes)

    def copy(self) -> CompactRange:
        return CompactRange(self._size, self._hashes)


def fold_root(frontier: Sequence[bytes]) -> bytes:
    """The root of a tree from its compact range (perfect-subtree roots, largest first)."""
    if not frontier:
        return EMPTY_ROOT
    h = frontier[-1]
    for left in reversed(frontier[:-1]):
        h = node_hash(left, h)
    return h


class HashStore(Protocol):
    """Perfect-subtree hashes of a ledger; level 0 is the leaf hashes."""

    def node(self, level: int, index: int) -> bytes: ...


class MemoryHashStore:
    """Every perfect-subtree hash in memory (tests, small ledgers)."""

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = []
        self.tree = CompactRange()

    def append(self, leaf: bytes) -> None:
        for level, index, h in self.tree.append(leaf):
            if level == len(self._levels):
                self._levels.append([])
            row = self._levels[level]
            if index != len(row):  # pragma: no cover - CompactRange completes nodes in order
                raise ProofInvalid(f"node ({level}, {index}) completed out of order")
            row.append(h)

    def node(self, level: int, index: int) -> bytes:
        try:
            return self._levels[level][index]
        except IndexError:
            raise ProofInvalid(f"no subtree hash at level {level} index {index}") from None


class MapHashStore:
    """Subtree hashes fetched ahead (``(level, index) -> hash``), e.g. the nodes ``inclusion_nodes`` or
    ``consistency_nodes`` name."""

    def __init__(self, hashes: dict[tuple[int, int], bytes]) -> None:
        self._hashes = hashes

    def node(self, level: int, index: int) -> bytes:
        value = self._hashes.get((level, index))
        if value is None:
            raise ProofInvalid(f"no subtree hash at level {level} index {index}")
        return value


class _Recorder:
    """A ``HashStore`` that notes which subtree hashes are read and answers a placeholder: which nodes a
    proof reads depends only on the sizes and indices, never on the hash values."""

    def __init__(self) -> None:
        self.read: dict[tuple[int, int], None] = {}  # insertion-ordered set

    def node(self, level: int, index: int) -> bytes:
        self.read[(level, index)] = None
        return EMPTY_ROOT


def inclusion_nodes(index: int, size: int) -> list[tuple[int, int]]:
    """The (level, index) of every stored subtree hash ``inclusion_proof(store, index, size)`` reads, so
    a store can fetch them all at once. Raises ``ProofInvalid`` as ``inclusion_proof`` does."""
    recorder = _Recorder()
    inclusion_proof(recorder, index, size)
    return list(recorder.read)


def consistency_nodes(first: int, second: int) -> list[tuple[int, int]]:
    """As ``inclusion_nodes``, for ``consistency_proof(store, first, second)``."""
    recorder = _Recorder()
    consistency_proof(recorder, first, second)
    return list(recorder.read)


def range_hash(store: HashStore, start: int, end: int) -> bytes:
    """MTH of leaves [start, end) where the range is a subtree of some Merkle tree (as in proofs)."""
    n = end - start
    if n <= 0:
        raise ProofInvalid(f"empty leaf range [{start}, {end})")
    if n & (n - 1) == 0 and start % n == 0:
        return store.node(n.bit_length() - 1, start // n)
    k = split_point(n)
    return node_hash(range_hash(store, start, start + k), range_hash(store, start + k, end))


def inclusion_proof(store: HashStore, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 2.1.3.1."""
    if not 0 <= index < size:
        raise ProofInvalid(f"leaf {index} is not in a tree of size {size}")
    return _path(store, index, 0, size)


def _path(store: HashStore, m: int, start: int, end: int) -> list[bytes]:
    n = end - start
    if n == 1:
        return []
    k = split_point(n)
    if m < k:
        return [*_path(store, m, start, start + k), range_hash(store, start + k, end)]
    return [*_path(store, m - k, start + k, end), range_hash(store, start, start + k)]


def consistency_proof(store: HashStore, first: int, second: int) -> list[bytes]:
    """PROOF(first, D[0:second]) of RFC 9162 2.1.4.1; empty when first == second or first == 0."""
    if not 0 <= first <= second:
        raise ProofInvalid(f"no consistency proof from size {first} to size {second}")
    if first in (0, second):
        return []
    return _subproof(store, first, 0, second, complete=True)


def _subproof(store: HashStore, m: int, start: int, end: int, *, complete: bool) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if complete else [range_hash(store, start, end)]
    k = split_point(n)
    if m <= k:
        return [*_subproof(store, m, start, start + k, complete=complete), range_hash(store, start + k, end)]
    return [*_subproof(store, m - k, start + k, end, complete=False), range_hash(store, start, start + k)]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 2.1.3.2. Raises ``ProofInvalid`` unless ``leaf`` is at ``index`` in the tree ``root``."""
    if not 0 <= index < size:
        raise ProofInvalid(f"leaf {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofInvalid(f"inclusion proof for leaf {index} of {size} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofInvalid(f"inclusion proof for leaf {index} of {size} is too short")
    if r != root:
        raise ProofInvalid(f"inclusion proof for leaf {index} of {size} does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2. Raises ``ProofInvalid`` unless tree ``second_root`` extends ``first_root``.

    The RFC's algorithm covers 0 < first < second; first == second needs an empty proof and equal roots,
    and every tree is consistent with the empty tree (first == 0, empty proof).
    """
    if not 0 <= first <= second:
        raise ProofInvalid(f"size {first} cannot be a prefix of size {second}")
    if first in (0, second):
        if proof:
            raise ProofInvalid(f"the consistency proof from {first} to {second} must be empty")
        if first == second and first_root != second_root:
            raise ProofInvalid(f"two different roots for the same size {first}")
        return
    if not proof:
        raise ProofInvalid(f"empty consistency proof from {first} to {second}")
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofInvalid(f"consistency proof from {first} to {second} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != first_root or sr != second_root:
        raise ProofInvalid(f"consistency proof from {first} to {second} does not match the roots")
