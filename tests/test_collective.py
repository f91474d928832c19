import dataclasses
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from helpers import assert_jit_matches_eager, assert_pure, assert_trees_equal
from hypothesis import given, strategies as st

import eqx_collective as ec
from eqx_collective.testing import module_trees, record_calls


# ---------------------------------------------------------------- reference order


def _postorder(node):
    """Children before parent, siblings in order: written independently of the
    library's traversal, over `TreeNode.children`."""
    out = []
    for child in node.children:
        out += _postorder(child)
    return out + [node]


def _expected_order(tree, method):
    undecorated, decorated = [], []
    for node in _postorder(tree):
        fn = getattr(type(node), method, None)
        if fn is None:
            continue
        level = getattr(fn, "call_order", None)
        if level is None:
            undecorated.append(node.name)
        else:
            decorated.append((level, node.name))
    decorated.sort(key=lambda t: t[0])  # stable: ties keep traversal order
    return [(method, n) for n in undecorated] + [(method, n) for _, n in decorated]


@given(module_trees(), st.sampled_from(["init_state", "reset_state"]))
def test_call_order_matches_the_reference(tree, method):
    with record_calls() as log:
        ec.call_all_fns(tree, method, key=jax.random.key(0), fn_if_not_exist="pass")
    assert log == _expected_order(tree, method)
    assert len(set(log)) == len(log)  # each method exactly once per node


@given(module_trees())
def test_init_and_reset_are_pure_jittable_and_leak_free(tree):
    key = jax.random.key(1)
    initialised = assert_pure(ec.init_all_states, tree, key=key)
    assert_jit_matches_eager(ec.init_all_states, tree, key=key)
    reset = assert_pure(ec.reset_all_states, initialised)
    assert_jit_matches_eager(ec.reset_all_states, initialised)
    # Only short-term states change; the structure never does.
    for path, state in ec.states(tree).items():
        if not isinstance(state, ec.ShortTermState):
            assert_trees_equal(ec.states(initialised)[path], state)
            assert_trees_equal(ec.states(reset)[path], state)


@given(module_trees())
def test_collect_is_pure_and_in_call_order(tree):
    results = assert_pure(
        ec.collect_all_fns,
        tree,
        "init_state",
        key=jax.random.key(0),
        fn_if_not_exist="pass",
    )
    assert [r.name for r in results.values()] == [
        n for _, n in _expected_order(tree, "init_state")
    ]
    for path, node in results.items():
        assert isinstance(node, ec.testing.TreeNode)
        assert path == () or isinstance(path, tuple)


@given(module_trees(max_depth=2))
def test_each_method_runs_once_under_jit(tree):
    # A fresh function each time, so that no earlier trace is reused from the cache.
    init = eqx.filter_jit(lambda tree, key: ec.init_all_states(tree, key=key))
    with record_calls() as log:
        init(tree, jax.random.key(0))
    assert len(log) == len(set(log)) == len(_expected_order(tree, "init_state"))


# ---------------------------------------------------------------- pure protocol


class Counter(eqx.Module):
    h: ec.HiddenState
    seen: tuple = eqx.field(static=True, default=())

    def init_state(self):
        return eqx.tree_at(lambda m: m.h.value, self, self.h.value + 1)


class Parent(eqx.Module):
    a: Counter
    b: Counter
    seen: tuple = eqx.field(static=True, default=())

    def init_state(self):
        # Records what it sees of its children when it runs.
        seen = (int(self.a.h.value[0]), int(self.b.h.value[0]))
        return dataclasses.replace(self, seen=seen)


class LateCounter(Counter):
    @ec.call_order(1)
    def init_state(self):
        return eqx.tree_at(lambda m: m.h.value, self, self.h.value + 10)


def test_parent_sees_its_updated_children():
    model = Parent(
        Counter(ec.HiddenState(jnp.zeros(1))), Counter(ec.HiddenState(jnp.zeros(1)))
    )
    out = ec.init_all_states(model)
    assert out.seen == (1, 1)
    assert model.a.h.value[0] == 0  # input unchanged


def test_decorated_children_run_after_undecorated_parents():
    model = Parent(
        Counter(ec.HiddenState(jnp.zeros(1))), LateCounter(ec.HiddenState(jnp.zeros(1)))
    )
    out = ec.init_all_states(model)
    assert out.seen == (1, 0)  # the level-1 child had not run yet
    assert out.b.h.value[0] == 10  # ...but it did run afterwards, and landed


def test_args_kwargs_and_single_non_tuple_argument():
    class Adder(eqx.Module):
        h: ec.HiddenState

        def add(self, amount, scale=1):
            return eqx.tree_at(lambda m: m.h.value, self, self.h.value + amount * scale)

    m = [Adder(ec.HiddenState(jnp.zeros(2))), Adder(ec.HiddenState(jnp.ones(2)))]
    out = ec.call_all_fns(m, "add", jnp.float32(2))
    assert jnp.array_equal(out[1].h.value, jnp.full(2, 3.0))
    out = ec.call_all_fns(m, "add", (jnp.float32(2),), {"scale": 3})
    assert jnp.array_equal(out[0].h.value, jnp.full(2, 6.0))


def test_node_to_exclude_skips_the_node_but_visits_its_children():
    model = Parent(
        Counter(ec.HiddenState(jnp.zeros(1))), Counter(ec.HiddenState(jnp.zeros(1)))
    )
    out = ec.init_all_states(model, node_to_exclude=Parent)
    assert out.seen == () and out.a.h.value[0] == 1
    out = ec.init_all_states(model, node_to_exclude=ec.PathPrefix("a"))
    assert out.seen == (0, 1) and out.a.h.value[0] == 0


# ---------------------------------------------------------------- keys


class Noise(eqx.Module):
    h: ec.HiddenState

    def init_state(self, *, key):
        return eqx.tree_at(lambda m: m.h.value, self, jax.random.normal(key, (4,)))


class MaybeNoise(eqx.Module):
    h: ec.HiddenState

    def init_state(self, *, key=None):
        if key is None:
            return self
        return eqx.tree_at(lambda m: m.h.value, self, jax.random.normal(key, (4,)))


def _noise():
    return Noise(ec.HiddenState(jnp.zeros(4)))


def test_each_node_gets_its_own_key(key):
    out = ec.init_all_states([_noise(), _noise()], key=key)
    assert not jnp.array_equal(out[0].h.value, out[1].h.value)


def test_keys_are_stable_when_nodes_are_added(key):
    small = ec.init_all_states({"a": _noise(), "c": _noise()}, key=key)
    big = ec.init_all_states({"a": _noise(), "b": _noise(), "c": _noise()}, key=key)
    assert jnp.array_equal(small["a"].h.value, big["a"].h.value)
    assert jnp.array_equal(small["c"].h.value, big["c"].h.value)


def test_keys_depend_on_the_operation_key(key):
    a = ec.init_all_states(_noise(), key=key)
    b = ec.init_all_states(_noise(), key=jax.random.key(99))
    assert not jnp.array_equal(a.h.value, b.h.value)


def test_optional_key_parameter_gets_none_when_no_key_is_given(key):
    m = MaybeNoise(ec.HiddenState(jnp.zeros(4)))
    assert ec.init_all_states(m) is m
    assert not jnp.array_equal(ec.init_all_states(m, key=key).h.value, jnp.zeros(4))


def test_legacy_uint32_keys_work():
    out = ec.init_all_states(_noise(), key=jax.random.PRNGKey(0))
    assert out.h.value.shape == (4,)


# ---------------------------------------------------------------- errors


class ReturnsNone(eqx.Module):
    def init_state(self):
        return None


class ReturnsOther(eqx.Module):
    def init_state(self):
        return 3


class Raises(eqx.Module):
    def init_state(self):
        raise RuntimeError("boom")


def test_non_string_fn_name():
    with pytest.raises(TypeError, match="fn_name"):
        ec.call_all_fns(_noise(), 3)


def test_non_mapping_kwargs():
    with pytest.raises(TypeError, match="kwargs"):
        ec.call_all_fns(_noise(), "init_state", (), [("a", 1)])


def test_key_inside_kwargs_is_refused(key):
    with pytest.raises(ValueError, match="key="):
        ec.call_all_fns(_noise(), "init_state", (), {"key": key})


def test_bad_fn_if_not_exist_is_checked_eagerly(key):
    # Every node has the method, and it would succeed: still an error.
    with pytest.raises(ValueError, match="fn_if_not_exist"):
        ec.call_all_fns(_noise(), "init_state", key=key, fn_if_not_exist="ignore")


def test_missing_method_raise_warn_pass(key):
    model = [_noise(), eqx.nn.Identity()]
    with pytest.raises(AttributeError, match=r"'1' \(Identity\)"):
        ec.call_all_fns(model, "init_state", key=key)
    with pytest.warns(UserWarning, match=r"'1' \(Identity\)"):
        out = ec.call_all_fns(model, "init_state", key=key, fn_if_not_exist="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out2 = ec.call_all_fns(model, "init_state", key=key, fn_if_not_exist="pass")
    assert_trees_equal(out, out2)


@pytest.mark.parametrize("level", [-1, 10, 100])
def test_out_of_range_call_order(level):
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        ec.call_order(level)
    assert (
        ec.call_order(level, check_order_boundary=False)(lambda: 0).call_order == level
    )


@pytest.mark.parametrize("level", [1.5, "1", True])
def test_non_integer_call_order(level):
    with pytest.raises(TypeError, match="integer"):
        ec.call_order(level)


@pytest.mark.parametrize("cls, got", [(ReturnsNone, "None"), (ReturnsOther, "a int")])
def test_method_must_return_the_updated_module(cls, got):
    with pytest.raises(TypeError, match=rf"path 'x' \({cls.__name__}\) returned {got}"):
        ec.init_all_states({"x": cls()})


def test_missing_key_names_the_path():
    with pytest.raises(
        TypeError, match=r"path 'layers.1' \(Noise\) needs a random `key`"
    ):
        ec.init_all_states({"layers": [eqx.nn.Identity(), _noise()]})


def test_errors_raised_by_methods_name_the_path():
    with pytest.raises(RuntimeError, match="boom") as info:
        ec.init_all_states({"deep": [Raises()]})
    assert any("'deep.0' (Raises)" in note for note in info.value.__notes__)


def test_errors_change_nothing():
    model = {"a": _noise(), "b": ReturnsNone()}
    before = jax.tree_util.tree_leaves(model)
    with pytest.raises(TypeError):
        ec.init_all_states(model, key=jax.random.key(0))
    assert all(
        x is y for x, y in zip(jax.tree_util.tree_leaves(model), before, strict=True)
    )


def test_warnings_point_at_the_callers_line(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(2, 2, key=k), key, 2)
    single = ec.nn.Sequential(ec.nn.Linear(2, 2, key=key), eqx.nn.Identity())
    for call in (
        lambda: ec.call_all_fns(single, "nope", fn_if_not_exist="warn"),
        lambda: ec.vmap_call_all_fns(ens, "nope", fn_if_not_exist="warn"),
    ):
        with pytest.warns(UserWarning, match="no method `nope`") as record:
            call()
        assert record[0].filename == __file__, record[0].filename


def test_a_key_of_the_wrong_type_names_key_and_the_operation(key):
    model = ec.nn.Linear(2, 2, key=key)
    for op in (ec.init_all_states, ec.reset_all_states, ec.vmap_init_all_states):
        with pytest.raises(TypeError, match=f"`{op.__name__}` takes `key=` a JAX"):
            op(model, key=0)
