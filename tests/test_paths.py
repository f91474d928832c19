import os
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

import eqx_collective as ec
from eqx_collective._paths import path_hash


def test_as_path_forms():
    assert ec.as_path("layers.0.weight") == ("layers", 0, "weight")
    assert ec.as_path(("layers", 0, "weight")) == ("layers", 0, "weight")
    assert ec.as_path(["a", 1]) == ("a", 1)
    assert ec.as_path("") == ()


@pytest.mark.parametrize("bad", [3, None, ("a", 1.5), ("a", None), ("a", True)])
def test_as_path_rejects_bad_input(bad):
    with pytest.raises(TypeError, match="path"):
        ec.as_path(bad)


paths = st.lists(
    st.one_of(st.integers(0, 50), st.text("abcxyz_", min_size=1, max_size=5)),
    max_size=5,
).map(tuple)


@given(paths)
def test_dotted_round_trip(path):
    assert ec.as_path(ec.path_str(path)) == path


@given(paths, paths)
def test_path_hash_is_a_31_bit_function_of_the_path(a, b):
    assert 0 <= path_hash(a) < 2**31
    assert path_hash(a) == path_hash(tuple(a))
    if a != b:  # a collision here is astronomically unlikely for such short inputs
        assert path_hash(a) != path_hash(b)


def test_path_hash_distinguishes_int_and_str_entries():
    assert path_hash(("layers", 0)) != path_hash(("layers", "0"))


def test_path_hash_is_stable_across_processes():
    code = "from eqx_collective._paths import path_hash; print(path_hash(('layers', 3, 'w')))"
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        outs.add(int(out.stdout))
    assert outs == {path_hash(("layers", 3, "w"))}


def test_equal_structures_with_keys_of_other_types_keep_their_own_paths():
    # `jax.tree_util` treedefs compare dict keys with `==`: `{False: x} == {0: x}`.
    import brainunit as u
    import jax.numpy as jnp

    from eqx_collective._paths import flatten_value

    x = u.Quantity(jnp.ones(2), unit=u.mV)
    (((key,),),) = [flatten_value({False: x})[2]]
    assert key is False
    (((key,),),) = [flatten_value({0: x})[2]]
    assert key == 0 and type(key) is int  # (`False == 0`: the type tells)
    assert flatten_value({1.5: x, 2: [x]})[2] == ((1.5,), (2, 0))


def test_the_fast_path_knows_jax_s_array_type():
    # `ARRAY_TYPES` is read from `jax.Array`'s subclasses at import (no array made):
    # the arrays JAX makes take the hot loops' fast path; tracers never do.
    import jax
    import jax.numpy as jnp

    from eqx_collective._paths import ARRAY_TYPES, is_concrete_array

    assert type(jnp.zeros(2)) in ARRAY_TYPES and is_concrete_array(jnp.zeros(2))
    seen = []
    jax.jit(lambda x: seen.append(type(x) in ARRAY_TYPES) or x)(jnp.zeros(2))
    assert seen == [False]  # a tracer
    assert not any(issubclass(t, jax.core.Tracer) for t in ARRAY_TYPES)
