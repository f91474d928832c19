import dataclasses

import equinox as eqx
import jax.numpy as jnp
import pytest

import eqx_collective as ec


def test_subclasses_mirror_brainstate():
    assert issubclass(ec.ParamState, ec.LongTermState)
    assert issubclass(ec.HiddenState, ec.ShortTermState)
    assert issubclass(ec.NonBatchState, ec.ShortTermState)
    for cls in (ec.ShortTermState, ec.LongTermState):
        assert issubclass(cls, ec.State)
        assert issubclass(cls, eqx.Module)


def test_state_holds_any_pytree_and_tag():
    s = ec.ParamState({"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}, tag="encoder")
    assert s.tag == "encoder"
    assert s.value["w"].shape == (2, 3)
    assert not s.shared


def test_state_is_immutable():
    s = ec.HiddenState(jnp.zeros(3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.value = jnp.ones(3)


def test_bad_tag_is_a_type_error():
    with pytest.raises(TypeError, match="tag"):
        ec.State(jnp.zeros(1), tag=3)


def test_bad_shared_flag_is_a_type_error():
    with pytest.raises(TypeError, match="shared"):
        ec.State(jnp.zeros(1), shared="yes")


def test_is_shared():
    assert ec.is_shared(ec.NonBatchState(jnp.zeros(1)))
    assert ec.is_shared(ec.ParamState(jnp.zeros(1), shared=True))
    assert not ec.is_shared(ec.ParamState(jnp.zeros(1)))


def test_printing_abbreviates_arrays():
    s = ec.ParamState({"bias": jnp.zeros(16), "weight": jnp.zeros((24, 16))})
    assert repr(s) == "ParamState(value={'bias': f32[16], 'weight': f32[24,16]})"


def test_a_member_s_ranks_are_filled_in_from_the_value():
    value = {"w": jnp.ones((4, 3, 2)), "b": jnp.zeros((4, 2))}
    s = ec.ParamState(value, ensemble_shape=(4,))
    assert s.member_ranks == (1, 2)  # leaf order: b, w
    assert ec.ParamState(value).member_ranks is None  # a single model has no record
    nested = ec.HiddenState(jnp.zeros((2, 4, 5)), ensemble_shape=(2, 4))
    assert nested.member_ranks == (1,)
    with pytest.raises(ValueError, match="rank 1, which cannot carry them"):
        ec.HiddenState(jnp.zeros(3), ensemble_shape=(3, 4))


@pytest.mark.parametrize("ranks", [(1,), (-1,), [1], (1.0,)])
def test_bad_member_ranks_are_refused(ranks):
    shape = () if ranks == (1,) else (4,)  # ranks without an ensemble record too
    with pytest.raises(ValueError, match="member_ranks"):
        ec.HiddenState(jnp.zeros((4, 2)), ensemble_shape=shape, member_ranks=ranks)
