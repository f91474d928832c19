"""`filter_jit`: `eqx.filter_jit`'s semantics at close to `jax.jit`'s per-call cost.

## Design

`eqx.filter_jit` splits every call's arguments into arrays (traced) and everything else
(static, hashed) by flattening them with `jax.tree_util`, and rebuilds its outputs the
same way. On a model of hundreds of modules that Python work is most of the call: every
module is flattened and unflattened by Equinox's Python functions, and the static part,
a tree as large as the model, is hashed and compared.

Here that work is specialised, once per argument structure, into generated Python code:

- A *structure* is what `eqx.filter_jit` keys its cache on: the pytree structure of the
    arguments, every module's static fields and every non-array leaf (compared with
    `==`), and where the arrays (`eqx.is_array` leaves) are. `_flatten` computes it as a
    flat tuple of tokens, with the arrays, in one pass that reads each module's
    `__dict__` directly (Equinox's own flatten, called through `jax.tree_util` for each
    module, costs several times more; `_paths.walk` does the same for the same reason).
- For each structure met, an *entry* holds a `jax.jit` of the function over the flat
    lists of arrays, and two generated functions: a *matcher*, straight-line code that
    checks that a call's arguments have exactly this structure (every type, length,
    dict key, static value) and returns their arrays, and a *builder*, straight-line code
    that rebuilds the argument trees from a list of arrays (used inside the trace).
    The outputs get a builder too, generated when the function is traced and carried out
    of `jax.jit` as the auxiliary data of the output pytree.
- A call first runs the matchers of the entry that served the previous call, which
    is what a training loop hits every step. An argument that is a large part of the
    previous call's output (an element of the tuple it returned), still holding what
    it was built with, is not even traversed: the output builder also returned the
    dicts and lists it made, and a generated `verify` checks that they hold the same
    objects (modules and tuples are immutable); its arrays are then the ones that
    call returned. Only when matching fails is the structure computed and looked up
    (hashed), as `eqx.filter_jit` does on every call.

Nothing is assumed about arguments that is not checked on every call: a tree mutated in
place (a dict entry replaced, a list appended to) is seen like any other. Only an
Equinox module mutated with `object.__setattr__`, or a static leaf whose `==` changes
in place, would go unnoticed.
"""

import dataclasses
import functools as ft
import inspect
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.core
import jax.tree_util as jtu
import numpy as np


_ARRAYS = (jax.Array, np.ndarray, np.generic)  # what `eqx.is_array` traces
_FAST_ARRAYS = {np.ndarray}  # array types met so far: a quicker test than `isinstance`
_MISSING = object()  # a module field absent from its instance's `__dict__`
_ARRAY = object()  # the token of an array leaf
_STATIC = object()  # the token before a static (non-array) leaf
_DONATE = {
    # donate: (suppress the unusable-buffer warnings, donate the first argument,
    # donate the other arguments and the function's own arrays)
    "all": (True, True, True),
    "all-except-first": (True, False, True),
    "warn": (False, True, True),
    "warn-except-first": (False, False, True),
    "none": (False, False, False),
}

_LEAF, _STATIC_LEAF, _NONE, _MODULE, _TUPLE, _LIST, _DICT, _NAMEDTUPLE, _OTHER = range(
    9
)
_KINDS: dict[type, tuple[int, Any]] = {type(None): (_NONE, None)}
_get = object.__getattribute__


def _kind(x: Any) -> tuple[int, Any]:
    """How `jax.tree_util` sees `x`, with what a traversal needs: for an Equinox module,
    `(dynamic field names, static field names)`; cached per type."""
    cls = type(x)
    if isinstance(x, _ARRAYS):  # (a tracer is a `jax.Array` by `isinstance` only)
        kind = (_LEAF, None)
        _FAST_ARRAYS.add(cls)
    elif issubclass(cls, eqx.Module) and cls.__dictoffset__:
        fields = dataclasses.fields(cls)
        dynamic = tuple(f.name for f in fields if not f.metadata.get("static"))
        static = tuple(f.name for f in fields if f.metadata.get("static"))
        kind = (_MODULE, (dynamic, static))
    elif cls is tuple:
        kind = (_TUPLE, None)
    elif cls is list:
        kind = (_LIST, None)
    elif cls is dict:
        kind = (_DICT, None)
    elif issubclass(cls, tuple) and hasattr(cls, "_fields"):
        kind = (_NAMEDTUPLE, None)
    else:  # registration is per type: an unregistered type's instances are leaves
        treedef = _one_level(x)[1]
        leaf = treedef.num_nodes == 1 and treedef.num_leaves == 1
        kind = (_STATIC_LEAF if leaf else _OTHER, None)
    _KINDS[cls] = kind
    return kind


def _one_level(x: Any) -> tuple[list, Any]:
    """`x`'s children and a one-level treedef (a leaf has none, and a `*` treedef)."""
    return jtu.tree_flatten(x, is_leaf=lambda y: y is not x)


def _node(x: Any) -> tuple[int, Any]:
    """`(kind, info)` of `x`. Modules holding Equinox's wrapper fields
    (`module_update_wrapper`) and unregistered types go through `jax.tree_util`."""
    kind = _KINDS.get(type(x)) or _kind(x)
    if kind[0] == _MODULE:
        dynamic, static = kind[1]
        if len(_get(x, "__dict__")) != len(dynamic) + len(static):
            return _OTHER, None
    elif kind[0] == _DICT:
        try:
            keys = sorted(x)
        except TypeError:  # unsortable keys: `jax.tree_util` decides the order
            return _OTHER, None
        return _DICT, tuple(keys)
    return kind


def _flatten(x: Any, leaves: list, key: list) -> None:
    """Appends the arrays of `x` to `leaves` and the tokens of its structure to `key`:
    equal token lists if and only if `eqx.filter_jit` would see equal static parts."""
    kind, info = _node(x)
    if kind == _LEAF:
        leaves.append(x)
        key.append(_ARRAY)
    elif kind == _STATIC_LEAF:
        key.append(_STATIC)
        key.append(x)
    elif kind == _NONE:
        key.append(None)
    elif kind == _MODULE:
        d = _get(x, "__dict__")
        key.append(type(x))
        for name in info[1]:
            key.append(d.get(name, _MISSING))
        for name in info[0]:
            child = d.get(name, _MISSING)
            if child is _MISSING:
                key.append(_MISSING)
            else:
                _flatten(child, leaves, key)
    elif kind in (_TUPLE, _LIST, _NAMEDTUPLE):
        key.append(type(x))
        key.append(len(x))
        for child in x:
            _flatten(child, leaves, key)
    elif kind == _DICT:
        key.append(dict)
        key.append(info)
        for k in info:
            _flatten(x[k], leaves, key)
    else:
        children, treedef = _one_level(x)
        if treedef.num_nodes == 1 and treedef.num_leaves == 1:  # a leaf
            key.append(_STATIC)
            key.append(x)
        else:
            key.append(treedef)
            for child in children:
                _flatten(child, leaves, key)


def _scan(x: Any, found: dict[int, tuple[bool, bool]]) -> tuple[bool, bool]:
    """`(holds arrays, frozen)` for the subtree `x`, recorded in `found` by `id` for it
    and every node below. Frozen: only immutable nodes (modules, tuples, `None`s,
    static leaves; no dict, list or other pytree node), so that the object itself
    stands for its whole structure."""
    kind, info = _node(x)
    if kind == _LEAF:
        result = (True, True)
    elif kind in (_STATIC_LEAF, _NONE):
        result = (False, True)
    else:
        if kind == _MODULE:
            d = _get(x, "__dict__")
            children = [d[name] for name in info[0]]
        elif kind == _DICT:
            children = [x[k] for k in info]
        elif kind == _OTHER:
            children = _one_level(x)[0]
        else:
            children = list(x)
        arrays, frozen = False, kind in (_MODULE, _TUPLE, _NAMEDTUPLE)
        for child in children:
            a, f = _scan(child, found)
            arrays, frozen = arrays or a, frozen and f
        result = (arrays, frozen)
    found[id(x)] = result
    return result


class _Code:
    """Generated straight-line code for one tree structure: a matcher
    `match(x) -> list of arrays | None` and a builder `build(leaves) -> tree`.

    The matcher checks every node, except that a subtree without arrays that is the
    very object met when the code was generated is taken as is once the dicts and
    lists inside it are checked to hold the same objects (modules and tuples are
    immutable): so an argument passed unchanged from call to call, like the `rest` of
    a partitioned model, costs one check per dict or list. The builder reuses frozen
    subtrees without arrays instead of rebuilding them.
    """

    def __init__(self, example: Any, name: str):
        self.consts: dict[int, str] = {}
        self.values: dict[str, Any] = {}
        self.match_lines: list[str] = []
        self.build_lines: list[str] = []
        self.leaf_vars: list[str] = []
        self.count = 0
        self.indent = "    "
        self.scan: dict[int, tuple[bool, bool]] = {}
        self.containers: list[tuple[str, list[tuple[str, str]]]] = []
        self.compatible: dict[int, tuple[_Code, bool]] = {}
        self.opaque = False  # holds a node of another pytree type
        _scan(example, self.scan)
        root = self._visit(example, "x", shortcut=True)
        self.num_leaves = len(self.leaf_vars)
        tokens = []
        _flatten(example, [], tokens)
        self.tokens = tuple(tokens)
        self._compile(root, name)
        del self.scan, self.consts, self.values, self.match_lines, self.build_lines
        del self.containers, self.leaf_vars

    def _compile(self, root: str, name: str) -> None:
        match = "\n".join(self.match_lines) or "        pass"
        leaves = ", ".join(self.leaf_vars)
        unpack = f"{leaves}, = L" if self.leaf_vars else "pass"
        build = "\n    ".join(self.build_lines)
        src = (
            f"def match(x):\n    try:\n{match}\n"
            f"    except (KeyError, TypeError, ValueError):\n        return None\n"
            f"    return [{leaves}]\n\n"
            f"def build(L):\n    {unpack}\n    {build}\n    return {root}\n\n"
            f"def build_kept(L):\n    {unpack}\n    {build}\n"
            f"    return {root}, ({''.join(v + ', ' for v in self._kept())})\n\n"
            f"{self._verify_source(unpack)}"
        )
        ns = dict(self.values, _get=_get, _new=object.__new__, _set=object.__setattr__)
        ns.update(_arrays=_ARRAYS, _fast=_FAST_ARRAYS, _one=_one_level)
        exec(compile(src, f"<filter_jit {name}>", "exec"), ns)  # noqa: S102
        self.match: Callable[[Any], list | None] = ns["match"]
        self.build: Callable[[list], Any] = ns["build"]
        self.build_kept: Callable[[list], tuple[Any, tuple]] = ns["build_kept"]
        self.verify: Callable[[tuple, list], bool] = ns["verify"]

    def _kept(self) -> list[str]:
        """The builder's variables that `verify` needs: the dicts and lists it made
        and the nodes directly inside them."""
        leaves, kept = set(self.leaf_vars), {}
        for var, items in self.containers:
            kept[var] = None
            for _, child in items:
                if child.startswith("v") and child not in leaves:
                    kept[child] = None
        return list(kept)

    def _verify_source(self, unpack: str) -> str:
        """`verify(kept, L)`: whether a tree that `build_kept(L)` returned still holds
        what it was built with. Its modules and tuples cannot have changed; its dicts
        and lists are checked. (Other pytree nodes are not trusted: `False`.)"""
        if self.opaque:
            return "def verify(O, L):\n    return False\n"
        checks = ["True"]
        for var, items in self.containers:
            checks.append(f"len({var}) == {len(items)}")
            checks += [f"{var}[{i}] is {child}" for i, child in items]
        kept = "".join(v + ", " for v in self._kept())
        unpack_kept = f"{kept}= O" if kept else "pass"
        return (
            f"def verify(O, L):\n    {unpack}\n    {unpack_kept}\n"
            f"    return {' and '.join(checks)}\n"
        )

    def _const(self, value: Any) -> str:
        name = self.consts.get(id(value))
        if name is None or self.values[name] is not value:
            name = f"K{len(self.values)}"
            self.consts[id(value)] = name
            self.values[name] = value
        return name

    def _var(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def _m(self, line: str) -> None:
        self.match_lines.append(self.indent + "    " + line)

    def _fail_unless(self, cond: str) -> None:
        self._m(f"if not ({cond}): return None")

    def _static(self, var: str, value: Any) -> str:
        """Checks `var` against the static `value` (`==`, as a hashed cache key
        compares); returns the builder's name for it."""
        k = self._const(value)
        self._fail_unless(
            f"{var} is {k} or (not isinstance({var}, _arrays) and {k} == {var})"
        )
        return k

    def _visit(self, x: Any, var: str, shortcut: bool) -> str:
        """Emits the matcher's checks of `var` (holding a tree shaped like `x`) and the
        builder's construction of it; returns the builder's expression for it."""
        kind, info = _node(x)
        if kind == _LEAF:
            self._fail_unless(f"type({var}) in _fast or isinstance({var}, _arrays)")
            self.leaf_vars.append(var)
            return var
        if kind == _STATIC_LEAF:
            return self._static(var, x)
        if kind == _NONE:
            self._fail_unless(f"{var} is None")
            return "None"
        arrays, frozen = self.scan[id(x)]
        if arrays or not shortcut:
            return self._visit_node(x, var, kind, info, shortcut)
        # No arrays: if `var` is `x` itself, only its dicts and lists are checked.
        checks = [f"{var} is {self._const(x)}", *self._container_checks(x)]
        self._m(f"if not ({' and '.join(checks)}):")
        self.indent += "    "
        n_build = len(self.build_lines)
        out = self._visit_node(x, var, kind, info, shortcut=False)
        self.indent = self.indent[:-4]
        if frozen:  # the builder reuses `x`
            del self.build_lines[n_build:]
            return self._const(x)
        return out

    def _container_checks(self, x: Any) -> list[str]:
        """Checks that the dicts and lists of the subtree `x` hold what they held."""
        kind, info = _node(x)
        if kind in (_LEAF, _STATIC_LEAF, _NONE):
            return []
        if kind == _MODULE:
            d = _get(x, "__dict__")
            children = [d[name] for name in info[0]]
        elif kind == _OTHER:
            return ["False"]  # (not reached: such subtrees are not taken as is)
        else:
            children = [x[k] for k in info] if kind == _DICT else list(x)
        checks = []
        if kind in (_DICT, _LIST):
            k = self._const(x)
            checks.append(f"len({k}) == {len(children)}")
            index = info if kind == _DICT else range(len(children))
            for i, child in zip(index, children, strict=True):
                checks.append(f"{k}[{self._const(i)}] is {self._const(child)}")
        for child in children:
            checks += self._container_checks(child)
        return checks

    def _visit_node(
        self, x: Any, var: str, kind: int, info: Any, shortcut: bool
    ) -> str:
        if kind == _MODULE:
            return self._visit_module(x, var, *info, shortcut=shortcut)
        if kind == _DICT:
            self._fail_unless(f"type({var}) is dict and len({var}) == {len(info)}")
            parts = []
            items = []
            for k in info:
                child, kname = self._var(), self._const(k)
                self._m(f"{child} = {var}[{kname}]")
                items.append((kname, self._visit(x[k], child, shortcut)))
            out = self._emit(f"{{{', '.join(f'{k}: {c}' for k, c in items)}}}")
            self.containers.append((out, items))
            return out
        if kind in (_TUPLE, _LIST, _NAMEDTUPLE):
            cls = self._const(type(x))
            self._fail_unless(f"type({var}) is {cls} and len({var}) == {len(x)}")
            parts = self._visit_children(list(x), var, shortcut)
            if kind == _TUPLE:
                return self._emit(f"({''.join(p + ', ' for p in parts)})")
            if kind == _LIST:
                out = self._emit(f"[{', '.join(parts)}]")
                self.containers.append(
                    (out, [(str(i), p) for i, p in enumerate(parts)])
                )
                return out
            return self._emit(f"{cls}({', '.join(parts)})")
        self.opaque = True
        children, treedef = _one_level(x)
        td, c, t = self._const(treedef), self._var(), self._var()
        self._m(f"{c}, {t} = _one({var})")
        self._fail_unless(f"{t} == {td}")
        parts = self._visit_children(children, c, shortcut)
        return self._emit(f"{td}.unflatten([{', '.join(parts)}])")

    def _visit_children(self, children: list, var: str, shortcut: bool) -> list[str]:
        names = [self._var() for _ in children]
        if names:
            self._m(f"{''.join(n + ', ' for n in names)}= {var}")
        return [
            self._visit(c, n, shortcut) for c, n in zip(children, names, strict=True)
        ]

    def _visit_module(
        self, x: Any, var: str, dynamic: tuple, static: tuple, shortcut: bool
    ) -> str:
        cls, d = self._const(type(x)), self._var()
        self._fail_unless(f"type({var}) is {cls}")
        self._m(f"{d} = _get({var}, '__dict__')")
        # (`_node` sends modules missing a field, or holding more, elsewhere)
        self._fail_unless(f"len({d}) == {len(dynamic) + len(static)}")
        old = _get(x, "__dict__")
        parts = []
        for name in static:
            s = self._var()
            self._m(f"{s} = {d}[{name!r}]")
            parts.append(f"{name!r}: {self._static(s, old[name])}")
        for name in dynamic:
            child = self._var()
            self._m(f"{child} = {d}[{name!r}]")
            parts.append(f"{name!r}: {self._visit(old[name], child, shortcut)}")
        out = self._var()
        self.build_lines.append(f"{out} = _new({cls})")
        self.build_lines.append(f"_set({out}, '__dict__', {{{', '.join(parts)}}})")
        return out

    def _emit(self, expr: str) -> str:
        out = self._var()
        self.build_lines.append(f"{out} = {expr}")
        return out


_RECEIPT_TOKENS = 64  # parts of an output with more structure tokens get receipts
_NO_RECEIPTS: dict = {}  # (never mutated)


class _Out:
    """The static part of a traced function's output: generated code for each of its
    parts (the elements of a tuple, or the whole output). It is the auxiliary data of
    a childless pytree node, so `jax.jit` hands it back with the output arrays, for the
    trace that produced them."""

    __slots__ = ("codes", "split", "keep", "whole")

    def __init__(self, out: Any, name: str):
        self.split = type(out) is tuple
        self.codes = [_Code(part, name) for part in (out if self.split else (out,))]
        # Receipts pay off for large parts; a small output is built in one go.
        self.keep = [
            len(c.tokens) > _RECEIPT_TOKENS and not c.opaque for c in self.codes
        ]
        self.whole = None if any(self.keep) else _Code(out, name)

    def build(self, leaves: list) -> tuple[Any, dict]:
        """The output from its arrays, and the receipts of its large parts: `{id(part):
        (part, code, kept, arrays)}`, with which the next call recognises a part
        passed back to it (see `_FilterJit._match`). None under an outer
        transformation: tracers are not kept beyond their trace."""
        if self.whole is not None:
            return self.whole.build(leaves), _NO_RECEIPTS
        receipts, parts, i = {}, [], 0
        keep = not (leaves and isinstance(leaves[0], jax.core.Tracer))
        for code, large in zip(self.codes, self.keep, strict=True):
            own = leaves[i : i + code.num_leaves]
            i += code.num_leaves
            if keep and large:
                part, kept = code.build_kept(own)
                receipts[id(part)] = (part, code, kept, own)
            else:
                part = code.build(own)
            parts.append(part)
        return (tuple(parts) if self.split else parts[0]), receipts


jtu.register_pytree_node(_Out, lambda o: ((), o), lambda o, _: o)


class _Entry:
    """One argument structure: generated code for all the arguments, for each
    positional argument and for the keyword arguments, and the `jax.jit` of the
    function over flat lists of arrays."""

    __slots__ = ("code", "arg_codes", "kw_code", "jitted")
    jitted: Callable  # set by `_make_entry`, which jits a function of the codes

    def __init__(self, tree: tuple, name: str):
        self.code = _Code(tree, name)  # all arguments at once: one call, no receipts
        self.arg_codes = [_Code(arg, name) for arg in tree[0]]
        self.kw_code = _Code(tree[1], name)


def _compatible(made: _Code, expected: _Code) -> bool:
    """Whether trees that `made` builds have the structure `expected` matches (cached
    on `made`, which holds `expected` so that its `id` stays its own)."""
    known = made.compatible.get(id(expected))
    if known is None or known[0] is not expected:
        known = made.compatible[id(expected)] = (
            expected,
            made.tokens == expected.tokens,
        )
    return known[1]


# Like `eqx.filter_jit`, compiled functions are shared by every wrapper of the same
# Python function (held weakly), and by every wrapper of a callable object of the same
# type name (its static part, compared per call, keeps them apart); so wrapping a
# function anew, even on every call, does not retrace it.
_FUNCTION_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_OTHER_CACHES: dict[tuple[str, str], dict] = {}


def _cache_for(fn: Any) -> dict:
    if type(fn) is types.FunctionType:
        return _FUNCTION_CACHES.setdefault(fn, {})
    cls = type(fn)
    return _OTHER_CACHES.setdefault((cls.__module__, cls.__qualname__), {})


def _unhashable_error(key: tuple, error: TypeError) -> TypeError:
    for token in key:
        try:
            hash(token)
        except TypeError:
            return TypeError(
                f"`filter_jit` holds every non-array leaf of the arguments static, and "
                f"compares it between calls by hash and `==`, like `eqx.filter_jit`; "
                f"but a leaf of type `{type(token).__name__}` ({token!r:.80}) is not "
                f"hashable. Pass it as an array (`jnp.asarray`), make its type "
                f"hashable, or close over it."
            )
    return error


_NO_KWARGS: dict = {}  # (never mutated)


def _positional_counts(signature: inspect.Signature) -> tuple[float, float]:
    """`(low, high)`: a call with between `low` and `high` positional arguments and no
    keyword arguments is bound as it is (`bound.args == args`, `bound.kwargs == {}`).
    `(1, 0)` when a keyword-only parameter is required (no call is bound as is)."""
    low, high = 0, 0
    for p in signature.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            high = float("inf")
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            low += p.default is p.empty
        elif p.kind == p.KEYWORD_ONLY and p.default is p.empty:
            return 1, 0
    return low, high


class _FilterJit:
    """The function returned by [`eqx_collective.filter_jit`][]."""

    def __init__(self, fn: Callable, donate: str):
        if donate not in _DONATE:
            raise ValueError(
                f"`filter_jit(..., donate=...)` must be one of 'all', "
                f"'all-except-first', 'warn', 'warn-except-first' or 'none', but got "
                f"{donate!r}."
            )
        self._quiet, self._donate_first, self._donate_rest = _DONATE[donate]
        self._fn = fn
        self._signature = inspect.signature(fn)
        self._positional = _positional_counts(self._signature)
        self._name = getattr(fn, "__name__", type(fn).__name__)
        fn_leaves, fn_key = [], []
        _flatten(fn, fn_leaves, fn_key)
        self._fn_leaves = fn_leaves
        self._fn_code = _Code(fn, self._name)
        self._prefix = (tuple(fn_key), self._donate_first, self._donate_rest)
        self._cache = _cache_for(fn)
        self._last: _Entry | None = None
        self._receipts: dict[int, tuple] = {}  # of the last call's output
        ft.update_wrapper(self, fn, updated=())

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        low, high = self._positional
        if not kwargs and low <= len(args) <= high:
            tree = (args, _NO_KWARGS)  # what `Signature.bind` would return
        else:
            bound = self._signature.bind(*args, **kwargs)
            tree = (bound.args, bound.kwargs)
        entry = self._last
        leaves = None if entry is None else self._match(entry, *tree)
        if entry is None or leaves is None:
            entry, leaves = self._lookup(tree)
            self._last = entry
        if self._donate_rest:
            if self._donate_first:
                donated, kept = self._fn_leaves + leaves, []
            else:
                n = entry.arg_codes[0].num_leaves if entry.arg_codes else 0
                donated, kept = self._fn_leaves + leaves[n:], leaves[:n]
        else:
            donated, kept = [], self._fn_leaves + leaves if self._fn_leaves else leaves
        if self._quiet:
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message="Some donated buffers were not usable"
                )
                out_leaves, out = entry.jitted(donated, kept)
        else:
            out_leaves, out = entry.jitted(donated, kept)
        result, self._receipts = out.build(out_leaves)
        return result

    def _match(self, entry: _Entry, args: tuple, kwargs: dict) -> list | None:
        """The arrays of the arguments if they have `entry`'s structure, else `None`.
        An argument that is a part of the previous call's output, unchanged (its
        receipt's dicts and lists hold what they were built with; its modules and
        tuples cannot change), is not traversed: its arrays are the receipt's."""
        receipts, codes = self._receipts, entry.arg_codes
        if not receipts:
            return entry.code.match((args, kwargs))
        if len(args) != len(codes):
            return None
        leaves = []
        for code, arg in zip(codes, args, strict=True):
            r = receipts.get(id(arg))
            if r is not None and r[0] is arg and _compatible(r[1], code):
                if r[1].verify(r[2], r[3]):
                    leaves += r[3]
                    continue
            found = code.match(arg)
            if found is None:
                return None
            leaves += found
        found = entry.kw_code.match(kwargs)
        return None if found is None else leaves + found

    def _lookup(self, tree: tuple) -> tuple[_Entry, list]:
        """The entry for the structure of `tree` (made on first sight) and the arrays
        of `tree`: the slow path, taken when the structure changes."""
        leaves, tokens = [], []
        _flatten(tree, leaves, tokens)
        key = (self._prefix, tuple(tokens))
        try:
            entry = self._cache.get(key)
        except TypeError as e:
            raise _unhashable_error(key[0][0] + key[1], e) from e
        if entry is None:
            entry = self._cache[key] = self._make_entry(tree)
        return entry, leaves

    def _make_entry(self, tree: tuple) -> _Entry:
        name, fn_build, n_fn = self._name, self._fn_code.build, len(self._fn_leaves)
        entry = _Entry(tree, name)
        arg_codes, kw_code = entry.arg_codes, entry.kw_code
        donate_first, donate_rest = self._donate_first, self._donate_rest

        def traced(donated: list, kept: list) -> tuple[list, _Out]:
            if donate_first or not donate_rest:
                leaves = donated + kept
            else:  # the first argument's arrays are kept, the rest donated
                leaves = donated[:n_fn] + kept + donated[n_fn:]
            fn, args, i = fn_build(leaves[:n_fn]), [], n_fn
            for code in arg_codes:
                args.append(code.build(leaves[i : i + code.num_leaves]))
                i += code.num_leaves
            out = fn(*args, **kw_code.build(leaves[i:]))
            out_leaves = []
            _flatten(out, out_leaves, [])
            return out_leaves, _Out(out, name)

        traced.__name__ = traced.__qualname__ = name
        entry.jitted = jax.jit(traced, donate_argnums=0 if donate_rest else ())
        return entry

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return ft.partial(self, instance)

    def __repr__(self) -> str:
        return f"filter_jit({self._fn!r})"


Donate = Literal["all", "all-except-first", "warn", "warn-except-first", "none"]


def filter_jit(fn: Callable | None = None, *, donate: Donate = "none") -> Any:
    """`eqx.filter_jit` with a per-call cost close to `jax.jit` on a flat list of
    arrays, however many modules the arguments hold.

    The semantics are `eqx.filter_jit`'s: every JAX or NumPy array (`eqx.is_array`) in
    the arguments, and in `fn` itself if it is a module, is traced; everything else
    (Python scalars, static fields, `None`s, functions, ...) is static, and a call whose
    static parts differ (by hash and `==`) from every earlier call's traces anew. The
    output's arrays come back as JAX arrays and its other leaves as the Python objects
    the trace returned. It retraces exactly when `eqx.filter_jit` would.

    What differs is the cost of a call: `eqx.filter_jit` flattens, hashes and rebuilds
    every module of the arguments and outputs through `jax.tree_util` on every call.
    `filter_jit` generates, once per argument structure, code that checks a call's
    arguments against that structure and collects their arrays in one pass, and code
    that rebuilds the outputs; a training loop, whose arguments keep their structure
    from step to step, runs only that code and `jax.jit`'s own dispatch, and the parts
    of the previous step's output that it passes back are recognised without being
    traversed (so the wrapper keeps the last call's outputs referenced). See
    [Training loops](../concepts/training.md#keeping-dispatch-cheap-on-big-models).

    Unlike `eqx.filter_jit`, a call returns without waiting for the computation (as
    `jax.jit` does): a runtime error of `eqx.error_if` surfaces when the result is
    used, and AOT lowering (`.lower`) is not provided.

    **Arguments:**

    - `fn`: the pure function to compile (or a callable module, whose arrays are traced).
        Without it, returns a decorator: `@filter_jit(donate="all")`.
    - `donate`: as for `eqx.filter_jit`: `'all'` donates the buffers of every argument
        array (and of `fn`'s), `'all-except-first'` of all but the first argument's,
        both without warning about unusable buffers; `'warn'` and
        `'warn-except-first'` do the same but keep the warnings; `'none'` (the default)
        donates nothing. A donated array cannot be used again.

    **Returns:** the compiled function, called like `fn`.

    !!! Example

        ```python
        @ec.filter_jit
        def train_step(params, rest, opt_state, x, y):
            ...
            return params, opt_state, loss

        for x, y in batches:
            params, opt_state, loss = train_step(params, rest, opt_state, x, y)
        ```
    """
    if fn is None:
        return ft.partial(filter_jit, donate=donate)
    return _FilterJit(fn, donate)
