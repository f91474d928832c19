"""brainstate's own collective-operations test suite
(`brainstate/nn/_collective_ops_test.py`, brainstate 0.5.4, 64 tests), ported to the pure
call protocol: one test here per test there, named `test_<brainstate class>_<test>`.

brainstate's modules mutate themselves; here each collectively called method returns
the updated module and each operation returns the updated tree (the input is left
untouched). brainstate's intent is kept: what each test checks there is checked here.
Where this library differs on purpose, the test asserts our behaviour and says why;
each such difference is in `docs/migration.md`, section "Differences found by
brainstate's own tests".
"""

import dataclasses
import warnings
from typing import Any

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_collective as ec
from eqx_collective import nn
from eqx_collective._collective import MAX_ORDER
from eqx_collective.testing import assert_trees_equal


SMALL_BATCH = 4  # brainstate's `_testing.SMALL_BATCH`
KEY = jax.random.key(0)
replace = dataclasses.replace


# --- Modules of brainstate's suite, pure -------------------------------------------


class SimpleTestModule(eqx.Module):
    """Records its `init_state` arguments and creates a state."""

    state_initialized: bool = False
    init_args: Any = None
    init_kwargs: Any = None
    state: ec.State | None = None

    def init_state(self, *args, **kwargs):
        return replace(
            self,
            state_initialized=True,
            init_args=args,
            init_kwargs=kwargs,
            state=ec.State(jnp.zeros(5)),
        )


class NestedModule(eqx.Module):
    submodule1: SimpleTestModule = SimpleTestModule()
    submodule2: SimpleTestModule = SimpleTestModule()
    state: ec.State | None = None

    def init_state(self):
        return replace(self, state=ec.State(jnp.zeros(3)))


class ResetTestModule(eqx.Module):
    state_initialized: bool = False
    state_reset: bool = False
    reset_args: Any = None
    reset_kwargs: Any = None
    state: ec.State | None = None

    def init_state(self, *args, **kwargs):
        return replace(
            self, state_initialized=True, state_reset=False, state=ec.State(jnp.ones(5))
        )

    def reset_state(self, *args, **kwargs):
        new = replace(self, state_reset=True, reset_args=args, reset_kwargs=kwargs)
        if self.state is not None:
            new = eqx.tree_at(lambda m: m.state.value, new, jnp.zeros(5))
        return new


class NestedResetModule(eqx.Module):
    submodule1: ResetTestModule = ResetTestModule()
    submodule2: ResetTestModule = ResetTestModule()
    state: ec.State | None = None

    def init_state(self):
        return replace(self, state=ec.State(jnp.ones(3)))

    def reset_state(self):
        return eqx.tree_at(lambda m: m.state.value, self, jnp.zeros(3))


class CustomMethodModule(eqx.Module):
    method_called: bool = False
    call_count: int = 0
    received_args: Any = None
    received_kwargs: Any = None

    def custom_method(self, *args, **kwargs):
        return replace(
            self,
            method_called=True,
            call_count=self.call_count + 1,
            received_args=args,
            received_kwargs=kwargs,
        )

    def another_method(self):
        return replace(self, call_count=self.call_count + 10)


class NestedCallModule(eqx.Module):
    child1: CustomMethodModule = CustomMethodModule()
    child2: CustomMethodModule = CustomMethodModule()
    method_called: bool = False

    def custom_method(self, *args, **kwargs):
        return replace(self, method_called=True)


def ordered_call_module(tracker: list):
    """brainstate's `OrderedCallModule(execution_tracker)`: the tracker is closed over
    (a module field is a pytree node, not a place to append to)."""

    class OrderedCallModule(eqx.Module):
        @ec.call_order(0)
        def ordered_method_0(self):
            tracker.append("order_0")
            return self

        @ec.call_order(1)
        def ordered_method_1(self):
            tracker.append("order_1")
            return self

        @ec.call_order(2)
        def ordered_method_2(self):
            tracker.append("order_2")
            return self

        def unordered_method(self):
            tracker.append("unordered")
            return self

    return OrderedCallModule()


class EnsembleModule(eqx.Module):
    """brainstate's global random state becomes an explicit `key`."""

    w: ec.ParamState | None = None

    def init_state(self, k, *, key):
        return replace(self, w=ec.ParamState(jax.random.normal(key, (k,))))

    def reset_state(self):
        return eqx.tree_at(lambda m: m.w.value, self, jnp.zeros_like(self.w.value))


def _ensemble(k=3, seed=0):
    return ec.vmap_init_all_states(
        EnsembleModule(), axis_size=SMALL_BATCH, k=k, key=jax.random.key(seed)
    )


# --- Test_init_all_states ------------------------------------------------------------


def test_init_all_states_basic_initialization():
    module = SimpleTestModule()
    new = ec.init_all_states(module)
    assert new.state_initialized and new.state.value.shape == (5,)
    assert not module.state_initialized  # pure: the input is unchanged


def test_init_all_states_with_positional_args():
    new = ec.init_all_states(SimpleTestModule(), 1, 2, 3)
    assert new.state_initialized and new.init_args == (1, 2, 3)


def test_init_all_states_with_keyword_args():
    new = ec.init_all_states(SimpleTestModule(), batch_size=10, seq_len=20)
    assert new.state_initialized
    assert new.init_kwargs == {"batch_size": 10, "seq_len": 20}


def test_init_all_states_with_mixed_args():
    new = ec.init_all_states(SimpleTestModule(), 42, batch_size=10)
    assert new.init_args == (42,) and new.init_kwargs == {"batch_size": 10}


def test_init_all_states_nested_modules():
    old = NestedModule()
    new = ec.init_all_states(old)
    assert new.submodule1.state_initialized and new.submodule2.state_initialized
    assert old.state is None and jnp.array_equal(new.state.value, jnp.zeros(3))


def test_init_all_states_with_gru_cell():
    gru = ec.init_all_states(nn.GRUCell(1, 2, key=KEY), batch_size=10)
    assert ("h",) in ec.states(gru, ec.HiddenState)  # (created by `init_state`)
    assert gru.h.value.shape == (10, 2)


def test_init_all_states_sequential_module():
    old = nn.Sequential(nn.Linear(10, 20, key=KEY), nn.Dropout(0.5))
    seq = ec.init_all_states(old)
    # Nothing of it has state to create: every parameter is kept as it was.
    assert list(ec.states(seq)) == [("layers", 0, "weight")]
    assert_trees_equal(ec.leaf_values(seq), ec.leaf_values(old))


def test_init_all_states_node_to_exclude():
    new = ec.init_all_states(NestedModule(), node_to_exclude=NestedModule)
    assert new.state is None  # the parent is excluded ...
    assert new.submodule1.state_initialized  # ... its children are not
    assert new.submodule2.state_initialized


def test_init_all_states_with_call_order():
    execution_order = []

    class ChildModule(eqx.Module):
        @ec.call_order(0)
        def init_state(self):
            execution_order.append("child")
            return self

    class OrderedModule(eqx.Module):
        # brainstate's child holds a reference to its parent; a pytree cannot.
        child_module: ChildModule = ChildModule()

        @ec.call_order(1)
        def init_state(self):
            execution_order.append("parent")
            return self

    ec.init_all_states(OrderedModule())
    assert execution_order == ["child", "parent"]


# --- Test_reset_all_states -----------------------------------------------------------


def test_reset_all_states_basic_reset():
    module = ec.init_all_states(ResetTestModule())
    assert module.state_initialized and not module.state_reset
    assert jnp.allclose(module.state.value, jnp.ones(5))
    module = ec.reset_all_states(module)
    assert module.state_reset
    assert jnp.allclose(module.state.value, jnp.zeros(5))


def test_reset_all_states_with_positional_args():
    module = ec.reset_all_states(ec.init_all_states(ResetTestModule()), 1, 2, 3)
    assert module.state_reset and module.reset_args == (1, 2, 3)


def test_reset_all_states_with_keyword_args():
    module = ec.init_all_states(ResetTestModule())
    module = ec.reset_all_states(module, batch_size=10, seq_len=20)
    assert module.state_reset
    assert module.reset_kwargs == {"batch_size": 10, "seq_len": 20}


def test_reset_all_states_with_mixed_args():
    module = ec.init_all_states(ResetTestModule())
    module = ec.reset_all_states(module, 42, batch_size=10)
    assert module.reset_args == (42,) and module.reset_kwargs == {"batch_size": 10}


def test_reset_all_states_nested_modules():
    module = ec.init_all_states(NestedResetModule())
    assert jnp.allclose(module.state.value, jnp.ones(3))
    assert jnp.allclose(module.submodule1.state.value, jnp.ones(5))
    assert jnp.allclose(module.submodule2.state.value, jnp.ones(5))
    module = ec.reset_all_states(module)
    assert jnp.allclose(module.state.value, jnp.zeros(3))
    assert module.submodule1.state_reset and module.submodule2.state_reset
    assert jnp.allclose(module.submodule1.state.value, jnp.zeros(5))
    assert jnp.allclose(module.submodule2.state.value, jnp.zeros(5))


def test_reset_all_states_with_gru_cell():
    gru = ec.init_all_states(nn.GRUCell(5, 10, key=KEY), batch_size=8)
    h, gru = gru(jnp.ones((8, 5)))  # move the state away from its initial value
    assert not jnp.allclose(gru.h.value, 0.0)
    gru = ec.reset_all_states(gru, batch_size=8)
    for path, state in ec.states(gru, ec.HiddenState).items():
        assert "h" in path
        assert jnp.allclose(state.value, jnp.zeros_like(state.value))


def test_reset_all_states_sequential_reset():
    class StatefulLayer(eqx.Module):
        reset_called: bool = False
        state: ec.State | None = None

        def init_state(self):
            return replace(self, state=ec.State(jnp.ones(5)))

        def reset_state(self):
            return replace(self, reset_called=True, state=ec.State(jnp.zeros(5)))

    seq = nn.Sequential(StatefulLayer(), StatefulLayer())
    seq = ec.reset_all_states(ec.init_all_states(seq))
    assert seq.layers[0].reset_called and seq.layers[1].reset_called


def test_reset_all_states_node_to_exclude():
    module = ec.init_all_states(NestedResetModule())
    module = ec.reset_all_states(module, node_to_exclude=NestedResetModule)
    assert jnp.allclose(module.state.value, jnp.ones(3))  # not reset
    assert module.submodule1.state_reset and module.submodule2.state_reset


def test_reset_all_states_with_call_order():
    execution_tracker = []

    class ResetOrderedModule(eqx.Module):
        order_level: int
        state: ec.State | None = None

        def init_state(self):
            return replace(self, state=ec.State(jnp.ones(3)))

        @ec.call_order(0)
        def reset_state(self):
            execution_tracker.append(f"order_{self.order_level}")
            return eqx.tree_at(lambda m: m.state.value, self, jnp.zeros(3))

    class OrderedParent(eqx.Module):
        child1: ResetOrderedModule = ResetOrderedModule(1)
        child2: ResetOrderedModule = ResetOrderedModule(2)

        def init_state(self):
            return self

    parent = ec.init_all_states(OrderedParent())
    execution_tracker.clear()
    ec.reset_all_states(parent)
    assert execution_tracker == ["order_1", "order_2"]


def test_reset_all_states_multiple_resets():
    module = ec.init_all_states(ResetTestModule())
    for _ in range(3):
        module = ec.reset_all_states(module)
        assert module.state_reset
        assert jnp.allclose(module.state.value, jnp.zeros(5))


def test_reset_all_states_reset_without_init():
    gru = ec.init_all_states(nn.GRUCell(5, 10, key=KEY), batch_size=8)
    _, gru = gru(jnp.ones((8, 5)))  # a step moves the hidden state away from zero
    assert not jnp.array_equal(gru.h.value, jnp.zeros((8, 10)))
    gru = ec.reset_all_states(gru, batch_size=8)
    assert jnp.array_equal(gru.h.value, jnp.zeros((8, 10)))


# --- Test_call_order -----------------------------------------------------------------


def test_call_order_basic_call_order():
    class TestModule(eqx.Module):
        @ec.call_order(0)
        def method(self):
            return self

    module = TestModule()
    assert hasattr(module.method, "call_order")
    assert module.method.call_order == 0
    assert module.method() is module  # still a working bound method


def test_call_order_different_order_levels():
    for level in [0, 1, 5, 9]:

        class TestModule(eqx.Module):
            @ec.call_order(level)
            def method(self):
                return self

        assert TestModule().method.call_order == level
        assert TestModule.method.call_order == level


def test_call_order_order_boundary_validation():
    for level in range(MAX_ORDER):

        @ec.call_order(level)
        def valid_method():
            pass

        assert valid_method.call_order == level
    with pytest.raises(ValueError, match="must be an integer"):

        @ec.call_order(-1)
        def invalid_method1():
            pass

    with pytest.raises(ValueError, match="must be an integer"):

        @ec.call_order(MAX_ORDER)
        def invalid_method2():
            pass


def test_call_order_disable_boundary_check():
    @ec.call_order(100, check_order_boundary=False)
    def method():
        pass

    assert method.call_order == 100

    @ec.call_order(-5, check_order_boundary=False)
    def method2():
        pass

    assert method2.call_order == -5


def test_call_order_order_preserved_on_methods():
    module = ordered_call_module([])
    assert module.ordered_method_0.call_order == 0
    assert module.ordered_method_1.call_order == 1
    assert module.ordered_method_2.call_order == 2
    assert not hasattr(module.unordered_method, "call_order")


def test_call_order_multiple_decorators():
    class MultiMethodModule(eqx.Module):
        @ec.call_order(2)
        def method_a(self):
            return self

        @ec.call_order(0)
        def method_b(self):
            return self

        @ec.call_order(1)
        def method_c(self):
            return self

    module = MultiMethodModule()
    assert module.method_a.call_order == 2
    assert module.method_b.call_order == 0
    assert module.method_c.call_order == 1


# --- Test_call_all_fns ---------------------------------------------------------------


def test_call_all_fns_basic_function_call():
    module = CustomMethodModule()
    assert not module.method_called
    new = ec.call_all_fns(module, "custom_method")
    assert new.method_called and new.call_count == 1


def test_call_all_fns_with_positional_args():
    new = ec.call_all_fns(CustomMethodModule(), "custom_method", (1, 2, 3))
    assert new.method_called and new.received_args == (1, 2, 3)


def test_call_all_fns_with_keyword_args():
    kwargs = {"foo": "bar", "baz": 42}
    new = ec.call_all_fns(CustomMethodModule(), "custom_method", kwargs=kwargs)
    assert new.method_called and new.received_kwargs == kwargs


def test_call_all_fns_with_mixed_args():
    # Differs on purpose: `key` is the operation's random key, split per node, so a
    # method's own keyword named `key` cannot go through `kwargs`.
    with pytest.raises(ValueError, match="pass the random key as `key=...`"):
        ec.call_all_fns(
            CustomMethodModule(), "custom_method", args=(1, 2), kwargs={"key": "value"}
        )
    # brainstate's intent, positional and keyword arguments together, holds:
    new = ec.call_all_fns(
        CustomMethodModule(), "custom_method", args=(1, 2), kwargs={"tag": "value"}
    )
    assert new.method_called
    assert new.received_args == (1, 2) and new.received_kwargs == {"tag": "value"}


def test_call_all_fns_nested_modules():
    new = ec.call_all_fns(NestedCallModule(), "custom_method")
    assert new.method_called and new.child1.method_called and new.child2.method_called


def test_call_all_fns_call_order_respected():
    execution_tracker = []

    class ParentModule(eqx.Module):
        child1: Any = ordered_call_module(execution_tracker)
        child2: Any = ordered_call_module(execution_tracker)

    ec.call_all_fns(ParentModule(), "ordered_method_1", fn_if_not_exist="pass")
    assert execution_tracker.count("order_1") == 2


def test_call_all_fns_execution_order_with_mixed_decorators():
    execution_tracker = []

    class MixedModule(eqx.Module):
        ordered: Any = ordered_call_module(execution_tracker)

        def unordered_method(self):
            execution_tracker.append("parent_unordered")
            return self

    ec.call_all_fns(MixedModule(), "unordered_method")
    assert execution_tracker == ["unordered", "parent_unordered"]  # children first


def test_call_all_fns_node_to_exclude():
    new = ec.call_all_fns(
        NestedCallModule(), "custom_method", node_to_exclude=NestedCallModule
    )
    assert not new.method_called
    assert new.child1.method_called and new.child2.method_called


def test_call_all_fns_fn_if_not_exist_raise():
    with pytest.raises(AttributeError, match="no method `nonexistent_method`"):
        ec.call_all_fns(
            CustomMethodModule(), "nonexistent_method", fn_if_not_exist="raise"
        )


def test_call_all_fns_fn_if_not_exist_pass():
    module = CustomMethodModule()
    assert ec.call_all_fns(module, "nonexistent_method", fn_if_not_exist="pass") == (
        module
    )


def test_call_all_fns_fn_if_not_exist_none():
    # Differs on purpose: brainstate's undocumented alias 'none' of 'pass' is refused,
    # like any value outside 'raise' | 'warn' | 'pass'; 'pass' does what it did.
    module = CustomMethodModule()
    with pytest.raises(ValueError, match="must be one of 'raise', 'warn', 'pass'"):
        ec.call_all_fns(module, "nonexistent_method", fn_if_not_exist="none")
    assert ec.call_all_fns(module, "nonexistent_method", fn_if_not_exist="pass") == (
        module
    )


def test_call_all_fns_fn_if_not_exist_warn():
    with pytest.warns(UserWarning, match="no method `nonexistent_method`"):
        ec.call_all_fns(
            CustomMethodModule(), "nonexistent_method", fn_if_not_exist="warn"
        )


def test_call_all_fns_invalid_fn_name_type():
    with pytest.raises(TypeError, match="`fn_name` as a string"):
        ec.call_all_fns(CustomMethodModule(), 123)


def test_call_all_fns_invalid_kwargs_type():
    with pytest.raises(TypeError, match="`kwargs` as a mapping"):
        ec.call_all_fns(CustomMethodModule(), "custom_method", kwargs=[1, 2, 3])


@pytest.mark.parametrize("fn_if_not_exist", ["raise", "warn", "pass"])
def test_call_all_fns_non_callable_attribute(fn_if_not_exist):
    class ModuleWithAttribute(eqx.Module):
        my_attr: str = "not callable"

    class WithDefault(eqx.Module):
        child: ModuleWithAttribute = ModuleWithAttribute()

    for module, where in [
        (ModuleWithAttribute(), "<root>"),
        (WithDefault(), "'child'"),
    ]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning, an error
            with pytest.raises(TypeError, match=f"path {where} .* not a method"):
                ec.call_all_fns(module, "my_attr", fn_if_not_exist=fn_if_not_exist)


def test_call_all_fns_with_gru_cell():
    # Every layer of `eqx_collective.nn` answers `init_state`, so no 'pass' is needed.
    gru = ec.call_all_fns(
        nn.GRUCell(5, 10, key=KEY), "init_state", kwargs={"batch_size": 8}
    )
    assert ("h",) in ec.states(gru, ec.HiddenState)  # (created by `init_state`)
    assert gru.h.value.shape == (8, 10)


def test_call_all_fns_multiple_calls_same_function():
    module = CustomMethodModule()
    for _ in range(5):
        module = ec.call_all_fns(module, "custom_method")
    assert module.call_count == 5


def test_call_all_fns_single_non_tuple_arg():
    new = ec.call_all_fns(CustomMethodModule(), "custom_method", args=42)
    assert new.received_args == (42,)


def test_call_all_fns_sequential_module():
    seq = nn.Sequential(CustomMethodModule(), CustomMethodModule())
    seq = ec.call_all_fns(seq, "custom_method", fn_if_not_exist="pass")
    assert seq.layers[0].method_called and seq.layers[1].method_called


# --- TestCallAllFnsInvalidPolicy -----------------------------------------------------


def test_call_all_fns_invalid_policy_raises_valueerror():
    class NoMethod(eqx.Module):
        pass

    with pytest.raises(ValueError):
        ec.call_all_fns(NoMethod(), "missing", fn_if_not_exist="bogus")


# --- TestVmapCallAllFns --------------------------------------------------------------
# Differs on purpose: `vmap_call_all_fns` works on an existing stacked ensemble (built
# with `vmap_init_all_states(model, axis_size=...)`, `make_ensemble` or `stack`); it does
# not turn one model into an ensemble, as brainstate's does.


def test_vmap_call_all_fns_call_completes_and_runs_body():
    with pytest.raises(ValueError, match="not a stacked ensemble"):
        ec.vmap_call_all_fns(
            EnsembleModule(), "init_state", axis_size=SMALL_BATCH, kwargs={"k": 3}
        )
    ensemble = _ensemble()
    returned = ec.vmap_call_all_fns(
        ensemble, "init_state", axis_size=SMALL_BATCH, kwargs={"k": 4}, key=KEY
    )
    assert type(returned) is EnsembleModule
    assert ensemble.w.value.shape == (SMALL_BATCH, 3)
    assert returned.w.value.shape == (SMALL_BATCH, 4)  # the body ran in every member


def test_vmap_call_all_fns_batched_init_creates_leading_axis():
    ensemble = ec.vmap_call_all_fns(_ensemble(), "init_state", kwargs={"k": 3}, key=KEY)
    assert ensemble.w.value.shape == (SMALL_BATCH, 3)


def test_vmap_call_all_fns_batched_init_distinct_per_lane():
    ensemble = ec.vmap_call_all_fns(
        _ensemble(k=4), "init_state", kwargs={"k": 4}, key=jax.random.key(1)
    )
    assert not jnp.allclose(ensemble.w.value[0], ensemble.w.value[1])


def test_vmap_call_all_fns_positional_single_arg_wrapped():
    class Recorder(eqx.Module):
        v: ec.ParamState = ec.ParamState(jnp.asarray(0.0))

        def init_state(self, value):
            return replace(self, v=ec.ParamState(jnp.asarray(float(value))))

    ensemble = ec.vmap_init_all_states(Recorder(), 1.0, axis_size=SMALL_BATCH)
    ensemble = ec.vmap_call_all_fns(ensemble, "init_state", args=2.0)
    assert ensemble.v.value.shape == (SMALL_BATCH,)
    assert jnp.all(ensemble.v.value == 2.0)


def test_vmap_call_all_fns_single_non_tuple_arg_wrapped():
    recorder = {}

    class StatelessRecorder(eqx.Module):
        w: ec.ParamState = ec.ParamState(jnp.zeros(2))

        def note(self, value):
            recorder["value"] = value
            return self

    ensemble = ec.vmap_init_all_states(StatelessRecorder(), axis_size=SMALL_BATCH)
    returned = ec.vmap_call_all_fns(ensemble, "note", args=7, axis_size=SMALL_BATCH)
    assert type(returned) is StatelessRecorder
    assert returned.w.value.shape == (SMALL_BATCH, 2)
    assert recorder["value"] == 7


def test_vmap_call_all_fns_axis_size_zero_raises():
    with pytest.raises(ValueError, match="positive integer"):
        ec.vmap_call_all_fns(_ensemble(), "reset_state", axis_size=0)


def test_vmap_call_all_fns_axis_size_none_raises():
    # With `axis_size=None` the size is the ensemble's own; a model that is no ensemble
    # (brainstate's case: nothing to infer the size from) is a `ValueError`.
    with pytest.raises(ValueError, match="not a stacked ensemble"):
        ec.vmap_call_all_fns(EnsembleModule(), "init_state", axis_size=None)
    assert ec.vmap_call_all_fns(_ensemble(), "reset_state").w.value.shape == (
        SMALL_BATCH,
        3,
    )


def test_vmap_call_all_fns_kwargs_not_mapping_raises():
    with pytest.raises(TypeError):
        ec.vmap_call_all_fns(_ensemble(), "init_state", axis_size=4, kwargs=[1, 2, 3])


# --- TestVmapInitAllStates -----------------------------------------------------------


def test_vmap_init_all_states_creates_batched_states():
    assert _ensemble(k=3).w.value.shape == (SMALL_BATCH, 3)


def test_vmap_init_all_states_with_state_to_exclude():
    class TwoStates(eqx.Module):
        w: ec.ParamState | None = None
        buf: ec.ShortTermState | None = None

        def init_state(self, k, *, key):
            return replace(
                self,
                w=ec.ParamState(jax.random.normal(key, (k,))),
                buf=ec.ShortTermState(jnp.zeros(k)),
            )

    module = ec.vmap_init_all_states(
        TwoStates(),
        axis_size=SMALL_BATCH,
        k=3,
        key=KEY,
        state_to_exclude=ec.ShortTermState,
    )
    assert module.w.value.shape == (SMALL_BATCH, 3)
    assert module.buf.value.shape == (3,)


# --- TestVmapResetAllStates ----------------------------------------------------------


def test_vmap_reset_all_states_reset_zeroes_batched_state():
    module = ec.vmap_reset_all_states(_ensemble(k=3), axis_size=SMALL_BATCH)
    assert module.w.value.shape == (SMALL_BATCH, 3)
    assert jnp.allclose(module.w.value, 0.0)


# --- TestAssignStateValues -----------------------------------------------------------


class Simple(eqx.Module):
    w: ec.ParamState | None = None
    b: ec.ParamState | None = None

    def init_state(self):
        return replace(
            self, w=ec.ParamState(jnp.ones(3)), b=ec.ParamState(jnp.zeros(2))
        )


def _make_net():
    return ec.init_all_states(Simple())


def _snapshot(net):
    return {path: st.value for path, st in ec.states(net).items()}


def test_assign_state_values_roundtrip_no_mismatch():
    net = _make_net()
    _, unexpected, missing = ec.assign_state_values(net, _snapshot(net))
    assert unexpected == [] and missing == []


def test_assign_state_values_unexpected_key_reported():
    net = _make_net()
    snapshot = _snapshot(net)
    snapshot[("not", "real")] = jnp.zeros(3)
    _, unexpected, missing = ec.assign_state_values(net, snapshot)
    assert ("not", "real") in unexpected and missing == []


def test_assign_state_values_missing_keys_reported_and_value_assigned():
    net = _make_net()
    net, unexpected, missing = ec.assign_state_values(net, {("w",): jnp.ones(3) * 9.0})
    assert unexpected == [] and ("b",) in missing
    np.testing.assert_allclose(ec.states(net)[("w",)].value, jnp.ones(3) * 9.0)


def test_assign_state_values_multiple_dicts_merge_last_wins():
    net, _, _ = ec.assign_state_values(
        _make_net(), {("w",): jnp.ones(3) * 2.0}, {("w",): jnp.ones(3) * 7.0}
    )
    np.testing.assert_allclose(ec.states(net)[("w",)].value, jnp.ones(3) * 7.0)


def test_assign_state_values_assign_dict_valued_state():
    class DictState(eqx.Module):
        d: ec.ParamState | None = None

        def init_state(self):
            return replace(self, d=ec.ParamState({"a": jnp.ones(2), "b": jnp.zeros(3)}))

    net = ec.init_all_states(DictState())
    value = {"a": jnp.ones(2) * 5.0, "b": jnp.ones(3) * 2.0}
    net, unexpected, missing = ec.assign_state_values(net, {("d",): value})
    assert unexpected == [] and missing == []
    np.testing.assert_allclose(ec.states(net)[("d",)].value["a"], jnp.ones(2) * 5.0)
    np.testing.assert_allclose(ec.states(net)[("d",)].value["b"], jnp.ones(3) * 2.0)


def test_assign_state_values_assign_quantity_valued_state():
    class QtyState(eqx.Module):
        v: ec.ParamState | None = None

        def init_state(self):
            return replace(self, v=ec.ParamState(jnp.ones(3) * u.mV))

    net = ec.init_all_states(QtyState())
    net, unexpected, missing = ec.assign_state_values(
        net, {("v",): jnp.ones(3) * 7.0 * u.mV}
    )
    assert (unexpected, missing) == ([], [])
    restored = ec.states(net)[("v",)].value
    assert u.get_unit(restored) == u.mV
    np.testing.assert_allclose(u.get_mantissa(restored), jnp.ones(3) * 7.0)


def test_assign_state_values_assign_accepts_dotted_string_keys():
    net, unexpected, missing = ec.assign_state_values(
        _make_net(), {"w": jnp.ones(3) * 3.0, "b": jnp.ones(2) * 4.0}
    )
    assert unexpected == [] and missing == []
    np.testing.assert_allclose(ec.states(net)[("w",)].value, jnp.ones(3) * 3.0)
    np.testing.assert_allclose(ec.states(net)[("b",)].value, jnp.ones(2) * 4.0)
