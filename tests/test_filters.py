import jax.numpy as jnp
import pytest

import eqx_collective as ec
from eqx_collective._filters import to_predicate


P = ec.ParamState(jnp.zeros(1), tag="enc")
H = ec.HiddenState(jnp.zeros(1))
PATH = ("layers", 0, "weight")


@pytest.mark.parametrize(
    "filter, obj, expected",
    [
        (ec.ParamState, P, True),
        (ec.ParamState, H, False),
        (ec.State, H, True),
        ("enc", P, True),
        ("enc", H, False),
        (lambda path, obj: path[0] == "layers", H, True),
        (lambda path, obj: path[0] == "other", H, False),
        ((ec.HiddenState, "enc"), P, True),
        ([ec.HiddenState], P, False),
        (True, H, True),
        (..., H, True),
        (None, H, False),
        (False, H, False),
        (ec.Not(ec.ParamState), H, True),
        (ec.Not(ec.ParamState), P, False),
        (ec.All(ec.ParamState, "enc"), P, True),
        (ec.All(ec.ParamState, "dec"), P, False),
        (ec.Any(ec.HiddenState, "enc"), P, True),
        (ec.Any(ec.HiddenState, "dec"), P, False),
        (ec.PathPrefix("layers.0"), H, True),
        (ec.PathPrefix(("layers", 1)), H, False),
        (ec.PathContains("weight"), H, True),
        (ec.PathContains(0), H, True),
        (ec.PathContains("bias"), H, False),
    ],
)
def test_filter_forms(filter, obj, expected):
    assert to_predicate(filter)(PATH, obj) is expected


def test_path_prefix_matches_whole_entries_only():
    assert not ec.PathPrefix("layers.1")(("layers", 10), H)
    assert ec.PathPrefix("layers.1")(("layers", 1), H)
    assert ec.PathPrefix("layers.1", "x")(("x", "y"), H)


def test_combinators_compare_and_print():
    assert ec.Not(ec.ParamState) == ec.Not(ec.ParamState)
    assert ec.Not(ec.ParamState) != ec.Not(ec.HiddenState)
    assert "PathPrefix" in repr(ec.PathPrefix("a.b"))


@pytest.mark.parametrize("bad", [3, 2.5, b"enc", object()])
def test_unsupported_filter_is_a_type_error(bad):
    with pytest.raises(TypeError, match="Unsupported filter"):
        to_predicate(bad)


def test_unsupported_filter_inside_combinators_fails_at_construction():
    with pytest.raises(TypeError, match="Unsupported filter"):
        ec.Not(3)
    with pytest.raises(TypeError, match="Unsupported filter"):
        to_predicate((ec.ParamState, 3))


def test_unsupported_filter_at_call_time():
    with pytest.raises(TypeError, match="Unsupported filter"):
        ec.states({"a": P}, 42)
    with pytest.raises(TypeError, match="Unsupported filter"):
        ec.init_all_states({"a": P}, node_to_exclude=4.5)


def test_path_filters_check_their_arguments():
    with pytest.raises(TypeError):
        ec.PathPrefix()
    with pytest.raises(TypeError):
        ec.PathContains(1.5)
