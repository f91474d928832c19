"""Helpers of the test suite: tree comparisons (the project's own
`eqx_collective.testing` assertions, so that the suite exercises them), and a runner
for scripts that need several simulated devices."""

import os
import subprocess
import sys

from eqx_collective.testing import (
    assert_jit_matches_eager as assert_jit_matches_eager,
    assert_member_matches as assert_member_matches,
    assert_pure as assert_pure,
    assert_trees_equal as assert_trees_equal,
)


def run_on_devices(script: str, devices: int = 8) -> str:
    """Runs `script` in a new Python process with `devices` simulated CPU devices (JAX
    fixes the device count when it starts); asserts it succeeds; returns its output."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout
