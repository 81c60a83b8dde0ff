"""The Pallas form of the gated delta rule: layout changes, padding and the custom VJP.

Outside the kernels (plain XLA, cheap next to the kernels): T is padded to a multiple of the chunk
(padded tokens have k = v = q = 0, g = 0, beta = 0, so they leave the state untouched), K and V
are padded to powers of two where the backend needs it, the in-chunk cumulative sum of g is taken
(fla does the same in its own small kernel), and, for the "heads_first" layout (TPU),
[B, T, HV, D] becomes head-major [B*HV, T, D]. With T a multiple of the chunk and no K/V padding
the "tokens_first" layout (GPU) feeds the caller's arrays to the kernels untouched.
These steps are differentiated by JAX; the kernels are wrapped in one `jax.custom_vjp`.
"""
import functools

import jax
import jax.numpy as jnp

from sleep_jax.ops.delta_rule.pallas import backward, forward
from sleep_jax.ops.delta_rule.pallas.block_sizes import block_sizes
from sleep_jax.ops.delta_rule.pallas.launch import KernelConfig


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def chunked_kernels(q, k, v, gc, beta, initial_state, cfg: KernelConfig):
    """Kernel-layout gated delta rule (see `launch.py` for shapes).

    Returns (o [N, Tp, V] in v's dtype, final state [N, K, V] float32).
    """
    return _forward(q, k, v, gc, beta, initial_state, cfg)


def _forward(q, k, v, gc, beta, initial_state, cfg):
    w, u = forward.wy_prep(k, v, beta, gc, cfg)
    h, v_new, final_state = forward.recurrence(w, u, k, gc, initial_state, cfg)
    o = forward.output(q, k, v_new, h, gc, v.dtype, cfg)
    return o, final_state


def _forward_rule(q, k, v, gc, beta, initial_state, cfg):
    # Only the inputs are saved: the backward recomputes w, u and the chunk states.
    return _forward(q, k, v, gc, beta, initial_state, cfg), (q, k, v, gc, beta, initial_state)


def _backward_rule(cfg, saved, cotangents):
    q, k, v, gc, beta, initial_state = saved
    d_o, d_final_state = cotangents
    w, u = forward.wy_prep(k, v, beta, gc, cfg)
    h, v_new, _ = forward.recurrence(w, u, k, gc, initial_state, cfg)
    dh, d_v_new, d_initial_state = backward.reverse_recurrence(
        q, k, w, d_o.astype(v.dtype), gc, d_final_state.astype(jnp.float32), cfg)
    dq, dk, dv, dbeta, dgc = backward.chunk_gradients(q, k, v, beta, gc, h, dh, v_new, d_v_new,
                                                      d_o.astype(v.dtype), cfg)
    dq, dk = _sum_over_groups(dq, q, cfg), _sum_over_groups(dk, k, cfg)
    return dq, dk, dv, dgc, dbeta, d_initial_state.astype(initial_state.dtype)


def _sum_over_groups(grad, primal, cfg):
    """Per-value-head gradient of a key-head input -> the input's shape: the sum over the
    HV // H value heads that read each key head (float32 sum, in the input's dtype)."""
    if cfg.group == 1:
        return grad
    grad = grad.astype(jnp.float32)
    if cfg.layout == "heads_first":  # [B*HV, Tp, D] -> [B, H, G, Tp, D]
        n, tp, d = grad.shape
        grad = grad.reshape(n // cfg.heads, cfg.key_heads, cfg.group, tp, d).sum(axis=2)
    else:  # [B, Tp, HV, D] -> [B, Tp, H, G, D]
        b, tp, _, d = grad.shape
        grad = grad.reshape(b, tp, cfg.key_heads, cfg.group, d).sum(axis=3)
    return grad.reshape(primal.shape).astype(primal.dtype)


chunked_kernels.defvjp(_forward_rule, _backward_rule)


def _backend(platform):
    return "gpu" if platform in ("cuda", "rocm", "gpu") else platform


def _next_pow2(n, minimum=16):
    p = minimum
    while p < n:
        p *= 2
    return p


def pallas_gated_delta_rule(q, k, v, g, beta, *, scale, initial_state, chunk_size=64,
                            interpret=None, backend=None, sizes=None):
    """Gated delta rule through the Pallas kernels.

    Args:
      q, k: [B, T, H, K] key heads.  v: [B, T, HV, V], HV a multiple of H (value head h reads key
        head h // (HV // H) through the kernels' index maps).  g, beta: [B, T, HV].
      initial_state: [B, HV, K, V].
      scale: multiplier of q.  chunk_size: 16, 32 or 64.
      interpret: run the kernels in the Pallas interpreter; default: on CPU only.
      backend: "cpu" | "gpu" | "tpu" picks the block sizes; default: jax's default backend.
      sizes: overrides of that backend's `block_sizes` entry (tuning, tests), e.g. {"block_v": 32}.
    Returns:
      (o [B, T, HV, V] in v's dtype, final state [B, HV, K, V] float32). q, k, v are promoted to
      one dtype, which is also the dtype of the kernels' matmul operands.
    """
    B, T, _, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    args, cfg = kernel_inputs(q, k, v, g, beta, initial_state, scale=scale, chunk_size=chunk_size,
                              interpret=interpret, backend=backend, sizes=sizes)
    o, final_state = chunked_kernels(*args, cfg)
    _, kp, vp = final_state.shape
    if cfg.layout == "heads_first":  # [B*HV, Tp, V'] -> [B, Tp, HV, V']
        o = jnp.swapaxes(o.reshape(B, HV, -1, vp), 1, 2)
    o = o[:, :T, :, :V]
    final_state = final_state.reshape(B, HV, kp, vp)[:, :, :K, :V]
    return o.astype(v.dtype), final_state


def kernel_inputs(q, k, v, g, beta, initial_state, *, scale, chunk_size=64, interpret=None,
                  backend=None, sizes=None):
    """The arguments of `chunked_kernels` (padded, in the backend's layout; see `launch.py`) and
    its KernelConfig, from the arguments of `pallas_gated_delta_rule`.

    Returns ((q, k, v, gc, beta, initial_state) in the kernel layout, KernelConfig).
    """
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"pallas gated delta rule: `chunk_size`={chunk_size} must be 16, 32 or 64")
    q, k, v = (x.astype(jnp.result_type(q, k, v)) for x in (q, k, v))
    backend = _backend(backend or jax.default_backend())
    if interpret is None:
        interpret = backend == "cpu"
    defaults = block_sizes(backend)
    unknown = sorted(set(sizes or {}) - set(defaults))
    if unknown:
        raise ValueError(f"pallas gated delta rule: unknown `sizes` keys {unknown}; "
                         f"known: {sorted(defaults)}")
    sizes = {**defaults, **(sizes or {})}
    if sizes["recurrence"] not in ("loop", "grid") or sizes["layout"] not in ("tokens_first",
                                                                              "heads_first"):
        raise ValueError(f"pallas gated delta rule: `sizes` recurrence={sizes['recurrence']!r} "
                         f"must be 'loop' or 'grid', layout={sizes['layout']!r} must be "
                         "'tokens_first' or 'heads_first'")
    if backend == "gpu" and sizes["recurrence"] == "grid" and not interpret:
        # Triton runs grid steps as independent programs: nothing carries a state between them.
        raise ValueError("pallas gated delta rule: `sizes` recurrence='grid' needs sequential grid "
                         "steps, which the GPU (Triton) backend does not have; use 'loop'")
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    c = chunk_size
    tp = -(-T // c) * c
    kp, vp = (_next_pow2(K), _next_pow2(V)) if sizes["pad_pow2"] else (K, V)
    kp = -(-kp // sizes["k_multiple"]) * sizes["k_multiple"]
    block_v = sizes["block_v"] if vp % sizes["block_v"] == 0 else vp
    cfg = KernelConfig(chunk=c, block_v=block_v, scale=float(scale), mm_dtype=jnp.dtype(q.dtype).name,
                       recurrence=sizes["recurrence"], backend=backend, interpret=bool(interpret),
                       layout=sizes["layout"], heads=HV, key_heads=H,
                       bf16_inverse_precision=sizes["bf16_inverse_precision"],
                       num_warps=sizes.get("num_warps"),
                       num_stages=sizes.get("num_stages"))
    heads_first = cfg.layout == "heads_first"

    def per_token(x, width):  # [B, T', heads, D] -> padded to [B, Tp, heads, width], then the layout
        x = jnp.pad(x, ((0, 0), (0, tp - x.shape[1]), (0, 0), (0, width - x.shape[-1])))
        return jnp.swapaxes(x, 1, 2).reshape(B * x.shape[2], tp, width) if heads_first else x

    g = jnp.pad(g.astype(jnp.float32), ((0, 0), (0, tp - T), (0, 0)))
    gc = jnp.cumsum(g.reshape(B, tp // c, c, HV), axis=2).reshape(B, tp, HV, 1)
    beta = beta.astype(jnp.float32)[..., None]
    state = jnp.pad(initial_state.astype(jnp.float32), ((0, 0), (0, 0), (0, kp - K), (0, vp - V)))
    args = (per_token(q, kp), per_token(k, kp), per_token(v, vp), per_token(gc, 1), per_token(beta, 1),
            state.reshape(B * HV, kp, vp))
    return args, cfg
