"""The output builder of `filter_jit`: straight-line Python code, generated once per
output structure, that rebuilds a traced function's output from its arrays.

Why generated code: a training step returns a tree as large as the model, and it is
rebuilt on every call. `jax.tree_util.tree_unflatten` does it by calling each module
class's unflatten function, node by node; an interpreted builder (a closure per node)
costs about as much again. Straight-line code (one expression per node, the classes,
static fields and keys held as constants) costs half of `tree_unflatten` (measured in
`ARCHITECTURE.md`, "Fast dispatch"). Equinox generates its own flatten and unflatten
functions per module class for the same reason.

The builder also returns the dicts and lists it made, so that the tree can be
recognised, unchanged, when it is passed back (see `_jit._Part`).
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.tree_util as jtu

from . import _fields
from ._jit_parts import ARRAYS, is_verifiable_node


class Builder:
    """`build(arrays) -> (tree, dicts, lists)` for trees shaped like `example`."""

    def __init__(self, example: Any, name: str):
        new, set_attr, name = _fields.MAKE_STEPS
        self.consts: dict[str, Any] = {"_new": new, "_set": set_attr, "_fields": name}
        self.lines: list[str] = []
        self.arrays: list[str] = []
        self.dicts: list[str] = []
        self.lists: list[str] = []
        # What the dicts and lists are built holding (see `_jit_parts.Part.holds`).
        self.keys: list = []
        self.lens: list[int] = []  # of the dicts, then of the lists
        self.list_lens: list[int] = []
        self.values: list[str] = []
        self.items: list[str] = []
        self.count = 0
        root, _, _ = self._visit(example)
        unpack = f"{''.join(a + ', ' for a in self.arrays)}= L" if self.arrays else ""
        body = "\n    ".join([unpack, *self.lines])
        source = (
            f"def build(L):\n    {body}\n"
            f"    return {root}, ({''.join(d + ', ' for d in self.dicts)}), "
            f"({''.join(v + ', ' for v in self.lists)}), "
            f"[{', '.join(self.values)}], [{', '.join(self.items)}]\n"
        )
        namespace = dict(self.consts)
        exec(compile(source, f"<filter_jit output of {name}>", "exec"), namespace)  # noqa: S102
        self.build: Callable[[list], tuple] = namespace["build"]
        self.num_arrays = len(self.arrays)
        self.lens += self.list_lens
        del self.consts, self.lines, self.arrays, self.dicts, self.lists
        del self.values, self.items, self.list_lens

    def _const(self, value: Any) -> str:
        name = f"K{len(self.consts)}"
        self.consts[name] = value
        return name

    def _var(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def _visit(self, x: Any) -> tuple[str, bool, bool]:
        """`(expression, holds arrays, frozen)` for the subtree `x`, whose construction
        is appended to `self.lines`. Frozen: only modules, tuples and leaves inside, so
        that a subtree without arrays is reused as it is instead of rebuilt."""
        if isinstance(x, ARRAYS):
            var = self._var()
            self.arrays.append(var)
            return var, True, True
        if x is None:
            return "None", False, True
        children, treedef = jtu.tree_flatten(x, is_leaf=lambda y: y is not x)
        if jtu.treedef_is_leaf(treedef):  # a static leaf
            return self._const(x), False, True
        start, n_dicts, n_lists = len(self.lines), len(self.dicts), len(self.lists)
        expr, arrays, frozen = self._visit_node(x, children, treedef)
        if not arrays and frozen:  # reuse `x` itself (immutable, no tracers inside)
            del self.lines[start:], self.dicts[n_dicts:], self.lists[n_lists:]
            return self._const(x), False, True
        return expr, arrays, frozen

    def _visit_node(
        self, x: Any, children: list, treedef: Any
    ) -> tuple[str, bool, bool]:
        cls = type(x)
        if isinstance(x, eqx.Module):
            fields = _fields.fields(x)
            dynamic = set(_fields.dynamic_fields(x))  # (checks the class once)
            names = [n for n in fields if n in dynamic]
            parts, arrays, frozen = self._visit_all([fields[n] for n in names])
            exprs = dict(zip(names, parts, strict=True))
            items = ", ".join(
                f"{n!r}: {exprs[n] if n in exprs else self._const(v)}"
                for n, v in fields.items()
            )
            var = self._assign(f"_new({self._const(cls)})")
            self.lines.append(f"_set({var}, _fields, {{{items}}})")
            return var, arrays, frozen
        if cls is dict:
            keys = list(x) if len(x) < 2 else sorted(x)  # (`jax.tree_util`'s order)
            parts, arrays, _ = self._visit_all([x[k] for k in keys])
            items = ", ".join(
                f"{self._const(k)}: {p}" for k, p in zip(keys, parts, strict=True)
            )
            var = self._assign(f"{{{items}}}")
            self.dicts.append(var)
            self.keys += keys
            self.lens.append(len(keys))
            self.values += parts
            return var, arrays, False
        if cls is list:
            parts, arrays, _ = self._visit_all(x)
            var = self._assign(f"[{''.join(p + ', ' for p in parts)}]")
            self.lists.append(var)
            self.items += parts
            self.list_lens.append(len(parts))
            return var, arrays, False
        parts, arrays, frozen = self._visit_all(children)
        args = "".join(p + ", " for p in parts)
        if cls is tuple:
            return self._assign(f"({args})"), arrays, frozen
        # Any other node (a namedtuple, `eqx.nn.State`, ...): its own unflatten.
        expr = f"{self._const(treedef)}.unflatten([{args}])"
        return self._assign(expr), arrays, frozen and is_verifiable_node(x)

    def _visit_all(self, children: list) -> tuple[list[str], bool, bool]:
        parts, arrays, frozen = [], False, True
        for child in children:
            expr, a, f = self._visit(child)
            parts.append(expr)
            arrays, frozen = arrays or a, frozen and f
        return parts, arrays, frozen

    def _assign(self, expr: str) -> str:
        var = self._var()
        self.lines.append(f"{var} = {expr}")
        return var
