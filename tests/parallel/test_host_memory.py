"""`keep_freed_host_memory`: a CPU program's temporaries are faulted in once, not on every run."""
import os
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys
from sleep_jax.parallel import keep_freed_host_memory
kept = keep_freed_host_memory() if sys.argv[1] == "keep" else False
import jax, jax.numpy as jnp
sort_sum = jax.jit(lambda x: jnp.sort(x * 2.0)[::2].sum())      # 16 MiB temporaries per run
x = jnp.arange(1 << 22, dtype=jnp.float32)[::-1]
sort_sum(x).block_until_ready()
faults = []
for _ in range(11):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    sort_sum(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, min(faults))
"""


def faults_per_run(arm: str) -> tuple[bool, int]:
    """(whether the setting applied, the fewest page faults of a run after the first): the
    steady state. With the setting the first few runs may still fault part of them before the heap settles
    (seen: up to 7 runs)."""
    out = subprocess.run([sys.executable, "-c", PROGRAM, arm], capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout.split()
    return out[0] == "True", int(out[1])


def test_kept_memory_is_not_faulted_in_again():
    kept, with_it = faults_per_run("keep")
    if not kept:
        pytest.skip("no glibc mallopt here")
    _, without = faults_per_run("default")
    assert without > 8192, f"the program re-faults only {without} pages a run without the setting: no signal"
    assert with_it < without / 4, f"{with_it} page faults a run kept against {without} without"
