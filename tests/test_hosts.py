"""Many hosts: two processes with two CPU devices each, `jax.distributed.initialize`
after ordinary top-of-file imports, an ensemble sharded over the four global devices.
The script of `docs/concepts/hosts.md` runs as it is shown, and a stricter one checks
what each process holds and gets back."""

import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path


DOCS = Path(__file__).resolve().parent.parent / "docs" / "concepts" / "hosts.md"

STRICT = textwrap.dedent(
    """
    import sys

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import eqx_collective as ec


    address, process_id, directory = sys.argv[1], int(sys.argv[3]), sys.argv[4]
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(address, num_processes=2, process_id=process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    assert jax.local_device_count() == 2

    key = jax.random.key(0)
    cells = ec.make_ensemble(lambda k: ec.nn.GRUCell(3, 5, key=k), key, 8)
    cells = ec.vmap_init_all_states(cells, batch_size=2, key=key)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("ensemble",))
    sharded = ec.shard_ensemble(cells, mesh)
    w = ec.leaf_values(sharded)[("Wh", "weight", "weight")]
    assert len(w.addressable_shards) == 2 and not w.is_fully_addressable
    assert {s.data.shape[0] for s in w.addressable_shards} == {2}

    @eqx.filter_jit
    def forward(ens, x):
        return eqx.filter_vmap(lambda c, x: c(x), in_axes=(ec.ensemble_in_axes(ens), None))(ens, x)

    x = jnp.ones((2, 3))
    y, stepped = forward(sharded, x)
    y_local, _ = forward(cells, x)  # the same computation, unsharded, in each process
    for shard in y.addressable_shards:
        np.testing.assert_allclose(shard.data, y_local[shard.index], rtol=1e-6)

    reset = ec.vmap_reset_all_states(stepped)
    again = ec.vmap_init_all_states(stepped, batch_size=2, key=key)
    called = ec.vmap_call_all_fns(stepped, "reset_state", fn_if_not_exist="pass")
    for tree in (reset, again, called):
        h = ec.leaf_values(tree)[("h",)]
        assert h.sharding.is_equivalent_to(w.sharding, h.ndim), h.sharding
        assert ec.ensemble_shape(tree) == (8,)

    ec.save_sharded(directory, stepped)
    template = ec.vmap_reset_all_states(sharded)
    loaded = ec.load_sharded(directory, template)
    assert loaded.unexpected == [] and loaded.missing == []
    for path, a in ec.leaf_values(stepped).items():
        b = ec.leaf_values(loaded.model)[path]
        assert b.sharding.is_equivalent_to(a.sharding, a.ndim), path
        for sa, sb in zip(a.addressable_shards, b.addressable_shards, strict=True):
            np.testing.assert_array_equal(sa.data, sb.data)
    print(f"process {process_id} ok", flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(script: str, directory: Path) -> list[str]:
    """Runs `script` as processes 0 and 1 of one `jax.distributed` run (arguments:
    coordinator, process count, process id, checkpoint directory); returns what each
    printed, after checking that both succeeded."""
    address = f"127.0.0.1:{_free_port()}"
    args = [address, "2", "{}", str(directory)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *(a.format(i) for a in args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        outs = [proc.communicate(timeout=300)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out
    return outs


def test_the_docs_script_runs_on_two_processes(tmp_path):
    (block,) = re.findall(r"```python \{skip\}\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert '"/shared/checkpoints/step_1"' in block
    script = block.replace('"/shared/checkpoints/step_1"', "sys.argv[4]")
    script += "print('done', jax.process_index(), y.shape)\n"
    outs = _run_two_processes(script, tmp_path / "ckpt")
    assert ["done 0 (8, 2, 5)" in outs[0], "done 1 (8, 2, 5)" in outs[1]] == [
        True,
        True,
    ]


def test_an_ensemble_sharded_over_two_processes(tmp_path):
    outs = _run_two_processes(STRICT, tmp_path / "ckpt")
    assert ["process 0 ok" in outs[0], "process 1 ok" in outs[1]] == [True, True]
