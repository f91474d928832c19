"""Assertions over stateful models, with failure messages that name the path."""

import copy
from collections.abc import Callable
from typing import Any

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from .._checks import describe
from .._ensemble import ensemble_size, member, split_members
from .._fields import replace_fields
from .._paths import is_value_leaf, iter_leaves, path_repr
from .._views import leaf_values
from .._walk import map_states


def _unshared(tree):
    return map_states(
        lambda p, s: replace_fields(s, shared=False) if s.shared else s,
        tree,
        views=False,
    )


def _leaves(tree) -> dict:
    return dict(iter_leaves(tree))


def _numpy(x):
    dtype = getattr(x, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _compare_leaf(path, a, b, rtol, atol):
    where = f"at path {path_repr(path)}"
    if isinstance(a, u.Quantity) or isinstance(b, u.Quantity):
        if not (isinstance(a, u.Quantity) and isinstance(b, u.Quantity)):
            return f"{where}: {describe(a)} != {describe(b)} (unit vs no unit)"
        if a.unit != b.unit:
            return f"{where}: unit {a.unit} != {b.unit}"
        a, b = a.mantissa, b.mantissa
    if eqx.is_array(a) or eqx.is_array(b):
        a, b = _numpy(a), _numpy(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{where}: {describe(a)} != {describe(b)}"
        if rtol == 0 and atol == 0:
            ok = np.array_equal(a, b, equal_nan=True)
        else:
            ok = np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
        if not ok:
            diff = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
            return f"{where}: values differ (max abs difference {diff:.3g})"
        return None
    if type(a) is not type(b) or a != b:
        return f"{where}: {a!r} != {b!r}"
    return None


def assert_trees_equal(
    actual: PyTree,
    expected: PyTree,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    ignore_shared: bool = False,
) -> None:
    """Asserts that two pytrees are equal: same structure (static fields included),
    same arrays (shape, dtype, values within `rtol`/`atol`; exact by default), same
    units. The `AssertionError` names the first path that differs.

    **Arguments:**

    - `actual`, `expected`: the trees.
    - `rtol`, `atol`: tolerances for floating-point values.
    - `ignore_shared`: compare states regardless of their `shared` mark (a member of
        an ensemble against a single model).
    """
    if ignore_shared:
        actual, expected = _unshared(actual), _unshared(expected)
    la, lb = _leaves(actual), _leaves(expected)
    if la.keys() != lb.keys():
        extra = ", ".join(path_repr(p) for p in la if p not in lb) or "none"
        lacking = ", ".join(path_repr(p) for p in lb if p not in la) or "none"
        raise AssertionError(
            f"The trees differ in structure: paths only in `actual`: {extra}; only in "
            f"`expected`: {lacking}."
        )
    for path in la:
        problem = _compare_leaf(path, la[path], lb[path], rtol, atol)
        if problem:
            raise AssertionError(f"The trees differ {problem}.")
    ta = jtu.tree_structure(actual, is_leaf=is_value_leaf)
    tb = jtu.tree_structure(expected, is_leaf=is_value_leaf)
    if ta != tb:
        raise AssertionError(
            f"The trees have the same leaves but differ in structure or static fields:"
            f"\n  actual:   {ta}\n  expected: {tb}"
        )


def _snapshot(tree):
    leaves, treedef = jtu.tree_flatten(tree, is_leaf=is_value_leaf)
    copied = [
        x if eqx.is_array(x) or isinstance(x, u.Quantity) else copy.deepcopy(x)
        for x in leaves
    ]
    return treedef.unflatten(copied)


def assert_pure(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Calls `fn(*args, **kwargs)` and asserts it left its inputs unchanged (no
    mutation of lists, dicts or modules inside them); returns its result."""
    before = _snapshot((args, kwargs))
    result = fn(*args, **kwargs)
    try:
        assert_trees_equal((args, kwargs), before)
    except AssertionError as e:
        raise AssertionError(
            f"`{getattr(fn, '__name__', fn)}` changed its input: {e}"
        ) from None
    return result


def assert_jit_matches_eager(
    fn: Callable, *args: Any, rtol: float = 0.0, atol: float = 0.0, **kwargs: Any
) -> Any:
    """Asserts that `eqx.filter_jit(fn)` gives what `fn` gives eagerly (exactly, by
    default), with no leaked tracers (`jax.checking_leaks()`); returns the result."""
    eager = fn(*args, **kwargs)
    with jax.checking_leaks():
        jitted = eqx.filter_jit(fn)(*args, **kwargs)
    assert_trees_equal(jitted, eager, rtol=rtol, atol=atol)
    return eager


def assert_member_matches(
    ensemble: PyTree, index: int, expected: PyTree, *, rtol=0.0, atol=0.0
) -> None:
    """Asserts that member `index` of a stacked `ensemble` equals the single model
    `expected` (ignoring which states the ensemble marks as shared)."""
    try:
        assert_trees_equal(
            member(ensemble, index), expected, rtol=rtol, atol=atol, ignore_shared=True
        )
    except AssertionError as e:
        raise AssertionError(f"Ensemble member {index}: {e}") from None


def assert_members_differ(ensemble: PyTree, *filters: Any) -> None:
    """Asserts that an ensemble's members are independent: for every leaf that
    `filters` select (see [`eqx_collective.leaf_values`][]; all by default), no two
    members hold equal values. Use it on what each member draws at random: every
    parameter of a [`eqx_collective.make_ensemble`][] ensemble, the states a random
    `init_state` fills under [`eqx_collective.vmap_init_all_states`][]. A leaf that
    holds one number throughout (a zero-initialised bias: no draw at all) is skipped.

    **Raises:** `AssertionError` naming the leaf and the two members that are equal.
    """
    size = ensemble_size(ensemble)
    batched = split_members(ensemble)[0]
    selected = leaf_values(ensemble, *filters)
    for path, x in leaf_values(batched).items():
        if path not in selected:
            continue
        x = x.mantissa if isinstance(x, u.Quantity) else x
        rows = _numpy(x).reshape(size, -1)
        if rows.size and np.all(rows == rows.flat[0]):
            continue
        for i in range(size):
            for j in range(i + 1, size):
                if np.array_equal(rows[i], rows[j]):
                    raise AssertionError(
                        f"Members {i} and {j} of the ensemble hold equal values at "
                        f"{path_repr(path)}: they are not independent."
                    )
