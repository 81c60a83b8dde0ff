"""The Pallas delta rule as programs to lower or compile without running them (the GPU and TPU
compile checks and the lowering test): abstract inputs, an abstract GPU, the forward and the
gradient of a scalar of both outputs, and the text of a failure for a JSON row."""
import jax
import jax.numpy as jnp
from jax.sharding import AbstractDevice, AbstractMesh

from sleep_jax.ops.delta_rule.pallas import pallas_gated_delta_rule


def abstract_inputs(B, T, H, K, V, dtype, sharding=None):
    """ShapeDtypeStructs of (q, k [B,T,H,K], v [B,T,H,V] in `dtype`; g, beta [B,T,H] and
    initial_state [B,H,K,V] float32)."""
    shape = lambda *s, dt=dtype: jax.ShapeDtypeStruct(s, dt, sharding=sharding)
    f32 = jnp.float32
    return (shape(B, T, H, K), shape(B, T, H, K), shape(B, T, H, V), shape(B, T, H, dt=f32),
            shape(B, T, H, dt=f32), shape(B, H, K, V, dt=f32))


H100 = "NVIDIA H100 80GB HBM3"  # jax's device_kind of the card the compile checks target


def abstract_gpu(device_kind=H100):
    """A one-device abstract mesh of that GPU: under `use_abstract_mesh`, jax (>= 0.11) lowers
    Pallas Triton kernels for it with no GPU attached."""
    return AbstractMesh((1,), ("x",), abstract_device=AbstractDevice(
        device_kind=device_kind, num_cores=None, platform="gpu"))


def forward_and_gradient(backend, *, sizes=None, chunk_size=64):
    """(forward, gradient) of the Pallas kernels of `backend`, not interpreted, scale K^-0.5:
    forward(q, k, v, g, beta, initial_state) -> (o, final_state); gradient -> the gradients of
    sum(o) + sum(final_state) w.r.t. all six."""
    def forward(q, k, v, g, beta, state):
        return pallas_gated_delta_rule(q, k, v, g, beta, scale=q.shape[-1] ** -0.5,
                                       initial_state=state, chunk_size=chunk_size, backend=backend,
                                       interpret=False, sizes=sizes)

    def loss(*inputs):
        o, final_state = forward(*inputs)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(final_state)

    return forward, jax.grad(loss, argnums=tuple(range(6)))


def failure(exc) -> str:
    """A failed lowering, compile or run as one string for a JSON row: type and message (500 chars)."""
    return f"{type(exc).__name__}: {str(exc).strip()[:500]}"


def peak_bytes(compiled) -> int:
    """argument + output - alias + temp bytes of a compiled executable (XLA memory analysis)."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)
