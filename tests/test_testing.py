"""The testing helpers themselves: strategies give valid models, assertions catch
planted differences and name the path."""

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings

import eqx_collective as ec
from eqx_collective.testing import (
    assert_jit_matches_eager,
    assert_member_matches,
    assert_pure,
    assert_trees_equal,
    ensembles,
    module_trees,
    TreeNode,
)


@given(module_trees(max_depth=2, max_width=2))
def test_module_trees_are_valid_models(tree):
    assert isinstance(tree, TreeNode)
    for path, state in ec.states(tree).items():
        assert isinstance(state, ec.State)
        assert path[-2] == "states"
    names = [n.name for _, n in ec._walk.iter_nodes(tree)]
    assert len(names) == len(set(names))
    initialised = ec.init_all_states(tree, key=jax.random.key(0))
    assert jax.tree_util.tree_structure(initialised) == jax.tree_util.tree_structure(
        tree
    )


@given(ensembles(max_size=3))
def test_ensembles_strategy(drawn):
    ensemble, model, key = drawn
    n = ec.ensemble_size(ensemble)
    assert 1 <= n <= 3
    for i, k in enumerate(jax.random.split(key, n)):
        assert_member_matches(ensemble, i, ec.init_all_states(model, key=k))


def _model(x=1.0, unit=u.mV, extra=False):
    value = {"a": jnp.full(3, x), "q": u.Quantity(jnp.zeros(2), unit)}
    if extra:
        value["b"] = jnp.zeros(1)
    return {"layer": [ec.ParamState(value)]}


def test_trees_equal_passes_on_equal_trees():
    assert_trees_equal(_model(), _model())


@pytest.mark.parametrize(
    "other, message",
    [
        (_model(x=2.0), r"path 'layer.0.a': values differ"),
        (_model(unit=u.volt), r"path 'layer.0.q': unit"),
        (_model(extra=True), r"only in `expected`: 'layer.0.b'"),
        (
            {"layer": [ec.HiddenState(_model()["layer"][0].value)]},
            "structure or static",
        ),
    ],
)
def test_trees_equal_names_the_planted_difference(other, message):
    with pytest.raises(AssertionError, match=message):
        assert_trees_equal(_model(), other)


def test_trees_equal_dtype_shape_and_tolerance():
    with pytest.raises(AssertionError, match="float32"):
        assert_trees_equal({"a": jnp.zeros(2)}, {"a": jnp.zeros(2, jnp.int32)})
    with pytest.raises(AssertionError, match=r"\[3\]"):
        assert_trees_equal({"a": jnp.zeros(2)}, {"a": jnp.zeros(3)})
    assert_trees_equal({"a": jnp.ones(2)}, {"a": jnp.ones(2) + 1e-7}, rtol=1e-5)
    with pytest.raises(AssertionError):
        assert_trees_equal({"a": jnp.ones(2)}, {"a": jnp.ones(2) + 1e-3}, rtol=1e-5)


def test_assert_pure_catches_mutation():
    def mutate(tree):
        tree["layer"].append(3)
        return tree

    assert assert_pure(lambda t: 5, _model()) == 5
    with pytest.raises(AssertionError, match="changed its input"):
        assert_pure(mutate, _model())


def test_assert_jit_matches_eager_catches_a_difference():
    assert_jit_matches_eager(lambda x: x * 2, jnp.ones(2))

    def differs(x):
        # Python-side state: eager sees 1, the trace sees 2.
        differs.calls += 1
        return x * differs.calls

    differs.calls = 0
    with pytest.raises(AssertionError, match="values differ"):
        assert_jit_matches_eager(differs, jnp.ones(2))


def test_assert_jit_matches_eager_catches_leaks():
    leaked = []

    def leak(x):
        leaked.append(x)
        return x

    with pytest.raises(Exception, match="[Ll]eak"):
        assert_jit_matches_eager(leak, jnp.ones(2))


def test_assert_member_matches_names_member_and_path(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(2, 2, key=k), key, 3)
    assert_member_matches(ens, 1, ec.unstack(ens)[1])
    with pytest.raises(AssertionError, match=r"member 1: .*'weight.weight'"):
        assert_member_matches(ens, 1, ec.unstack(ens)[0])


def test_assert_member_matches_ignores_shared_marks(key):
    class M(eqx.Module):
        w: ec.ParamState
        s: ec.LongTermState

    single = M(ec.ParamState(jnp.arange(2.0)), ec.LongTermState(jnp.ones(2)))
    ens = ec.vmap_init_all_states(
        single, axis_size=2, state_to_exclude=ec.PathPrefix("s")
    )
    assert ens.s.shared and not single.s.shared
    assert_member_matches(ens, 0, single)
    with pytest.raises(AssertionError, match="structure or static"):
        assert_trees_equal(ec.member(ens, 0), single)


@settings(max_examples=10)
@given(ensembles(module_trees(max_depth=1), max_size=3, max_levels=2))
def test_ensembles_strategy_draws_nested_levels(drawn):
    ensemble, model, key = drawn
    shape = ec.ensemble_shape(ensemble)
    assert 1 <= len(shape) <= 2 and all(1 <= n <= 3 for n in shape)
    if len(shape) == 1:
        return
    for i, row in enumerate(jax.random.split(key, shape[0])):
        for j, k in enumerate(jax.random.split(row, shape[1])):
            expected = ec.init_all_states(model, key=k)
            assert_member_matches(ec.member(ensemble, i), j, expected)
