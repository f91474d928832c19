"""Checkpoint files: `save_states` and `load_states` (safetensors), and the
`LoadResult` that loads return."""

import functools
import io
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, cast, TypeGuard

import equinox as eqx
import numpy as np
from jaxtyping import PyTree
from safetensors import (
    safe_open,
    SafetensorError,
    serialize,
    serialize_file,
    TensorSpec,
)

from . import _checkpoint_format as fmt
from ._assign import assign, AssignResult, PlaceIndex, put_like
from ._ensemble import present_axes
from ._fields import field
from ._filters import Filter
from ._paths import as_path, iter_value_leaves, Path, path_repr
from ._state import is_shared
from ._views import states as _states
from ._walk import iter_states


File = str | os.PathLike | BinaryIO
Rename = Mapping[Path | str, Path | str] | Callable[[Path], Path | str | None]


class LoadResult(AssignResult):
    """What [`eqx_collective.load_states`][] and [`eqx_collective.load_sharded`][]
    return: the shape of [`eqx_collective.AssignResult`][], a named tuple `(model,
    unexpected, missing)` with `converted` by name, so that `model, unexpected,
    missing = load_states(...)` works.

    Every key is a *leaf-level* tuple path (`('layers', 0, 'weight', 'bias')`; for an
    array- or `Quantity`-valued state, its own path), named as in the model (after
    `rename`).

    **Fields:**

    - `model`: the model with the loaded values (the input model is left untouched).
    - `unexpected`: the leaves of the file that match nothing in the model, in the
        file's order.
    - `missing`: the leaves of the model that the file does not hold (they keep their
        values), in the model's order.
    - `converted` (by name only): the loaded leaves whose value was converted to fit
        the model: a safe dtype cast (`float16` into a `float32` state), a unit
        conversion (`volt` into a `mV` state) or a Python scalar made an array.
    """


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


def is_path(file: Any, op: str, *, write: bool = False) -> TypeGuard[str | os.PathLike]:
    """Whether `file` is a path (else a binary file object); a `TypeError` if it is
    neither."""
    if isinstance(file, (str, os.PathLike)):
        return True
    if hasattr(file, "write" if write else "read"):
        return False
    raise TypeError(
        f"`{op}` takes the path of the checkpoint (a `str` or `os.PathLike`) or a "
        f"binary file object open for {'writing' if write else 'reading'}, but got "
        f"{type(file).__name__}."
    )


def save_states(file: File, model: PyTree, *filters: Filter) -> None:
    """Saves the values of `model`'s states to a [safetensors](https://huggingface.co/docs/safetensors)
    file, which [`eqx_collective.load_states`][] reads back.

    Every array leaf counts: the leaves of every [`eqx_collective.State`][] and the
    raw arrays of plain Equinox modules alike. Values are saved exactly: every dtype bit
    for bit, `brainunit.Quantity` values in their own unit, typed PRNG keys
    (`jax.random.key`) with their implementation. A stacked ensemble is saved like any
    model, with the ensemble axes and shared states of its states recorded.

    Writing to a path is atomic: the file is written next to it and moved into place,
    so a crash never leaves a truncated checkpoint; it gets the permissions the umask
    gives, as `open(file, "wb")` would.

    **File format** (version 2): a standard safetensors file, readable by any
    safetensors library:

    - one tensor per leaf, named by its leaf-level path: dotted
        (`'layers.0.weight.bias'`) when every entry is an ASCII identifier or an index,
        else the JSON list of the path (`'["a.b","x/y",-1]'`). Every path has exactly
        one name, so no two leaves can collide (the same names as in
        [`eqx_collective.save_sharded`][]). A path entry that is neither a `str` nor an
        `int` (a tuple or float dict key) is refused when saving.
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
        (a `brainunit.Unit` as its text `repr`, the 7 SI exponents `dim`, `scale` and
        `factor`), `python` (`"bool"`, `"int"`, `"float"` or `"complex"`: the leaf was
        a Python scalar) and `key_impl` (`"threefry2x32"`, `"rbg"` or `"unsafe_rbg"`).

    **Arguments:**

    - `file`: the path to write (`str` or `os.PathLike`; no suffix is added; the
        usual one is `.safetensors`), or a binary file object open for writing
        (`open(path, "wb")`, `io.BytesIO()`), as for `eqx.tree_serialise_leaves`.
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
        model, unexpected, missing = ec.load_states("model.safetensors", model)
        ```
    """
    path = bool(is_path(file, "save_states", write=True))
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
    if not path:  # `saved` keeps the data alive while it is written
        cast(BinaryIO, file).write(serialize(specs, metadata=metadata))
        return
    target = os.fspath(cast(str | os.PathLike, file))
    directory, base = os.path.split(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"`save_states` cannot write {target!r}: the directory {directory!r} does "
            f"not exist. Create it first."
        )
    tmp = os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")
    try:
        # the mode `open` gives a new file (safetensors' own is private), learnt by
        # creating the file as `open` does, then written by safetensors
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = os.stat(tmp).st_mode & 0o777
        serialize_file(specs, tmp, metadata=metadata)
        os.chmod(tmp, mode)
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

    `model` is the template: loading fills in values, never creates states (as
    `eqx.tree_deserialise_leaves`). It may be abstract: for a big model, pass
    `eqx.filter_eval_shape(make_model, ...)` (with its states initialised) instead of
    a model built with random values, and loading allocates only the loaded arrays.
    The file is read tensor by tensor, each into memory that JAX's CPU client takes
    as the device array's own (on other devices, each chunk goes to the device
    before the next is read), so loading holds little more than the model itself. A
    state that the file holds but that `model` has not created yet (a recurrent
    cell's hidden state before [`eqx_collective.init_all_states`][]) is refused,
    naming it.

    Everything is checked before anything is assigned; on any error the model is left
    as it was (as always, the input model is never modified). Loading never unpickles
    or evaluates anything: safetensors checks the header and the tensor offsets, the
    metadata is parsed as JSON and checked against a fixed schema, dtypes come from a
    fixed list of names, and units are rebuilt from numbers and strings. The format is
    described in [`eqx_collective.save_states`][].

    **Arguments:**

    - `file`: the path of the file (`str` or `os.PathLike`), or a binary file object
        open for reading (`open(path, "rb")`, `io.BytesIO(data)`), read from its
        current position.
    - `model`: the model to load into; its states define what is expected.
    - `strict`: if `True`, leaves of the file that match nothing in the model, or
        leaves of the model that the file does not hold, are an error.
    - `rename`: loads the checkpoint of a refactored model. Either a mapping from old
        paths (or path prefixes) to new ones, tuples or dotted strings
        (`{"encoder": "layers.0"}` renames every leaf below `encoder`; the longest
        matching prefix wins), or a function from a leaf's saved tuple path to its
        new path (tuple or dotted string), or `None` to leave that leaf out.

    **Returns:**

    An [`eqx_collective.LoadResult`][] `(model, unexpected, missing)` of leaf-level
    tuple paths, with `converted` by name.

    **Raises:**

    - `FileNotFoundError` if there is no file at `file`; `IsADirectoryError` for a
        directory (a sharded checkpoint is loaded with
        [`eqx_collective.load_sharded`][]).
    - `ValueError` naming the file and what is wrong: not a checkpoint of this
        library, corrupted or truncated, invalid metadata, a newer format version; a
        value that fails a check (the file of another model); a state saved as shared,
        or with other ensemble axes, than in `model`; a state `model` has not created;
        no saved leaf matching the model at all; two leaves renamed to one path; or,
        with `strict=True`, unexpected or missing leaves.

    !!! Example

        ```python
        ec.save_states("rnn.safetensors", rnn)
        rnn, unexpected, missing = ec.load_states("rnn.safetensors", rnn)
        assert unexpected == missing == []
        ```
    """
    if is_path(file, "load_states"):
        name = repr(os.fspath(file))
        _check_exists(file, name)
        return _load(file, name, model, strict, rename)
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as tmp:
        # (safetensors reads files by name only)
        shutil.copyfileobj(cast(BinaryIO, file), tmp)
        tmp.flush()
        name = repr(getattr(file, "name", None) or f"the {type(file).__name__}")
        return _load(tmp.name, name, model, strict, rename)


def _check_exists(file: Any, name: str) -> None:
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


def _load(file, name: str, model, strict: bool, rename) -> LoadResult:
    try:
        try:  # (safetensors checks the header and offsets; `pread`: no memory map)
            with safe_open(file, framework="np", backend="pread"):
                pass
        except SafetensorError as e:
            raise fmt.BadFile(
                f"it is not a valid safetensors file; it may be corrupted or "
                f"truncated ({e})"
            ) from None
        with open(file, "rb") as fh:
            start, header = _header(fh)
            texts = header.pop("__metadata__", None) or {}
            leaves = fmt.loads(texts.get(fmt.METADATA_KEY))
            names, listed = set(header), {e["name"] for e, _ in leaves.values()}
            extra, absent = sorted(names - listed), sorted(listed - names)
            fmt.expect(not extra, f"it holds tensors not in its metadata: {extra}")
            fmt.expect(not absent, f"the tensors {absent} of its metadata are absent")
            leaves = renamed("load_states", name, leaves, rename)
            index, places = match(name, "load_states", model, leaves)
            values = _read(fh, start, header, leaves, index, places)
        return finish_load(name, "load_states", model, index, places, values, strict)
    except fmt.BadFile as e:
        raise ValueError(
            f"`load_states` cannot load {name}: {e}. Pass a file written by "
            f"`eqx_collective.save_states`."
        ) from None


def _header(fh: io.BufferedIOBase) -> tuple[int, dict]:
    """Where the tensors' bytes start in the file, and its header (checked by
    `safe_open`): each tensor's `dtype` code, `shape` and `data_offsets`, and the
    `'__metadata__'` texts. It is read as the format defines it (8 bytes: its length;
    then JSON) because safetensors' API tells no tensor's offset, and `_read` needs
    the offsets to read each tensor into memory of its own."""
    size = int.from_bytes(fh.read(8), "little")
    return 8 + size, json.loads(fh.read(size))


@functools.cache
def _code(dtype: np.dtype) -> str:
    """safetensors' code of `dtype` (`'F32'` for `float32`), as it writes it in the
    header of a file (learnt from an empty tensor of it, once per dtype)."""
    spec = TensorSpec(dtype=dtype.name, shape=[0], data_ptr=0, data_len=0)
    return _header(io.BytesIO(serialize({"x": spec})))[1]["x"]["dtype"]


_CHUNK = 2**20  # bytes of host copies moved to the device at once


def _read(
    fh: io.BufferedIOBase,
    start: int,
    header: dict,
    leaves: fmt.Leaves,
    index: PlaceIndex,
    places: dict,
) -> dict:
    """The leaves that match the model, by (new) path, read tensor by tensor in file
    order (`None` for the others). Arrays stored as themselves go to the device one
    chunk at a time (one `jax.device_put` each), each to the devices of the committed
    array it replaces: on CPU in the memory it was read into, elsewhere as a copy, the
    host memory being dropped as it reaches the device."""
    values: dict[Path, Any] = dict.fromkeys(leaves)
    wanted = [path for path, where in places.items() if where is not None]
    wanted.sort(key=lambda p: header[leaves[p][0]["name"]]["data_offsets"][0])
    chunk, size = [], 0
    for k, path in enumerate(wanted, 1):
        entry = leaves[path][0]
        array = _tensor(fh, start, header[entry["name"]], entry)
        if fmt.is_plain(entry):
            chunk.append((path, array, model_leaf(index, places[path])))
            size += array.nbytes
        else:
            values[path] = fmt.finish_leaf(fmt.from_stored(array, entry), entry)
        if chunk and (size >= _CHUNK or k == len(wanted)):
            paths, arrays, olds = map(list, zip(*chunk, strict=True))
            for path, array in zip(paths, put_like(arrays, olds), strict=True):
                values[path] = fmt.finish_leaf(array, leaves[path][0])
            chunk, size = [], 0
    return values


def _tensor(fh: io.BufferedIOBase, start: int, spec: dict, entry: dict) -> np.ndarray:
    """The stored array of `entry` (`spec`: its header entry), checked to have the
    stored dtype, read into memory of its own that starts at a 64-byte boundary: JAX's
    CPU client then takes that memory as the device array's instead of copying it
    (NumPy, and safetensors' reader, align to 16 bytes), so a load holds one copy of
    each tensor."""
    expected = fmt.storage_dtype(entry)
    if spec["dtype"] != _code(expected):
        raise fmt.BadFile(
            f"the tensor {entry['name']!r} is stored as {spec['dtype']}, but its "
            f"metadata says {entry['dtype']} (stored as {expected})"
        )
    begin, end = spec["data_offsets"]
    raw = np.empty(end - begin + 64, np.uint8)
    skip = -raw.ctypes.data % 64
    data = raw[skip : skip + end - begin]
    fh.seek(start + begin)
    fmt.expect(
        fh.readinto(memoryview(data)) == end - begin,
        f"the file ends inside the tensor {entry['name']!r}",
    )
    return data.view(expected).reshape(spec["shape"])


def model_leaf(index: PlaceIndex, where: Any) -> Any:
    """The model's leaf at `where` (a place of `index`), or `None` if there is none
    (no place, or a place holding a sub-tree)."""
    if where is None:
        return None
    _, sub, j = where
    leaves = index.slot(where[0]).leaves
    if j is None and not sub and len(leaves) == 1:
        j = 0  # (an array-valued state: its own path)
    return None if j is None else leaves[j]


def _renamer(rename: Rename, op: str) -> Callable[[Path], Path | None]:
    """`rename` as a function from saved leaf paths to new ones (or `None`)."""
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


def renamed(op: str, name: str, leaves: dict, rename: Rename | None) -> dict:
    """`leaves` (by saved leaf path) keyed by the new paths that `rename` gives."""
    if rename is None:
        return leaves
    fn, out, origin = _renamer(rename, op), {}, {}
    for path, leaf in leaves.items():
        new = fn(path)
        if new is None:
            continue
        if new in origin:
            raise ValueError(
                f"`{op}` cannot load {name}: `rename` gives the saved leaves "
                f"{path_repr(origin[new])} and {path_repr(path)} the same path "
                f"{path_repr(new)}. Give them distinct paths."
            )
        origin[new], out[new] = path, leaf
    return out


def _state_path(path: Path, entry: dict, record: dict) -> Path:
    """The (new) path of the state of the leaf at (new) `path`."""
    return path[: len(path) - (len(entry["path"]) - len(record["path"]))]


def match(name: str, op: str, model: PyTree, leaves: dict) -> tuple[PlaceIndex, dict]:
    """The index of `model` and the place of each loaded leaf (`None`: it matches
    nothing), keyed as `leaves` (from `renamed`: `(entry, record)` by new path), after
    the refusals that need no tensor: states the model has not created, a file of
    another model, states saved shared (or with other ensemble axes) where the
    model's are not."""
    index = PlaceIndex(iter_states(model))
    places = {path: index.lookup(path) for path in leaves}
    unmatched = [path for path, where in places.items() if where is None]
    if unmatched:
        states = [_state_path(p, *leaves[p]) for p in unmatched]
        _refuse_not_created(name, op, model, states)
    if places and len(unmatched) == len(places):
        raise ValueError(
            f"`{op}` cannot load {name} into this model: none of its {len(places)} "
            f"saved leaves matches a leaf of the model (e.g. "
            f"{path_repr(next(iter(places)))}), so it is the file of another model. "
            f"Check the file, pass `rename=` if the model was refactored, or assign a "
            f"subset with `assign_state_values`."
        )
    _check_records(name, op, leaves, index, places)
    return index, places


def finish_load(
    name: str,
    op: str,
    model: PyTree,
    index: PlaceIndex,
    places: dict,
    values: dict,
    strict: bool,
) -> LoadResult:
    """Assigns the values read from a checkpoint (keyed as `places`, from `match`) to
    `model` and builds the report (shared by `load_states` and `load_sharded`)."""
    result = assign(model, index, (values,), strict, op, name, places)
    found = dict(index.found)
    missing = []
    for path in result.missing:
        if path in found:  # a whole state: its leaves
            missing += [p for p, _ in iter_value_leaves(path, found[path].value)]
        else:
            missing.append(path)
    unexpected = [path for path, where in places.items() if where is None]
    return LoadResult(result.model, unexpected, missing, result.converted)


_ABSENT = object()


def _not_created(model: Any, path: Path) -> bool:
    """Whether `model` holds `None` at `path` or above it (a state not created yet)."""
    node = model
    for entry in path:
        if node is None:
            return True
        if isinstance(node, eqx.Module):
            node = field(node, entry, _ABSENT) if type(entry) is str else _ABSENT
        elif isinstance(node, dict):
            node = node.get(entry, _ABSENT)
        elif isinstance(node, (list, tuple)) and type(entry) is int:
            node = node[entry] if -len(node) <= entry < len(node) else _ABSENT
        else:
            return False
    return node is None


def _refuse_not_created(name: str, op: str, model: Any, state_paths: list) -> None:
    absent = list(dict.fromkeys(p for p in state_paths if _not_created(model, p)))
    if absent:
        listing = ", ".join(map(path_repr, absent[:20]))
        raise ValueError(
            f"`{op}` cannot load {name} into this model: the file holds the states "
            f"{listing}, which the model has not created yet (it holds `None` there, "
            f"as a freshly built cell does before `init_all_states`). Loading fills in "
            f"the states of the model, never creates them: call "
            f"`ec.init_all_states(model, ...)` first, as for the saved model (or "
            f"leave these states out with `rename=`, a function returning `None` for "
            f"their paths)."
        )


def _check_records(name, op, leaves: dict, index: PlaceIndex, places: dict) -> None:
    """Refuses a file whose states were shared (or had other ensemble axes) where the
    model's are not, naming each such state."""
    wrong, seen = {}, set()
    for path, (_, record) in leaves.items():
        where = places.get(path)
        if where is None or (id(record), where[0]) in seen:
            continue
        seen.add((id(record), where[0]))
        state_path, state = index.found[where[0]]
        ensemble = list(present_axes(state_path, state))
        if record["shared"] != (field(state, "shared") or is_shared(state)):
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
