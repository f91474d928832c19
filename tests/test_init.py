"""Importing the package: no JAX computation, no device query, so that device
settings and `jax.distributed.initialize()` still work after ordinary imports."""

import subprocess
import sys
import textwrap


def test_importing_runs_no_jax_computation():
    script = textwrap.dedent(
        """
        import jax

        import eqx_collective
        import eqx_collective.nn
        import eqx_collective.testing

        jax.config.update("jax_num_cpu_devices", 3)  # refused once a backend started
        print(jax.device_count())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        env={"JAX_PLATFORMS": "cpu", "PATH": ""},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3"]
