"""Test setup: 8 simulated CPU devices, so sharding is exercised without accelerators.

``chex.set_n_cpu_devices`` must run before JAX creates its CPU backend, which is why it lives
here (pytest imports this file before any test module).
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import chex  # noqa: E402  (after JAX_PLATFORMS, before any backend exists)

chex.set_n_cpu_devices(8)
