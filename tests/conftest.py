"""Test setup: 8 simulated CPU devices, so sharding is exercised without accelerators, and XLA
compiling for speed of compilation (``COMPILE_FAST``), inherited by the tests' subprocesses.

``chex.set_n_cpu_devices`` must run before JAX creates its CPU backend, which is why it lives
here (pytest imports this file before any test module).
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling is most of the suite's time and its programs are tiny: XLA's CPU backend without
# LLVM's optimisation passes compiles ~35 % faster (tests/train/test_step.py, one core) and
# computes the same values within the tests' tolerances.
COMPILE_FAST = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {COMPILE_FAST}".strip()

import chex  # noqa: E402  (after JAX_PLATFORMS, before any backend exists)

chex.set_n_cpu_devices(8)
