import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from abci_app.store.merkle import (
    EMPTY_ROOT,
    MerkleLog,
    committed_view,
    hash_from_leaves,
    inner_hash,
    leaf_hash,
    root_from_aunts,
    split_point,
)


def leaf(i: int, version: int = 0) -> bytes:
    return leaf_hash(b"%d/%d" % (i, version))


def test_known_small_trees() -> None:
    a, b, c = leaf(0), leaf(1), leaf(2)
    assert hash_from_leaves([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert hash_from_leaves([a]) == a
    assert hash_from_leaves([a, b, c]) == inner_hash(inner_hash(a, b), c)
    assert [split_point(n) for n in (2, 3, 4, 5, 8, 9)] == [1, 2, 2, 4, 4, 8]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 5)), min_size=1, max_size=40),
       st.integers(0, 30))
def test_incremental_tree_matches_reference(ops: list[tuple[int, int]], initial: int) -> None:
    leaves = [leaf(i) for i in range(initial)]
    tree = MerkleLog.from_leaves(list(leaves))
    # apply updates in batches of 5: an index past the end appends a leaf
    for start in range(0, len(ops), 5):
        updates: dict[int, bytes] = {}
        size = len(leaves)
        for index, version in ops[start : start + 5]:
            pos = index if index < size else size
            if pos == size:
                size += 1
                leaves.append(b"")
            leaves[pos] = leaf(pos, version)
            updates[pos] = leaves[pos]
        staged = tree.stage(updates, size)
        assert staged.root() == hash_from_leaves(leaves)
        tree.apply(staged)
        assert committed_view(tree).root() == hash_from_leaves(leaves)
    view = committed_view(tree)
    for i in range(len(leaves)):
        assert root_from_aunts(i, len(leaves), leaves[i], view.aunts(i)) == hash_from_leaves(leaves)


def test_wrong_aunts_do_not_verify() -> None:
    leaves = [leaf(i) for i in range(11)]
    view = committed_view(MerkleLog.from_leaves(leaves))
    aunts = view.aunts(6)
    root = hash_from_leaves(leaves)
    assert root_from_aunts(6, 11, leaves[6], aunts) == root
    assert root_from_aunts(5, 11, leaves[6], aunts) != root
    assert root_from_aunts(6, 11, leaves[6], aunts[:-1]) != root
    assert root_from_aunts(6, 11, leaf(99), aunts) != root


def test_an_index_outside_the_tree_proves_nothing() -> None:
    """CometBFT refuses such proofs; -1 of 2 walked index 0's path here and gave the root."""
    leaves = [leaf(i) for i in range(2)]
    aunts = committed_view(MerkleLog.from_leaves(leaves)).aunts(0)
    assert root_from_aunts(0, 2, leaves[0], aunts) == hash_from_leaves(leaves)
    assert root_from_aunts(-1, 2, leaves[0], aunts) is None
    assert root_from_aunts(2, 2, leaves[0], aunts) is None and root_from_aunts(0, 0, leaves[0], []) is None
