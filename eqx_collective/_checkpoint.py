"""Checkpoint files: `save_states` and `load_states` (safetensors), and the
`LoadResult` that loads return."""

import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, cast, NamedTuple

import brainunit as u
from jaxtyping import PyTree
from safetensors import safe_open, SafetensorError, serialize_file, TensorSpec

from . import _checkpoint_format as fmt
from ._assign import assign, PlaceIndex
from ._filters import Filter
from ._paths import as_path, iter_value_leaves, Path, path_repr
from ._state import is_shared
from ._views import states as _states
from ._walk import iter_states


File = str | os.PathLike
Rename = Mapping[Path | str, Path | str] | Callable[[Path], Path | str | None]


class LoadResult(NamedTuple):
    """What [`eqx_collective.load_states`][] and [`eqx_collective.load_sharded`][]
    return. A named tuple: take the fields by name (`result.model`), or the first three
    as `model, unexpected, missing = load_states(...)[:3]`.

    Every key is a *leaf-level* tuple path (`('layers', 0, 'weight', 'bias')`; for an
    array- or `Quantity`-valued state, its own path), named as in the model (after
    `rename`).

    **Fields:**

    - `model`: the model with the loaded values (the input model is left untouched).
    - `unexpected`: the leaves of the file that match nothing in the model, in the
        file's order.
    - `missing`: the leaves of the model that the file does not hold (they keep their
        values), in the model's order.
    - `converted`: the loaded leaves whose value was converted to fit the model: a
        safe dtype cast (`float16` into a `float32` state), a unit conversion (`volt`
        into a `mV` state) or a Python scalar made an array.
    """

    model: PyTree
    unexpected: list[Path]
    missing: list[Path]
    converted: list[Path]


_CODES = {  # safetensors' dtype codes of the stored dtypes
    "bool": "BOOL",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "bfloat16": "BF16",
    "complex64": "C64",
}


# the safetensors code each dtype of the metadata is stored as
_STORED_AS = {d: _CODES[fmt.storage_dtype({"dtype": d}).name] for d in fmt.KNOWN_DTYPES}


def collect_states(model: PyTree, filters: tuple, op: str, **kwargs) -> fmt.Saved:
    """The stored form of `model`'s states; a `ValueError` if there is nothing to save."""
    saved = fmt.collect(list(_states(model, *filters).items()), **kwargs)
    if not saved.arrays:
        raise ValueError(
            f"`{op}` found no array to save in the model"
            + (" among the states the filters select" if filters else "")
            + ", so the checkpoint would be empty. Pass the model that holds the "
            "states (or filters that select some of them)."
        )
    return saved


def check_path(file: Any, op: str) -> None:
    if not isinstance(file, (str, os.PathLike)):
        raise TypeError(
            f"`{op}` takes the path of the checkpoint (a `str` or `os.PathLike`), but "
            f"got {type(file).__name__}. Checkpoints are files on disk (read "
            f"memory-mapped); to keep one in memory, write it to a temporary file."
        )


def save_states(file: File, model: PyTree, *filters: Filter) -> None:
    """Saves the values of `model`'s states to a [safetensors](https://huggingface.co/docs/safetensors)
    file, which [`eqx_collective.load_states`][] reads back.

    Every array leaf counts: the leaves of every [`eqx_collective.State`][] and the
    raw arrays of plain Equinox modules alike. Values are saved exactly: every dtype bit
    for bit, `brainunit.Quantity` values in their own unit, typed PRNG keys
    (`jax.random.key`) with their implementation. A stacked ensemble is saved like any
    model, with the ensemble axes and shared states of its states recorded. Writing is
    atomic: the file is written next to `file` and moved into place, so a crash never
    leaves a truncated checkpoint.

    **File format** (version 2): a standard safetensors file, readable by any
    safetensors library:

    - one tensor per leaf, named by its leaf-level path: dotted
        (`'layers.0.weight.bias'`) when every entry is an ASCII identifier or an index,
        else the JSON list of the path (`'["a.b","x/y",-1]'`). Every path has exactly
        one name, so no two leaves can collide. A path entry that is neither a `str`
        nor an `int` (a tuple or float dict key) is refused when saving.
    - dtypes: natively `bool`, (unsigned) integers, `float16/32/64`, `bfloat16` and
        `complex64`; the other `ml_dtypes` (the `float8` family, `int4`, ...) as a
        `uint8` view (safetensors has codes for some float8s but its NumPy reader
        cannot read them); `complex128` as `float64` with a trailing axis of 2; a
        typed PRNG key as its `jax.random.key_data` (`uint32`). The metadata records
        the real dtype;
    - the metadata entry `'eqx_collective'`: a JSON text
        `{"format": "eqx_collective.states", "version": 2, "states": [...]}` with one
        record per state: `path` (a JSON list of `str` and `int`), `type` (the state's
        class name), `tag`, `shared`, `ensemble_shape` and `leaves`, one entry per
        tensor: `name`, `dtype` (the real dtype, or `"key"`), and when needed `unit`
        (a record of a `brainunit.Unit`: `repr`, the 7 SI exponents `dim`, `scale`,
        `base`, `factor`, `name`, `dispname`, `is_fullname`, `display_parts`),
        `python` (`"bool"`, `"int"`, `"float"` or `"complex"`: the leaf was a Python
        scalar) and `key_impl` (`"threefry2x32"`, `"rbg"` or `"unsafe_rbg"`).

    **Arguments:**

    - `file`: the path to write (`str` or `os.PathLike`; no suffix is added; the
        usual one is `.safetensors`).
    - `model`: the model whose states to save.
    - `*filters`: save only the states these select (see [`eqx_collective.Filter`][]);
        all of them by default.

    **Returns:** `None`.

    **Raises:**

    - `ValueError` if there is nothing to save; if a value is traced (call
        `save_states` outside `jax.jit`) or has a dtype the format does not know; or
        if a path cannot be written (a tuple or float dict key).
    - `OSError` (e.g. `FileNotFoundError`) if the file cannot be written.

    !!! Example

        ```python
        ec.save_states("model.safetensors", model)
        model = ec.load_states("model.safetensors", model).model
        ```
    """
    check_path(file, "save_states")
    saved = collect_states(model, filters, "save_states")
    specs = {
        name: TensorSpec(
            dtype=fmt.dtype_name(a.dtype),
            shape=a.shape,
            data_ptr=a.__array_interface__["data"][0],  # (`a.ctypes` is slower)
            data_len=a.nbytes,
        )
        for name, a in saved.arrays.items()
    }
    metadata = {fmt.METADATA_KEY: fmt.dumps(saved.metadata)}
    target = os.fspath(file)
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"`save_states` cannot write {target!r}: the directory {directory!r} does "
            f"not exist. Create it first."
        )
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        serialize_file(specs, tmp, metadata=metadata)  # `saved` keeps the data alive
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_states(
    file: File,
    model: PyTree,
    *,
    strict: bool = False,
    rename: Rename | None = None,
) -> LoadResult:
    """Loads state values saved by [`eqx_collective.save_states`][] into `model`, with
    the checks of [`eqx_collective.assign_state_values`][] (structure, shape, safe
    dtype casts, units), and reports what it did.

    The file is read (memory-mapped) and checked in full before anything is assigned;
    on any error the model is left as it was (as always, the input model is never
    modified). Loading never unpickles or evaluates anything: safetensors checks the
    header and the tensor offsets, the metadata is parsed as JSON and checked field by
    field, dtypes come from a fixed list of names, and units are rebuilt from numbers
    and strings. The format is described in [`eqx_collective.save_states`][].

    **Arguments:**

    - `file`: the path of the file (`str` or `os.PathLike`).
    - `model`: the model to load into; its states define what is expected.
    - `strict`: if `True`, leaves of the file that match nothing in the model, or
        leaves of the model that the file does not hold, are an error.
    - `rename`: loads the checkpoint of a refactored model. Either a mapping from old
        paths (or path prefixes) to new ones, tuples or dotted strings
        (`{"encoder": "layers.0"}` renames every leaf below `encoder`; the longest
        matching prefix wins), or a function from a leaf's saved tuple path to its
        new path (tuple or dotted string), or `None` to leave that leaf out.

    **Returns:**

    An [`eqx_collective.LoadResult`][] `(model, unexpected, missing, converted)` of
    leaf-level tuple paths. Take the first three as
    `model, unexpected, missing = load_states(...)[:3]`.

    **Raises:**

    - `FileNotFoundError` if there is no file at `file`; `IsADirectoryError` for a
        directory (a sharded checkpoint is loaded with
        [`eqx_collective.load_sharded`][]).
    - `ValueError` naming the file and what is wrong: not a checkpoint of this
        library, corrupted or truncated, invalid metadata, a newer format version; a
        value that fails a check (the file of another model); a state saved as shared,
        or with other ensemble axes, than in `model`; no saved leaf matching the model
        at all; two leaves renamed to one path; or, with `strict=True`, unexpected or
        missing leaves.

    !!! Example

        ```python
        ec.save_states("rnn.safetensors", rnn)
        rnn, unexpected, missing, converted = ec.load_states("rnn.safetensors", rnn)
        assert unexpected == missing == converted == []
        ```
    """
    check_path(file, "load_states")
    name = repr(os.fspath(file))
    if not os.path.exists(file):
        raise FileNotFoundError(
            f"`load_states` found no checkpoint at {name}. Check the path (no suffix "
            f"is added to it)."
        )
    if os.path.isdir(file):
        raise IsADirectoryError(
            f"`load_states` was given the directory {name}; pass the path of the "
            f"file written by `save_states` (a directory written by `save_sharded` is "
            f"loaded with `load_sharded`)."
        )
    try:
        values, records = _read(file)
    except fmt.BadFile as e:
        raise ValueError(
            f"`load_states` cannot load {name}: {e}. Pass a file written by "
            f"`eqx_collective.save_states`."
        ) from None
    values, records = renamed("load_states", name, values, records, rename)
    return finish_load(name, "load_states", model, values, records, strict=strict)


def _read(file: File) -> tuple[dict[Path, Any], dict[Path, dict]]:
    """The values of a checkpoint file by leaf path, and the state record of each;
    `BadFile` if its content is not a valid checkpoint."""
    try:
        with safe_open(file, framework="np") as f:
            metadata = fmt.loads((f.metadata() or {}).get(fmt.METADATA_KEY))
            entries = {
                e["name"]: (e, r) for r in metadata["states"] for e in r["leaves"]
            }
            names = set(f.keys())
            extra, absent = (
                sorted(names - entries.keys()),
                sorted(entries.keys() - names),
            )
            fmt.expect(not extra, f"it holds tensors not in its metadata: {extra}")
            fmt.expect(not absent, f"the tensors {absent} of its metadata are absent")
            try:
                tensors = f.get_tensors()
            except (AttributeError, TypeError):  # a dtype code NumPy cannot read
                _check_dtypes(f, entries, {})
                raise
            _check_dtypes(f, entries, tensors)
    except SafetensorError as e:
        raise fmt.BadFile(
            f"it is not a valid safetensors file; it may be corrupted or truncated "
            f"({e})"
        ) from None
    values, records = {}, {}
    for name, (entry, record) in entries.items():
        values[entry["path"]] = fmt.finish_leaf(
            fmt.from_stored(tensors[name], entry), entry
        )
        records[entry["path"]] = record
    return values, records


def _check_dtypes(f: Any, entries: dict, tensors: dict) -> None:
    """`BadFile` if a tensor is not stored as its metadata's dtype is: checked on
    the NumPy arrays `tensors` read (cheap), or, for those not read, on safetensors'
    dtype codes."""
    for name, (entry, _) in entries.items():
        x = tensors.get(name)
        if x is not None and x.dtype == fmt.storage_dtype(entry):
            continue
        code = f.get_slice(name).get_dtype()
        if code != _STORED_AS[entry["dtype"]]:
            raise fmt.BadFile(
                f"the tensor {name!r} is stored as {code}, but its metadata says "
                f"{entry['dtype']} (stored as {_STORED_AS[entry['dtype']]})"
            )


def _renamer(rename: Rename | None, op: str) -> Callable[[Path], Path | None]:
    """`rename` as a function from saved leaf paths to new ones (or `None`)."""
    if rename is None:
        return lambda path: path
    if isinstance(rename, Mapping):
        prefixes = {as_path(k): as_path(v) for k, v in rename.items()}
        lengths = sorted({len(k) for k in prefixes}, reverse=True)

        def by_prefix(path):
            for n in lengths:
                new = prefixes.get(path[:n]) if n <= len(path) else None
                if new is not None:
                    return new + path[n:]
            return path

        return by_prefix
    if callable(rename):

        def call(path):
            new = rename(path)
            return None if new is None else as_path(new)

        return call
    raise TypeError(
        f"`{op}(..., rename=...)` takes a mapping from old paths to new ones or a "
        f"function of a path, but got {type(rename).__name__}."
    )


def renamed(op: str, name: str, values: dict, records: dict, rename: Rename | None):
    """`values` and `records` keyed by the new paths that `rename` gives."""
    fn = _renamer(rename, op)
    new_values, new_records, origin = {}, {}, {}
    for path, value in values.items():
        new = fn(path)
        if new is None:
            continue
        if new in origin:
            raise ValueError(
                f"`{op}` cannot load {name}: `rename` gives the saved leaves "
                f"{path_repr(origin[new])} and {path_repr(path)} the same path "
                f"{path_repr(new)}. Give them distinct paths."
            )
        origin[new] = path
        new_values[new], new_records[new] = value, records[path]
    return new_values, new_records


def finish_load(
    name: str,
    op: str,
    model: PyTree,
    values: dict[Path, Any],
    records: dict[Path, dict],
    *,
    strict: bool,
) -> LoadResult:
    """Assigns the values read from a checkpoint (keyed by their new paths) to `model`
    and builds the report (shared by `load_states` and `load_sharded`)."""
    index = PlaceIndex(iter_states(model))
    try:
        places = {path: index.lookup(path) for path in values}
        _check_records(name, op, records, index, places)
        result = assign(model, index, (values,), strict)
    except ValueError as e:
        raise ValueError(
            f"`{op}` cannot load {name} into this model (is it the file of another "
            f"model?):\n{e}"
        ) from None
    if values and len(result.unexpected) == len(values):
        raise ValueError(
            f"`{op}` cannot load {name} into this model: none of its {len(values)} "
            f"saved leaves matches a leaf of the model (e.g. "
            f"{path_repr(next(iter(values)))}), so it is the file of another model. "
            f"Check the file, pass `rename=` if the model was refactored, or assign a "
            f"subset with `assign_state_values`."
        )
    found = dict(index.found)
    missing = []
    for path in result.missing:
        if path in found:  # a whole state: its leaves
            missing += [p for p, _ in iter_value_leaves(path, found[path].value)]
        else:
            missing.append(path)
    converted = [
        path
        for path, value in values.items()
        if (where := places[path]) is not None
        and _converted(index.leaf_at(where), value)
    ]
    unexpected = cast(list[Path], list(result.unexpected))  # (all keys are tuples)
    return LoadResult(result.model, unexpected, missing, converted)


def _converted(old: Any, new: Any) -> bool:
    """Whether assigning `new` in place of `old` converted it (dtype, unit, kind)."""
    if old is None:  # a sub-tree, checked leaf by leaf
        return False
    if isinstance(old, u.Quantity) or isinstance(new, u.Quantity):
        if not (isinstance(old, u.Quantity) and isinstance(new, u.Quantity)):
            return True
        if old.unit != new.unit:
            return True
        old, new = old.mantissa, new.mantissa
    if type(new) in (bool, int, float, complex):
        return type(old) is not type(new)
    return getattr(old, "dtype", None) != getattr(new, "dtype", None)


def _check_records(name, op, records: dict, index: PlaceIndex, places: dict) -> None:
    """Refuses a file whose states were shared (or had other ensemble axes) where the
    model's are not, naming each such state."""
    wrong, seen = {}, set()
    for path, record in records.items():
        where = places.get(path)
        if where is None or (id(record), where[0]) in seen:
            continue
        seen.add((id(record), where[0]))
        state_path, state = index.found[where[0]]
        ensemble = list(getattr(state, "ensemble_shape", ()))
        if record["shared"] != is_shared(state):
            saved = "shared" if record["shared"] else "batched"
            other = "batched" if record["shared"] else "shared"
            wrong[state_path] = f"saved {saved}, {other} in the model"
        elif record["ensemble_shape"] != ensemble:
            wrong[state_path] = (
                f"saved with ensemble axes {tuple(record['ensemble_shape'])}, "
                f"{tuple(ensemble)} in the model"
            )
    if wrong:
        listing = "; ".join(f"{path_repr(p)} ({w})" for p, w in wrong.items())
        raise ValueError(
            f"`{op}` cannot load {name} into this model: these states are shared "
            f"between ensemble members, or have other ensemble axes, in one and not "
            f"in the other: {listing}. Load it into a model built the same way (the "
            f"same ensemble size and `state_to_exclude` for `vmap_init_all_states`)."
        )
