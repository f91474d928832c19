import warnings
from typing import Any, NamedTuple

import brainunit as u
import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest
from helpers import assert_trees_equal
from hypothesis import given

import eqx_collective as ec
from eqx_collective import nn
from eqx_collective.testing import module_trees


class Pair(eqx.Module):
    a: Any
    b: Any
    tag: Any = eqx.field(static=True)


class Point(NamedTuple):
    x: Any
    y: Any


def _array(shape, dtype, numpy):
    x = (np.arange(int(np.prod(shape))).reshape(shape) % 3).astype(dtype)
    return x if numpy else jnp.asarray(x)


_leaves = st.one_of(
    st.builds(
        _array,
        st.sampled_from([(), (2,), (2, 3)]),
        st.sampled_from([np.float32, np.int32, np.bool_]),
        st.booleans(),
    ),
    st.just(np.float32(1.5)),  # a NumPy scalar: an array to `eqx.is_array`
    st.integers(-3, 3),
    st.floats(-2, 2, allow_nan=False, width=32),
    st.booleans(),
    st.none(),
    st.sampled_from(["a", "b"]),
    st.sampled_from([jnp.sin, len]),  # functions are static
)
_trees = st.recursive(
    _leaves,
    lambda c: st.one_of(
        st.tuples(c, c),
        st.lists(c, max_size=3),
        st.dictionaries(st.sampled_from("xyz"), c, max_size=3),
        st.builds(Pair, c, c, tag=st.sampled_from([0, 1, "t", None, (1, 2)])),
        st.builds(Point, c, c),
    ),
    max_leaves=10,
)
_args = st.lists(st.one_of(_trees, module_trees(max_depth=2, max_width=2)), max_size=3)


def _double(tree):
    return jtu.tree_map(lambda x: x + x if eqx.is_array(x) else x, tree)


def _new_values(tree):
    """The same structure and statics, other array values (same shapes, dtypes)."""
    return jtu.tree_map(lambda x: x + x if eqx.is_array(x) else x, tree)


def _new_statics(tree):
    def change(x):
        if isinstance(x, bool) or eqx.is_array(x):
            return x
        if isinstance(x, int):
            return x + 1
        return x + "!" if isinstance(x, str) else x

    return jtu.tree_map(change, tree)


def _counted_pair():
    """The same function under `eqx.filter_jit` and `ec.filter_jit`, each counting its
    traces."""
    counts = {"eqx": 0, "ours": 0}

    def make(name):
        def f(*args, **kwargs):
            counts[name] += 1
            return _double((args, kwargs)), "out", [1, None]

        return f

    return eqx.filter_jit(make("eqx")), ec.filter_jit(make("ours")), counts


def _assert_same_output(ours, theirs):
    assert_trees_equal(ours, theirs)
    for a, b in zip(jtu.tree_leaves(ours), jtu.tree_leaves(theirs), strict=True):
        assert type(a) is type(b)


@given(_args, _args)
def test_results_and_retracing_match_eqx_filter_jit(a, b):
    theirs, ours, counts = _counted_pair()
    calls = [a, b, a, _new_values(a), _new_statics(a), _new_statics(b)]
    for args in calls:
        _assert_same_output(ours(*args), theirs(*args))
        assert counts["ours"] == counts["eqx"]


@given(_args)
def test_keyword_arguments_match_eqx_filter_jit(args):
    theirs, ours, counts = _counted_pair()
    kwargs = {f"k{i}": x for i, x in enumerate(args)}
    for call in [kwargs, _new_values(kwargs), dict(reversed(kwargs.items())), kwargs]:
        _assert_same_output(ours(1, **call), theirs(1, **call))
        assert counts["ours"] == counts["eqx"]


def test_positional_and_keyword_forms_of_an_argument_share_a_trace():
    count = []

    @ec.filter_jit
    def f(x, y=2):
        count.append(None)
        return x * y

    assert f(jnp.ones(2), 3).tolist() == [3.0, 3.0]
    assert f(jnp.ones(2), y=3).tolist() == [3.0, 3.0]
    assert f(x=jnp.ones(2), y=3).tolist() == [3.0, 3.0]
    assert len(count) == 1


def test_a_training_loop_carries_its_trees_without_retracing(getkey):
    model = nn.Sequential(*[nn.Linear(3, 3, key=getkey()) for _ in range(4)])
    params, rest = ec.partition(model, ec.ParamState)
    x = jnp.ones((2, 3))
    count = []

    def step(params, rest, x):
        count.append(None)

        def loss(p):
            return jnp.sum(ec.combine(p, rest)(x) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        return jtu.tree_map(lambda p, g: p - 0.1 * g, params, grads), value

    ours, theirs = ec.filter_jit(step), eqx.filter_jit(step)
    p_ours, p_theirs = params, params
    for _ in range(4):
        p_ours, l_ours = ours(p_ours, rest, x)
        p_theirs, l_theirs = theirs(p_theirs, rest, x)
        assert_trees_equal(p_ours, p_theirs)
        assert_trees_equal(l_ours, l_theirs)
    assert len(count) == 2  # one trace each


def test_a_dict_mutated_in_place_is_seen():
    @ec.filter_jit
    def f(tree):
        return tree["a"] + 0

    tree = {"a": jnp.zeros(2)}
    assert f(tree).tolist() == [0.0, 0.0]
    tree["a"] = jnp.ones(2)
    assert f(tree).tolist() == [1.0, 1.0]
    tree["a"] = 5  # now static
    assert f(tree) == 5


def test_an_argument_passed_unchanged_is_checked_again():
    rest = Pair({"k": None}, [1], tag=0)

    @ec.filter_jit
    def f(x, rest):
        return x + len(rest.b), rest

    assert f(jnp.zeros(()), rest)[0] == 1
    rest.b.append(2)  # the same object, with another structure
    out, back = f(jnp.zeros(()), rest)
    assert out == 2 and back.b == [1, 2]
    rest.a["k"] = jnp.ones(())  # a static entry becomes an array
    assert eqx.is_array(f(jnp.zeros(()), rest)[1].a["k"])


def test_new_wrappers_of_a_function_share_its_traces():
    count = []

    def f(x):
        count.append(None)
        return x + 1

    for _ in range(3):
        ec.filter_jit(f)(jnp.ones(2))
    assert len(count) == 1


@pytest.mark.parametrize(
    "donate", ["all", "all-except-first", "warn", "warn-except-first", "none"]
)
def test_donation_matches_eqx_filter_jit(donate):
    def f(a, b, c):
        return a + 1, b["w"] * 2, c

    deleted = {}
    for jit in (eqx.filter_jit, ec.filter_jit):
        a, b, c = jnp.ones(3), {"w": jnp.ones(3)}, jnp.ones(2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (unusable donated buffers, for 'warn')
            out = jit(f, donate=donate)(a, b, c)
        assert_trees_equal(out[0], jnp.full(3, 2.0))
        deleted[jit] = [a.is_deleted(), b["w"].is_deleted(), c.is_deleted()]
    assert deleted[eqx.filter_jit] == deleted[ec.filter_jit]
    assert any(deleted[ec.filter_jit]) == (donate != "none")


def test_a_module_as_the_function_has_its_arrays_traced(getkey):
    layer = nn.Linear(3, 2, key=getkey())
    f, g = ec.filter_jit(layer), eqx.filter_jit(layer)
    x = jnp.ones((4, 3))
    assert_trees_equal(f(x), g(x))
    other = nn.Linear(3, 2, key=getkey())
    assert_trees_equal(ec.filter_jit(other)(x), other(x), rtol=1e-6)


def test_methods_get_their_instance_as_the_first_argument():
    class Scale(eqx.Module):
        factor: jax.Array

        @ec.filter_jit
        def __call__(self, x):
            return self.factor * x

    assert Scale(jnp.array(3.0))(jnp.ones(2)).tolist() == [3.0, 3.0]


def test_no_tracer_leaks(getkey):
    model = ec.init_all_states(nn.ValinaRNNCell(2, 3, key=getkey()), batch_size=1)

    @ec.filter_jit
    def f(model, x):
        h, model = model(x)
        return h, model, ec.states(model)

    with jax.checking_leaks():
        h, model, _ = f(model, jnp.ones((1, 2)))
        f(model, jnp.ones((1, 2)))

    @ec.filter_jit
    def g(tree):
        return {"a": tree["a"] * 2, "b": tree["b"] + 1}

    def outer(x):
        return jnp.sum(g({"a": x, "b": x})["a"])

    with jax.checking_leaks():
        assert jax.grad(outer)(jnp.ones(2)).tolist() == [2.0, 2.0]
        assert jax.jit(jax.grad(outer))(jnp.ones(2)).tolist() == [2.0, 2.0]


def test_models_with_units():
    pair = Pair(u.Quantity(jnp.ones(2), unit=u.mV), 1, tag="v")
    theirs, ours, counts = _counted_pair()
    for arg in [pair, pair, Pair(u.Quantity(jnp.ones(2), unit=u.volt), 1, tag="v")]:
        _assert_same_output(ours(arg), theirs(arg))
        assert counts["ours"] == counts["eqx"]


def test_ensembles_under_filter_vmap(getkey):
    model = ec.init_all_states(nn.ValinaRNNCell(2, 3, key=getkey()), batch_size=1)
    models = ec.vmap_init_all_states(model, batch_size=1, axis_size=3, key=getkey())
    params, rest = ec.partition(models, ec.ParamState)

    def run(params, rest, x):
        axes = (ec.ensemble_in_axes(params), ec.ensemble_in_axes(rest), None)
        call = eqx.filter_vmap(lambda p, r, x: ec.combine(p, r)(x), in_axes=axes)
        return call(params, rest, x)

    x = jnp.ones((1, 2))
    ours, theirs = (
        ec.filter_jit(run)(params, rest, x),
        eqx.filter_jit(run)(params, rest, x),
    )
    _assert_same_output(ours, theirs)


def test_eqx_nn_state_pairs():
    model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="batch")

    def f(model, state, x):
        return jax.vmap(
            model, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )(x, state)

    x = jnp.arange(12.0).reshape(4, 3)
    theirs, ours = eqx.filter_jit(f), ec.filter_jit(f)
    for _ in range(2):
        out, state_ours = ours(model, state, x)
        expected, state = theirs(model, state, x)
        _assert_same_output((out, state_ours), (expected, state))
        state = state_ours


def test_optax_states(getkey):
    model = nn.Sequential(nn.Linear(3, 3, key=getkey()), nn.ReLU())
    params, rest = ec.partition(model, ec.ParamState)
    optimiser = optax.adam(1e-2)

    def step(params, rest, opt_state, x):
        grads = jax.grad(lambda p: jnp.sum(ec.combine(p, rest)(x) ** 2))(params)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return eqx.apply_updates(params, updates), opt_state

    x = jnp.ones((2, 3))
    a = b = (params, optimiser.init(params))
    ours, theirs = ec.filter_jit(step), eqx.filter_jit(step)
    with jax.numpy_dtype_promotion("standard"):  # (Adam's bias correction)
        for _ in range(3):
            a, b = ours(a[0], rest, a[1], x), theirs(b[0], rest, b[1], x)
            _assert_same_output(a, b)


def test_unhashable_static_arguments_are_refused_clearly():
    class Unhashable:
        __hash__ = None

    with pytest.raises(TypeError, match="`filter_jit`.*not hashable"):
        ec.filter_jit(lambda x: x)(Unhashable())


def test_an_unknown_donate_option_is_refused():
    with pytest.raises(ValueError, match="donate"):
        ec.filter_jit(lambda x: x, donate="some")


@given(_args)
def test_outputs_passed_back_match_eqx_filter_jit(args):
    counts = {"eqx": 0, "ours": 0}

    def make(name):
        def f(*args):
            counts[name] += 1
            return tuple(_double(a) for a in args)

        return f

    theirs, ours = eqx.filter_jit(make("eqx")), ec.filter_jit(make("ours"))
    # Padded to be large enough for receipts (`_jit._RECEIPT_TOKENS`).
    a = b = tuple((x, [np.float32(0), *range(40)]) for x in args)
    for _ in range(3):
        a, b = ours(*a), theirs(*b)
        _assert_same_output(a, b)
        assert counts["ours"] == counts["eqx"]


def test_a_returned_tree_changed_in_place_is_seen():
    @ec.filter_jit
    def f(tree, extra):
        return jtu.tree_map(lambda x: x + 1, tree), extra

    tree = {"a": jnp.zeros(2), "b": [jnp.zeros(2), jnp.zeros(())]}
    tree["c"] = {f"k{i}": jnp.zeros(()) for i in range(80)}  # (large: see below)
    out, _ = f(tree, 0)
    out, receipts = f(out, 0), f._receipts
    assert id(out[0]) in receipts  # to be recognised when passed back
    out, _ = out
    assert out["a"].tolist() == [2.0, 2.0]
    out["a"] = jnp.full(2, 10.0)
    out, _ = f(out, 0)
    assert out["a"].tolist() == [11.0, 11.0]
    out["b"].append(jnp.zeros(3))
    out, _ = f(out, 0)
    assert out["b"][2].tolist() == [1.0, 1.0, 1.0]
    assert_trees_equal(out["b"][0], jnp.full(2, 4.0))
