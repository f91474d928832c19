"""Tree comparisons for the test suite: the project's own `eqx_collective.testing`
assertions, so that the suite exercises them."""

from eqx_collective.testing import (
    assert_jit_matches_eager as assert_jit_matches_eager,
    assert_member_matches as assert_member_matches,
    assert_pure as assert_pure,
    assert_trees_equal as assert_trees_equal,
)
