"""RFC 9162 Merkle tree: roots, proofs and their verification against the definitions, for every size
and index pair up to 70 leaves, plus the RFC 6962 reference vectors (certificate-transparency)."""

from __future__ import annotations

import hashlib

import pytest

from kms.audit.errors import ProofInvalid
from kms.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MapHashStore,
    MemoryHashStore,
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

MAX = 70
LEAVES = [hashlib.sha256(i.to_bytes(4, "big")).digest()[: i % 40] for i in range(MAX)]
HASHES = [leaf_hash(x) for x in LEAVES]

# RFC 6962 reference leaves and roots (certificate-transparency's merkle tree tests)
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def mth(d: list[bytes]) -> bytes:
    """MTH straight from RFC 9162 2.1.1 over entry bytes."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    return [*path(m, d[:k]), mth(d[k:])] if m < k else [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


@pytest.fixture(scope="module")
def store() -> MemoryHashStore:
    s = MemoryHashStore()
    for h in HASHES:
        s.append(h)
    return s


def test_reference_roots_of_rfc6962() -> None:
    hashes = [leaf_hash(x) for x in CT_LEAVES]
    assert [root_of(hashes[: n + 1]).hex() for n in range(8)] == CT_ROOTS
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_roots_match_the_definition_and_the_compact_range() -> None:
    tree = CompactRange()
    assert tree.root() == mth([])
    for n in range(1, MAX + 1):
        tree.append(HASHES[n - 1])
        expected = mth(LEAVES[:n])
        assert root_of(HASHES[:n]) == expected
        assert tree.root() == expected
        assert len(tree.hashes) == n.bit_count()
        assert CompactRange(n, tree.hashes).root() == expected


def test_compact_range_reports_completed_subtrees() -> None:
    tree = CompactRange(3, _frontier(3))
    done = tree.append(HASHES[3])
    assert [(lvl, idx) for lvl, idx, _ in done] == [(0, 3), (1, 1), (2, 0)]
    assert done[-1][2] == mth(LEAVES[:4])


def _frontier(n: int) -> tuple[bytes, ...]:
    tree = CompactRange()
    for h in HASHES[:n]:
        tree.append(h)
    return tree.hashes


def test_compact_range_refuses_a_frontier_of_the_wrong_shape() -> None:
    with pytest.raises(ProofInvalid):
        CompactRange(3, [HASHES[0]])


def test_every_inclusion_proof_matches_the_definition_and_verifies(store: MemoryHashStore) -> None:
    for n in range(1, MAX + 1):
        root = mth(LEAVES[:n])
        for m in range(n):
            proof = inclusion_proof(store, m, n)
            assert proof == path(m, LEAVES[:n])
            verify_inclusion(m, n, HASHES[m], proof, root)


def test_every_consistency_proof_matches_the_definition_and_verifies(store: MemoryHashStore) -> None:
    for n in range(1, MAX + 1):
        second = mth(LEAVES[:n])
        for m in range(1, n + 1):
            proof = consistency_proof(store, m, n)
            assert proof == (subproof(m, LEAVES[:n], True) if m < n else [])
            verify_consistency(m, n, mth(LEAVES[:m]), second, proof)


def _tampered(proof: list[bytes]) -> list[list[bytes]]:
    out = [proof[:-1], [*proof, HASHES[0]]] if proof else [[HASHES[0]]]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        out.append(bad)
    if len(proof) > 1:
        out.append(proof[::-1])
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 64, 70])
def test_tampered_inclusion_proofs_fail(store: MemoryHashStore, n: int) -> None:
    root = mth(LEAVES[:n])
    for m in range(n):
        proof = inclusion_proof(store, m, n)
        for bad in _tampered(proof):
            if bad == proof:
                continue
            with pytest.raises(ProofInvalid):
                verify_inclusion(m, n, HASHES[m], bad, root)
        with pytest.raises(ProofInvalid):
            verify_inclusion(m, n, node_hash(HASHES[m], HASHES[m]), proof, root)
        if n > 1:
            with pytest.raises(ProofInvalid):
                verify_inclusion((m + 1) % n, n, HASHES[m], proof, root)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 64, 70])
def test_tampered_consistency_proofs_fail(store: MemoryHashStore, n: int) -> None:
    second = mth(LEAVES[:n])
    for m in range(1, n):
        first = mth(LEAVES[:m])
        proof = consistency_proof(store, m, n)
        for bad in _tampered(proof):
            if bad == proof:
                continue
            with pytest.raises(ProofInvalid):
                verify_consistency(m, n, first, second, bad)
        with pytest.raises(ProofInvalid):
            verify_consistency(m, n, second, second, proof)
        with pytest.raises(ProofInvalid):
            verify_consistency(m, n, first, first, proof)
        with pytest.raises(ProofInvalid):
            verify_consistency(n, m, second, first, proof)


def test_consistency_edge_cases() -> None:
    root = mth(LEAVES[:5])
    verify_consistency(5, 5, root, root, [])
    verify_consistency(0, 5, EMPTY_ROOT, root, [])
    with pytest.raises(ProofInvalid):
        verify_consistency(5, 5, root, mth(LEAVES[:4]), [])
    with pytest.raises(ProofInvalid):
        verify_consistency(5, 5, root, root, [root])
    with pytest.raises(ProofInvalid):
        verify_consistency(0, 5, EMPTY_ROOT, root, [root])


def test_out_of_range_requests_are_refused(store: MemoryHashStore) -> None:
    for index, size in ((0, 0), (5, 5), (-1, 3)):
        with pytest.raises(ProofInvalid):
            inclusion_proof(store, index, size)
        with pytest.raises(ProofInvalid):
            verify_inclusion(index, size, HASHES[0], [], HASHES[0])
    with pytest.raises(ProofInvalid):
        consistency_proof(store, 6, 5)
    with pytest.raises(ProofInvalid):
        inclusion_proof(store, 0, MAX + 1)  # beyond what the store holds


def _complete(level: int, index: int, n: int) -> bool:
    """(level, index) is a perfect subtree inside a tree of n leaves, i.e. one an appender has stored."""
    return level >= 0 and index >= 0 and (index + 1) << level <= n


def _only(store: MemoryHashStore, wanted: list[tuple[int, int]]) -> MapHashStore:
    return MapHashStore({(lv, ix): store.node(lv, ix) for lv, ix in wanted})


def test_the_named_nodes_are_stored_subtrees_and_all_an_inclusion_proof_reads(store: MemoryHashStore) -> None:
    for n in range(1, MAX + 1):
        for m in range(n):
            wanted = inclusion_nodes(m, n)
            assert all(_complete(lv, ix, n) for lv, ix in wanted) and len(set(wanted)) == len(wanted)
            assert inclusion_proof(_only(store, wanted), m, n) == path(m, LEAVES[:n])


def test_the_named_nodes_are_all_a_consistency_proof_reads(store: MemoryHashStore) -> None:
    for n in range(1, MAX + 1):
        for m in range(1, n + 1):
            wanted = consistency_nodes(m, n)
            assert all(_complete(lv, ix, n) for lv, ix in wanted)
            expected = subproof(m, LEAVES[:n], True) if m < n else []
            assert consistency_proof(_only(store, wanted), m, n) == expected


def test_a_proof_over_a_store_missing_one_named_node_is_refused(store: MemoryHashStore) -> None:
    wanted = inclusion_nodes(5, 70)
    for missing in wanted:
        with pytest.raises(ProofInvalid):
            inclusion_proof(_only(store, [k for k in wanted if k != missing]), 5, 70)


def test_naming_the_nodes_refuses_what_the_proofs_refuse() -> None:
    for index, size in ((0, 0), (5, 5), (-1, 3)):
        with pytest.raises(ProofInvalid):
            inclusion_nodes(index, size)
    with pytest.raises(ProofInvalid):
        consistency_nodes(6, 5)
    assert consistency_nodes(0, 5) == consistency_nodes(5, 5) == []
