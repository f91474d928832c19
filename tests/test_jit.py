import doctest
import functools as ft
import gc
import warnings
import weakref
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


def _plus_one(tree):
    return jtu.tree_map(lambda x: x + 1 if eqx.is_array(x) else x, tree)


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
        return _plus_one(tree), extra

    tree = {"a": jnp.zeros(2), "b": [jnp.zeros(2), jnp.zeros(())]}
    tree["c"] = {f"k{i}": jnp.zeros(()) for i in range(80)}
    out, _ = f(tree, 0)
    out, _ = f(out, 0)
    assert out["a"].tolist() == [2.0, 2.0]
    out["a"] = jnp.full(2, 10.0)
    out, _ = f(out, 0)
    assert out["a"].tolist() == [11.0, 11.0]
    out["b"].append(jnp.zeros(3))
    out, _ = f(out, 0)
    assert out["b"][2].tolist() == [1.0, 1.0, 1.0]
    assert_trees_equal(out["b"][0], jnp.full(2, 4.0))
    out["c"]["k0"] = "static now"
    out, _ = f(out, 0)
    assert out["c"]["k0"] == "static now"


# -- the cases ---------------------------------------------------------------


def test_a_returned_dict_with_a_key_replaced_falls_back():
    theirs, ours, counts = _counted_pair()
    tree = {f"k{i}": jnp.full(2, float(i)) for i in range(100)}
    a = b = (tree,)
    for step in range(3):
        a, b = ours(*a)[0][0], theirs(*b)[0][0]
        _assert_same_output(a, b)
        if step == 1:  # one key replaced by another: same length, other structure
            for t in (a, b):
                t[0]["new"] = t[0].pop("k3")
        a, b = (a[0],), (b[0],)
    assert counts["ours"] == counts["eqx"] == 2


def test_a_bound_method_passed_in_traces_once():
    class M(eqx.Module):
        w: jax.Array

        def apply(self, x):
            return self.w * x

        @ec.filter_jit
        def jitted(self, x):
            return self.w + x

    count = []

    @ec.filter_jit
    def run(fn, x):
        count.append(None)
        return fn(x)

    m = M(jnp.ones(2))
    for i in range(20):
        assert run(m.apply, jnp.full(2, float(i))).tolist() == [float(i)] * 2
    for i in range(20):
        assert run(m.jitted, jnp.full(2, float(i))).tolist() == [i + 1.0] * 2
    assert len(count) == 2  # one trace per method


def test_a_jitted_model_is_a_pytree_of_its_leaves(getkey):
    model = eqx.nn.MLP(2, 2, 4, 1, key=getkey())
    jitted = ec.filter_jit(model)
    assert_trees_equal(jtu.tree_leaves(jitted), jtu.tree_leaves(model))
    assert jtu.tree_leaves(eqx.filter(jitted, eqx.is_array)) == jtu.tree_leaves(
        eqx.filter(eqx.filter_jit(model), eqx.is_array)
    )
    x = jnp.ones(2)
    grads = eqx.filter_grad(lambda f: jnp.sum(f(x)))(jitted)
    expected = eqx.filter_grad(lambda f: jnp.sum(f(x)))(model)
    assert_trees_equal(
        jtu.tree_leaves(eqx.filter(grads, eqx.is_array)),
        jtu.tree_leaves(eqx.filter(expected, eqx.is_array)),
    )
    updated = eqx.apply_updates(jitted, grads)
    assert type(updated) is type(jitted)
    assert_trees_equal(updated(x), eqx.apply_updates(model, expected)(x), rtol=1e-6)


def test_clear_caches_empties_ours_and_jax_clear_caches_retraces():
    count = []

    @ec.filter_jit
    def f(x):
        count.append(None)
        return x + 1

    x = jnp.ones(2)
    f(f(x))
    assert len(count) == 1
    eqx.clear_caches()  # (does not reach ours: Equinox has no public hook)
    f(x)
    assert len(count) == 1
    ec.clear_caches()
    f(x)
    assert len(count) == 2
    jax.clear_caches()
    f(x)
    assert len(count) == 3


def test_a_static_leaf_changed_retraces_in_a_kept_tree():
    count = []

    @ec.filter_jit
    def f(tree):
        count.append(None)
        return tree

    tree = {"w": jnp.ones(2), "n": [1]}
    out = f(tree)
    out["n"][0] = 2  # a list of the kept output changed in place
    assert f(out)["n"] == [2]
    assert len(count) == 2


# -- Equinox's own filter_jit cases (equinox 0.13.8, tests/), on ec.filter_jit -------


@pytest.mark.parametrize("donate", ["all", "none"])
def test_general_trees_traced_and_static(donate, getkey):
    a, b, c = (jax.random.normal(getkey(), s) for s in [(2, 3), (3,), (1, 4)])
    sentinel = object()
    mlp = eqx.nn.MLP(2, 2, 2, 2, key=getkey())

    def copy(tree):
        return jtu.tree_map(lambda x: jnp.copy(x) if eqx.is_array(x) else x, tree)

    @ec.filter_jit(donate=donate)
    def f(x):
        return jtu.tree_map(lambda x: x + 1 if eqx.is_array(x) else x, x)

    assert_trees_equal(f(jnp.copy(a)), a + 1)
    out = f(copy([{"a": a, "b": b}, (c,)]))
    assert_trees_equal(out, [{"a": a + 1, "b": b + 1}, (c + 1,)])
    out = f(copy([1, True, sentinel, {"a": a, "tuple": (2.0, b)}, c, mlp]))
    assert out[:3] == [1, True, sentinel] and type(out[1]) is bool
    assert_trees_equal(out[3], {"a": a + 1, "tuple": (2.0, b + 1)})
    assert_trees_equal(out[4], c + 1)
    assert_trees_equal(
        out[5], jtu.tree_map(lambda u: u + 1 if eqx.is_array(u) else u, mlp)
    )


def test_num_traces():
    count = []

    @ec.filter_jit
    def f(x):
        count.append(None)

    for x in [jnp.zeros(2), jnp.zeros(2)]:
        f(x)
    assert len(count) == 1
    for x in [jnp.zeros(3), jnp.zeros(3)]:
        f(x)
    assert len(count) == 2
    for x in [[jnp.zeros(2)], [jnp.zeros(2), jnp.zeros(3)], [jnp.zeros(2), True]]:
        f(x)
    assert len(count) == 5

    @ec.filter_jit
    def g(x, y):
        count.append(None)

    g(jnp.zeros(2), True)
    g(jnp.zeros(2), False)
    assert len(count) == 7

    @ec.filter_jit
    def h(x, y, z, w):
        count.append(None)

    count.clear()
    h(True, {"a": 1, "b": 1}, True, True)
    h(False, {"a": 1, "b": 1}, True, True)
    h(True, {"a": 1, "b": 0}, True, True)
    h(True, {"a": 1, "b": 1}, True, 2)
    h(True, {"a": 1, "b": 1}, 5, True)
    assert len(count) == 5
    h(True, {"a": 1, "b": 1}, True, True)
    assert len(count) == 5
    h(True, {"a": 2, "b": 1}, True, True)
    assert len(count) == 6


@pytest.mark.parametrize("call", [False, True])
@pytest.mark.parametrize("outer", [False, True])
def test_methods(call, outer):
    count = []

    def body(self, x):
        count.append(None)
        return x + self.increment

    jit = (lambda f: f) if outer else ec.filter_jit

    class M(eqx.Module):
        increment: int | jax.Array
        __call__ = jit(body)
        method = jit(body)

    def run(m):
        fn = m if call else m.method
        return (ec.filter_jit(fn) if outer else fn)(jnp.array(1))

    assert run(M(1)) == run(M(1)) == 2
    assert len(count) == 1
    assert run(M(2)) == run(M(2)) == 3
    assert len(count) == 2
    assert run(M(jnp.array(1))) == 2 and run(M(jnp.array(2))) == 3
    assert len(count) == 3


def test_args_kwargs():
    count = []

    @ec.filter_jit
    def f(*args, **kwargs):
        count.append(None)
        return kwargs["x"]

    assert f(x=jnp.array(2)) == 2
    assert f(x=jnp.array(3)) == 3
    assert len(count) == 1
    assert f(x=jnp.array(3), y=jnp.array(4)) == 3
    assert len(count) == 2

    @ec.filter_jit
    def h(*args, **kwargs):
        return args[0]

    assert h(1, 2) == 1


def test_jit_of_jit():
    count = []

    @ec.filter_jit
    @ec.filter_jit
    def f(x):
        count.append(None)
        return x + 1

    assert f(jnp.array(1)) == 2 and f(jnp.array(2)) == 3
    assert len(count) == 1

    @ec.filter_jit
    def g(x):
        count.append(None)
        return x + 1

    assert ec.filter_jit(g)(jnp.array(1)) == 2
    assert ec.filter_jit(g)(jnp.array(2)) == 3
    assert len(count) == 2


def test_jit_of_grad_and_vmap():
    count = []

    def f(x):
        count.append(None)
        return x + 1

    assert ec.filter_jit(eqx.filter_grad(f))(jnp.array(1.0)) == 1
    assert ec.filter_jit(eqx.filter_grad(f))(jnp.array(2.0)) == 1
    assert len(count) == 1
    assert ec.filter_jit(eqx.filter_value_and_grad(f))(jnp.array(1.0)) == (2, 1)
    assert ec.filter_jit(eqx.filter_value_and_grad(f))(jnp.array(2.0)) == (3, 1)
    assert len(count) == 2
    out = ec.filter_jit(eqx.filter_vmap(f))(jnp.array([1, 2]))
    assert out.tolist() == [2, 3]
    out = ec.filter_jit(eqx.filter_vmap(f))(jnp.array([2, 3]))
    assert out.tolist() == [3, 4]
    assert len(count) == 3


def test_wrap_jax_partial(getkey):
    g = jtu.Partial(lambda x, y: x + y, jax.random.normal(getkey(), ()))
    f = ec.filter_jit(g)
    assert_trees_equal(f(jnp.ones(())), g(jnp.ones(())))


def test_buffer_donation_function():
    @ec.filter_jit(donate="all")
    def f(x):
        return x + 1

    x = jnp.array(0.0)
    pointer = x.unsafe_buffer_pointer()
    new = f(x)
    assert new == 1.0 and x.is_deleted()
    assert new.unsafe_buffer_pointer() == pointer


def test_buffer_donation_function_except_first():
    @ec.filter_jit(donate="warn-except-first")
    def f(x, y):
        return x + y

    x, y = jnp.array(0.0), jnp.array(1.0)
    pointer = y.unsafe_buffer_pointer()
    new = f(x, y)
    assert new == 1.0 and not x.is_deleted() and y.is_deleted()
    assert new.unsafe_buffer_pointer() == pointer


def _buffered(getkey, count, donate_call):
    class M(eqx.Module):
        buffer: jax.Array
        mlp: eqx.nn.MLP

        def __call__(self, x):
            count.append(None)
            new = eqx.tree_at(lambda s: s.buffer, self, self.buffer.at[0].add(1))
            return self.mlp(x), new

        if donate_call:
            __call__ = ec.filter_jit(__call__, donate="all")

    return M(jnp.zeros(100000), eqx.nn.MLP(10, 10, 10, 3, key=getkey()))


def test_buffer_donation_method(getkey):
    count = []
    m = _buffered(getkey, count, donate_call=True)
    pointer = m.buffer.unsafe_buffer_pointer()
    _, new = m(jnp.ones(10))
    _, new = new(jnp.ones(10))
    _, new = new(jnp.ones(10))
    assert len(count) == 1
    assert new.buffer[0] == 3.0 and new.buffer.unsafe_buffer_pointer() == pointer
    assert all(x.is_deleted() for x in jtu.tree_leaves(eqx.filter(m, eqx.is_array)))


def test_buffer_donation_instance(getkey):
    count = []
    f = _buffered(getkey, count, donate_call=False)
    _, new = ec.filter_jit(f, donate="all")(jnp.ones(10))
    assert len(count) == 1 and f.buffer.is_deleted()
    _, _ = ec.filter_jit(new, donate="all")(jnp.ones(10))
    assert len(count) == 1 and new.buffer.is_deleted()


def test_donation_warning():
    def f(x, y):
        return x + jnp.sum(y)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ec.filter_jit(f)(jnp.array(1.0), jnp.ones(10))
    with pytest.warns(UserWarning, match="Some donated buffers were not usable") as w:
        ec.filter_jit(f, donate="warn")(jnp.array(1.0), jnp.ones(10))
    assert len(w) == 1


@pytest.mark.parametrize("donate", ["all", "all-except-first", "none"])
def test_aot_compilation(donate):
    def f(x, y, **kwargs):
        return 2 * x + y + len(kwargs)

    x = jnp.array(3)
    for kwargs in [{}, {"test": 123}]:
        lowered = ec.filter_jit(f, donate=donate).lower(x, 4, **kwargs)
        assert "add" in lowered.as_text()
        compiled = lowered.compile()
        assert compiled(jnp.array(3), 4, **kwargs) == 10 + len(kwargs)


def test_compiler_options():
    def f(x, y):
        return 2 * x + y

    lowered = ec.filter_jit(f).lower(jnp.array(3), 4)
    compiled = lowered.compile(compiler_options={"xla_gpu_autotune_level": "0"})
    assert compiled(jnp.array(3), 4) == 10
    with pytest.raises(jax.errors.JaxRuntimeError):
        lowered.compile(compiler_options={"an option that does not make sense": "bad"})


def test_grad_of_jit_traces_as_eqx_does():
    counts = {}
    for jit in (eqx.filter_jit, ec.filter_jit):
        count = counts[jit] = []

        @eqx.filter_custom_vjp
        def f(x):
            return x

        def f_fwd(perturbed, x):
            return x, None

        def f_bwd(residuals, grad, perturbed, x):
            count.append(None)
            return 3 * grad

        f.def_fwd(f_fwd)
        f.def_bwd(f_bwd)
        jitted, x = jit(f), jnp.array(1.0)
        assert eqx.filter_grad(jitted)(x) == eqx.filter_grad(jitted)(x) == 3
        assert eqx.filter_grad(jit(f))(x) == eqx.filter_grad(jit(f))(x) == 3
    assert len(counts[ec.filter_jit]) == len(counts[eqx.filter_jit])


def test_jit_under_jvp():
    def fun(x, y, z):
        return x * 2 + y["a"] * z, (z, "static")

    x, y, z = jnp.array(1.0), {"a": jnp.array(2.0)}, jnp.array(3.0)
    tangents = (jnp.array(1.0), {"a": jnp.array(0.0)}, jnp.array(1.0))
    ours = eqx.filter_jvp(ec.filter_jit(fun), (x, y, z), tangents)
    theirs = eqx.filter_jvp(eqx.filter_jit(fun), (x, y, z), tangents)
    _assert_same_output(ours, theirs)


def test_pure_callback_inside():
    sentinel = object()

    def callback(x, s):
        assert s is sentinel
        return x + 1

    @ec.filter_jit
    def g(x):
        return eqx.filter_pure_callback(
            callback, x, sentinel, result_shape_dtypes=jax.ShapeDtypeStruct((), x.dtype)
        )

    assert g(jnp.array(2.0)) == 3.0

    @ec.filter_jit
    def wrong(x):
        return eqx.filter_pure_callback(
            callback, x, object(), result_shape_dtypes=jax.ShapeDtypeStruct((), x.dtype)
        )

    with pytest.raises(Exception):  # noqa: B017 (as in Equinox: JAX's own error)
        wrong(jnp.array(2.0))


def test_runtime_errors_are_raised_at_the_call(caplog):
    @ec.filter_jit
    def g(x):
        return eqx.error_if(x, x > 0, "egads")

    @ec.filter_jit
    def f(x):
        return g(x)

    assert f(jnp.array(-1.0)) == -1.0
    with pytest.raises(eqx.EquinoxRuntimeError) as info:
        f(jnp.array(1.0))
    assert type(info.value) is eqx.EquinoxRuntimeError
    assert info.value.__cause__ is None and caplog.text == ""
    msg = str(info.value).strip()
    assert msg.startswith("Above is the stack outside of JIT")
    assert "egads" in msg and "EQX_ON_ERROR" in msg

    class FooException(Exception):
        pass

    def raises(x):
        raise FooException("oh no")

    @ec.filter_jit
    def h(x):
        return jax.pure_callback(raises, jax.ShapeDtypeStruct((), x.dtype), x)

    with pytest.raises(Exception, match="oh no") as info:
        h(jnp.array(1.0))
    assert "EQX_ON_ERROR" not in str(info.value)


def test_wrapper_attributes_survive_flattening():
    def f(x: int) -> str:
        """some doc"""
        return "hi"

    seen = []

    @ec.filter_jit
    def g(k):
        seen.append((k.__name__, k.__doc__, k.__qualname__, k.__annotations__))

    g(ec.filter_jit(f))
    assert seen == [("f", "some doc", f.__qualname__, {"x": int, "return": str})]


def test_a_jitted_method_has_its_docstring_found_by_doctest():
    class Example(eqx.Module):
        @ec.filter_jit
        def biz(self) -> int:
            """
            >>> Example().biz()
            1
            """
            return 1

    tests = [t for t in doctest.DocTestFinder().find(Example) if t.examples]
    assert len(tests) == 1 and "biz" in tests[0].name
    assert Example().biz() == 1


def test_max_traces_of_a_cloned_wrapper(getkey):
    lin = eqx.nn.Linear(3, 4, key=getkey())
    lin = ec.filter_jit(eqx.debug.assert_max_traces(lin, max_traces=2))
    leaves, treedef = jtu.tree_flatten(lin)
    lin2 = jtu.tree_unflatten(treedef, leaves)
    lin(jnp.array([1.0, 2.0, 3.0]))
    assert eqx.debug.get_num_traces(lin) == eqx.debug.get_num_traces(lin2) == 1
    with jax.numpy_dtype_promotion("standard"):
        lin2(jnp.array([1, 2, 3]))
        assert eqx.debug.get_num_traces(lin) == eqx.debug.get_num_traces(lin2) == 2
        with pytest.raises(RuntimeError, match="can only be traced 2 times"):
            lin(jnp.array([False, False, False]))


def test_jit_of_grad_with_static_keyword_and_aux(getkey):
    @ec.filter_jit
    @jax.grad
    def f(x, terminate):
        return x * (2.0 if terminate else 3.0)

    assert f(jnp.array(1.0), terminate=False) == 3.0
    assert f(jnp.array(1.0), terminate=True) == 2.0

    shared = eqx.nn.Shared(
        (eqx.nn.Linear(3, 3, key=getkey()), eqx.nn.Linear(3, 3, key=getkey())),
        where=lambda pair: pair[1].weight,
        get=lambda pair: pair[0].weight,
    )

    @ec.filter_jit
    @eqx.filter_grad(has_aux=True)
    def loss(module, x):
        first, second = module()
        return jnp.sum(second(first(x))), second.weight is not None

    x = jnp.ones(3)
    grads, aux = loss(shared, x)
    expected, _ = eqx.filter_jit(loss.__wrapped__)(shared, x)
    assert aux is True
    _assert_same_output(grads, expected)
    shared = eqx.apply_updates(shared, grads)
    assert loss(shared, x)[1] is True


def test_an_identity_returning_a_static_object():
    sentinel = object()
    y = (jnp.array(1.0), sentinel)
    out = ec.filter_jit(lambda t: t, donate="none")(y)
    assert out[1] is sentinel and out[0] == 1.0


def test_sharding_is_kept():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    tree = ((jax.device_put(jnp.zeros(4), sharding), 4), "static")

    @ec.filter_jit
    def f(tree):
        arrays, rest = eqx.partition(tree, eqx.is_array)
        return eqx.filter_shard(
            eqx.combine(jtu.tree_map(jnp.sin, arrays), rest), sharding
        )

    out = f(tree)
    assert out[0][0].sharding == sharding and out[0][1] == 4 and out[1] == "static"


def test_equal_but_distinct_static_parts_share_a_trace():
    count = []

    @ec.filter_jit
    def f(x):
        count.append(None)
        return x.a

    f(Pair(jnp.ones(2), (1, "x"), tag=("t", 1)))
    f(Pair(jnp.ones(2), (1, "x"), tag=("t", 1)))  # other objects, equal statics
    assert len(count) == 1


def test_the_compiled_functions_do_not_hold_a_jitted_models_arrays(getkey):
    model = eqx.nn.Linear(2, 2, key=getkey())
    ec.filter_jit(model)(jnp.ones(2))
    weight = weakref.ref(model.weight)
    del model
    other = eqx.nn.Linear(2, 2, key=getkey())
    ec.filter_jit(other)(jnp.ones(2))  # (same class: its call replaces the kept trees)
    gc.collect()
    assert weight() is None


def test_equal_static_leaves_of_two_arguments_keep_their_own_values():
    theirs, ours, counts = _counted_pair()
    for args in [((0,), (False,)), ((False,), (0,)), ((1.0,), (True,))]:
        _assert_same_output(ours(*args), theirs(*args))
    assert counts["ours"] == counts["eqx"]


def test_wrappers_of_one_function_are_equal_and_each_binds_its_own_signature():
    # Callable objects of one type share compiled functions (as in Equinox); each
    # wrapper still binds arguments by its own object's signature.
    def f(x):
        return x + 1

    assert ec.filter_jit(f) == ec.filter_jit(f)
    assert ec.filter_jit(f) != ec.filter_jit(f, donate="all")
    one = ec.filter_jit(ft.partial(lambda a, x: a * x, 2.0))
    two = ec.filter_jit(ft.partial(lambda a, b, x=1.0: a * b * x, 2.0))
    x = jnp.ones(2)
    assert_trees_equal(one(x), 2.0 * x)
    assert_trees_equal(two(3.0, x=x), 6.0 * x)
    assert two(3.0) == 6.0  # (no array in: a static output, as in Equinox)
    with pytest.raises(TypeError):
        one(x, x)  # (the signature of `one`, not of `two`)


def test_a_model_the_caller_drops_is_freed_at_once(getkey):
    # Modules are kept weakly: neither the argument nor the output of the last call
    # outlives the caller's references (arrays included), without waiting for a call.
    @ec.filter_jit
    def f(model, x):
        return model, model(x)

    model = eqx.nn.Linear(2, 2, key=getkey())
    out, _ = f(model, jnp.ones(2))
    weights = weakref.ref(model.weight), weakref.ref(out.weight)
    assert f(out, jnp.ones(2))[1].shape == (2,)  # (`out` is recognised, still kept)
    del model, out
    assert [w() for w in weights] == [None, None]
