"""Tests for `save_states` / `load_states`: round trips, the format, and refusals."""

import io
import json
import os
import zipfile

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import eqx_collective as ec


class Linear(eqx.Module):
    weight: ec.ParamState


class Model(eqx.Module):
    layers: tuple
    h: ec.HiddenState  # float32
    v: ec.HiddenState  # Quantity in mV / ms
    count: ec.LongTermState  # int32
    low: ec.ParamState  # bfloat16
    flag: ec.State  # bool, tagged


def make_model(seed: int = 0, n_layers: int = 2, ensemble: int | None = None):
    rng = np.random.default_rng(seed)
    lead = () if ensemble is None else (ensemble,)

    def arr(*shape, dtype=np.float32):
        return jnp.asarray(rng.standard_normal(lead + shape).astype(dtype))

    return Model(
        layers=tuple(
            Linear(ec.ParamState({"weight": arr(3, 2), "bias": arr(2)}))
            for _ in range(n_layers)
        ),
        h=ec.HiddenState(arr(4)),
        v=ec.HiddenState(arr(4) * (u.mV / u.ms)),
        count=ec.LongTermState(
            jnp.asarray(rng.integers(-(2**31), 2**31 - 1, (2,)), jnp.int32),
            shared=ensemble is not None,
        ),
        low=ec.ParamState(arr(3).astype(jnp.bfloat16)),
        flag=ec.State(jnp.asarray(rng.integers(0, 2, lead + (2,)), bool), tag="f"),
    )


def leaves(x):
    out = []
    for leaf in jax.tree.leaves(x, is_leaf=lambda y: isinstance(y, u.Quantity)):
        if isinstance(leaf, u.Quantity):
            out.append(("unit", str(leaf.unit), leaf.unit.dim, leaf.unit.scale))
            leaf = leaf.mantissa
        leaf = np.asarray(leaf)
        out.append((leaf.dtype, leaf.shape, leaf.tobytes()))
    return out


def saved(model) -> bytes:
    buffer = io.BytesIO()
    ec.save_states(buffer, model)
    return buffer.getvalue()


def load_bytes(data: bytes, model, **kwargs):
    return ec.load_states(io.BytesIO(data), model, **kwargs)


def rewrite(data: bytes, change) -> bytes:
    """The archive `data` with its members passed through `change(dict) -> dict`."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    buffer = io.BytesIO()
    np.savez(buffer, **change(members))
    return buffer.getvalue()


def metadata_of(members: dict) -> dict:
    return json.loads(members["__eqx_collective__"].tobytes())


def with_metadata(members: dict, metadata: dict) -> dict:
    text = json.dumps(metadata).encode()
    return {**members, "__eqx_collective__": np.frombuffer(text, np.uint8)}


# ----------------------------------------------------------------- round trips


@settings(max_examples=15)
@given(
    seed=st.integers(0, 2**31),
    n_layers=st.integers(0, 3),
    ensemble=st.sampled_from([None, 1, 3]),
)
def test_save_load_round_trips_bit_exactly(seed, n_layers, ensemble):
    model = make_model(seed, n_layers, ensemble)
    other = make_model(seed + 1, n_layers, ensemble)  # same structure, other values
    assert leaves(other) != leaves(model)
    loaded, unexpected, missing = load_bytes(saved(model), other)
    assert unexpected == [] and missing == []
    assert leaves(loaded) == leaves(model)
    assert jax.tree.structure(loaded) == jax.tree.structure(model)
    assert loaded.v.value.unit == u.mV / u.ms
    assert loaded.count.shared is (ensemble is not None)
    assert loaded.flag.tag == "f"


def test_round_trip_through_a_path_and_the_file_layout(tmp_path):
    model = make_model(0)
    file = tmp_path / "model.ckpt"  # no `.npz` is appended
    ec.save_states(file, model)
    assert os.listdir(tmp_path) == ["model.ckpt"]  # no temporary file left behind
    loaded, unexpected, missing = ec.load_states(str(file), make_model(1))
    assert unexpected == [] and missing == []
    assert leaves(loaded) == leaves(model)

    # plain NumPy reads it, without pickle: dotted leaf-level names + JSON metadata
    with np.load(file, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(
            [
                "layers.0.weight.bias",
                "layers.0.weight.weight",
                "layers.1.weight.bias",
                "layers.1.weight.weight",
                "h",
                "v",
                "count",
                "low",
                "flag",
                "__eqx_collective__",
            ]
        )
        assert npz["low"].dtype == np.uint16  # bfloat16 as a uint16 view
        assert np.array_equal(
            npz["low"].view(jnp.bfloat16), np.asarray(model.low.value)
        )
        assert np.array_equal(npz["v"], np.asarray(model.v.value.mantissa))
        metadata = json.loads(npz["__eqx_collective__"].tobytes())
    assert metadata["format"] == "eqx_collective.states" and metadata["version"] == 1
    by_name = {e["name"]: e for e in metadata["entries"]}
    assert by_name["low"]["dtype"] == "bfloat16"
    assert by_name["layers.1.weight.bias"]["path"] == ["layers", 1, "weight", "bias"]
    assert by_name["v"]["unit"]["dim"] == [2.0, 1.0, -4.0, -1.0, 0.0, 0.0, 0.0]
    assert by_name["v"]["unit"]["repr"] == "mV / ms"
    assert by_name["h"]["unit"] is None
    states = {tuple(s["path"]): s for s in metadata["states"]}
    assert states[("flag",)]["tag"] == "f" and states[("h",)]["type"] == "HiddenState"


def test_saving_overwrites_and_a_filter_saves_a_subset(tmp_path):
    file = tmp_path / "m.npz"
    ec.save_states(file, make_model(5))
    model = make_model(0)
    ec.save_states(file, model, ec.ParamState)
    loaded, unexpected, missing = ec.load_states(file, make_model(1))
    assert unexpected == []
    assert missing == [("h",), ("v",), ("count",), ("flag",)]
    assert leaves(loaded.layers) == leaves(model.layers)
    assert leaves(loaded.low) == leaves(model.low)
    assert leaves(loaded.h) == leaves(make_model(1).h)
    with pytest.raises(ValueError, match=r"missing key.*\('h',\)"):
        ec.load_states(file, make_model(1), strict=True)


class Odd(eqx.Module):
    s: ec.State


def test_awkward_paths_and_python_scalars_round_trip():
    model = Odd(
        ec.State(
            {
                "a.b": jnp.zeros(1),
                "7": {"x": 1.5, "y": 3, "z": True},
                "big": jnp.arange(4, dtype=jnp.uint8),
                "c": jnp.ones(2, jnp.complex64),
                "u": jnp.ones((), jnp.float16) * u.volt,
            }
        )
    )
    other = Odd(
        ec.State(
            {
                "a.b": jnp.ones(1),
                "7": {"x": 0.5, "y": 1, "z": False},
                "big": jnp.zeros(4, dtype=jnp.uint8),
                "c": jnp.zeros(2, jnp.complex64),
                "u": jnp.zeros((), jnp.float16) * u.volt,
            }
        )
    )
    loaded, unexpected, missing = load_bytes(saved(model), other)
    assert unexpected == [] and missing == []
    value = loaded.s.value
    assert value["7"] == {"x": 1.5, "y": 3, "z": True}
    assert type(value["7"]["y"]) is int and type(value["7"]["z"]) is bool
    assert leaves(loaded) == leaves(model)


def test_a_compatible_unit_in_the_file_is_converted():
    data = saved(Odd(ec.State(jnp.asarray([1.0, 2.0]) * u.volt)))
    loaded = load_bytes(data, Odd(ec.State(jnp.zeros(2) * u.mV))).model
    assert loaded.s.value.unit == u.mV
    assert np.allclose(loaded.s.value.mantissa, [1000.0, 2000.0])


def test_saving_refuses_traced_values_and_clashing_names():
    model = Odd(ec.State({"a.b": jnp.zeros(1), "a": {"b": jnp.zeros(1)}}))
    with pytest.raises(ValueError, match="'a.b'.*taken by another leaf"):
        saved(model)

    @jax.jit
    def inside(x):
        ec.save_states(io.BytesIO(), Odd(ec.State(x)))
        return x

    with pytest.raises(ValueError, match="traced value.*outside `jax.jit`"):
        inside(jnp.zeros(2))


def test_saving_into_a_missing_directory(tmp_path):
    target = tmp_path / "nowhere" / "m.npz"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ec.save_states(target, make_model())


# ------------------------------------------------------------------ refusals


def refused_on_load(data, model, *fragments, error=ValueError, **kwargs):
    before = leaves(model)
    with pytest.raises(error) as info:
        load_bytes(data, model, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert leaves(model) == before
    return message


def test_missing_file_and_directory(tmp_path):
    model = make_model()
    missing = tmp_path / "absent.npz"
    with pytest.raises(FileNotFoundError, match=r"absent\.npz"):
        ec.load_states(missing, model)
    with pytest.raises(IsADirectoryError, match="directory"):
        ec.load_states(tmp_path, model)


def test_truncated_file(tmp_path):
    data = saved(make_model())
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        file = tmp_path / f"cut{cut}.npz"
        file.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"cut{cut}\.npz.*(truncated|corrupted)"):
            ec.load_states(file, make_model())


def test_corrupted_bytes_are_detected():
    data = saved(make_model())
    # flip bytes inside the stored array data of one member: the zip CRC catches it
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("h.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    offset = start + info.compress_size - 4  # inside the array data, not the header
    corrupted = bytearray(data)
    corrupted[offset] ^= 0xFF
    refused_on_load(bytes(corrupted), make_model(), "corrupted")
    # garbage that is not an archive at all
    refused_on_load(b"\x00" * 100, make_model(), "not")


def test_a_file_of_another_model():
    data = saved(make_model(0, n_layers=2))
    # other shapes: refused, naming the path and the shapes
    wider = eqx.tree_at(lambda m: m.h, make_model(0), ec.HiddenState(jnp.zeros(5)))
    refused_on_load(data, wider, "another model", "'h'", "float32[5]", "float32[4]")
    # other keys entirely: refused even without `strict`
    refused_on_load(data, Odd(ec.State(jnp.zeros(1))), "none of its", "another model")
    # some keys in common: a partial load, reported
    fewer = make_model(1, n_layers=1)
    loaded, unexpected, missing = load_bytes(data, fewer)
    assert unexpected == [
        ("layers", 1, "weight", "bias"),
        ("layers", 1, "weight", "weight"),
    ]
    assert missing == []
    assert leaves(loaded.h) == leaves(make_model(0).h)
    refused_on_load(data, fewer, "strict=True", "unexpected", strict=True)


def test_shared_flags_must_agree():
    ensemble = make_model(0, ensemble=2)  # `count` is shared
    batched = eqx.tree_at(
        lambda m: m.count, ensemble, ec.LongTermState(ensemble.count.value)
    )
    refused_on_load(saved(ensemble), batched, "'count'", "shared")
    refused_on_load(saved(batched), ensemble, "'count'", "batched")


class Evil:
    """Pickling this runs code when it is unpickled."""

    def __init__(self, flag_file):
        self.flag_file = str(flag_file)

    def __reduce__(self):
        code = f"open({self.flag_file!r}, 'w').write('executed')"
        return (exec, (code,))


def test_a_pickled_object_array_is_refused_not_executed(tmp_path):
    flag = tmp_path / "flag"
    model = make_model()
    evil = np.array([Evil(flag)], dtype=object)

    # 1. a valid checkpoint whose `h` entry is replaced by a pickled object array
    def swap(members):
        return {**members, "h": evil}

    data = rewrite(saved(model), swap)
    refused_on_load(data, model, "pickled", "never unpickles")
    # 2. a bare `.npy` pickle
    buffer = io.BytesIO()
    np.save(buffer, evil, allow_pickle=True)
    refused_on_load(buffer.getvalue(), model, "pickled")
    # 3. the metadata entry itself as an object array
    data = rewrite(saved(model), lambda m: {**m, "__eqx_collective__": evil})
    refused_on_load(data, model, "pickled")
    assert not flag.exists()
    # (the payload does run when unpickled: the test would see it)
    np.load(io.BytesIO(buffer.getvalue()), allow_pickle=True)
    assert flag.read_text() == "executed"


def test_invalid_metadata_is_refused():
    model = make_model()
    data = saved(model)

    def meta(change):
        def f(members):
            metadata = metadata_of(members)
            change(metadata)
            return with_metadata(members, metadata)

        return rewrite(data, f)

    def set_unit_dim(m):
        next(e for e in m["entries"] if e["name"] == "v")["unit"]["dim"] = "__import__"

    def set_unit_name(m):
        next(e for e in m["entries"] if e["name"] == "v")["unit"]["name"] = ["x"]

    def set_dtype(m):
        next(e for e in m["entries"] if e["name"] == "h")["dtype"] = "object"

    def set_shape(m):
        next(e for e in m["entries"] if e["name"] == "h")["shape"] = [5]

    def drop_entry(m):
        m["entries"] = [e for e in m["entries"] if e["name"] != "h"]

    def bad_state(m):
        m["entries"][0]["state"] = 99

    cases = [
        (lambda m: m.update(version=2), "version 2", "upgrade"),
        (lambda m: m.update(format="other"), "format"),
        (set_unit_dim, "'dim'"),
        (set_unit_name, "'name'"),
        (set_dtype, "unknown dtype 'object'"),
        (set_shape, "'h'", "metadata says"),
        (drop_entry, "not in its metadata", "'h'"),
        (bad_state, "refers to no state"),
    ]
    for change, *fragments in cases:
        refused_on_load(meta(change), model, *fragments)
    # no metadata at all, or metadata that is not JSON
    no_meta = rewrite(data, lambda m: {k: v for k, v in m.items() if k != "h"})
    refused_on_load(no_meta, model, "'h' is missing")
    bare = rewrite(data, lambda m: {"h": m["h"]})
    refused_on_load(bare, model, "no '__eqx_collective__' metadata")
    not_json = rewrite(
        data,
        lambda m: {**m, "__eqx_collective__": np.frombuffer(b"{not json", np.uint8)},
    )
    refused_on_load(not_json, model, "corrupted")


def test_load_under_a_dtype_change_is_checked():
    """A file whose dtype differs from the model's: safe casts only."""
    floats = Odd(ec.State(jnp.zeros(3, jnp.float32)))
    halves = Odd(ec.State(jnp.ones(3, jnp.float16)))
    loaded = load_bytes(saved(halves), floats).model  # float16 -> float32: safe
    assert loaded.s.value.dtype == jnp.float32
    assert np.array_equal(loaded.s.value, np.ones(3))
    refused_on_load(saved(floats), halves, "'s'", "float16[3]", "float32[3]")
