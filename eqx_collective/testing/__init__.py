"""Tools for property-based tests of stateful Equinox models (needs the `hypothesis`
extra for the strategies): random module trees, snapshots and ensembles, and
assertions (trees equal, purity, jit == eager, ensemble member == single model)."""

from ._assertions import (
    assert_jit_matches_eager as assert_jit_matches_eager,
    assert_member_matches as assert_member_matches,
    assert_members_differ as assert_members_differ,
    assert_pure as assert_pure,
    assert_trees_equal as assert_trees_equal,
)
from ._strategies import (
    ensembles as ensembles,
    module_trees as module_trees,
    record_calls as record_calls,
    Snapshot as Snapshot,
    snapshots as snapshots,
    stateful_pairs as stateful_pairs,
    TreeNode as TreeNode,
)
