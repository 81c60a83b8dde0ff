"""Argument rules shared by the fast-weight ops (the gated delta rule, the gated Hebbian rule).

Each rule is written once here; every op entry point calls it with its own name, and
`ModelConfig` calls `check_options` with its keys, so a bad `model.delta_rule_impl` and a bad
`impl=` argument are refused by the same code.
"""
import jax.numpy as jnp

IMPLS = ("auto", "recurrent", "chunked", "pallas")
CHUNK_SIZES = (16, 32, 64)


def check_options(impl, chunk_size, *, impls=IMPLS, impl_key="`impl`", chunk_key="`chunk_size`",
                  where="gated_delta_rule") -> None:
    """`impl` one of `impls`, `chunk_size` one of CHUNK_SIZES; the error names `impl_key` /
    `chunk_key` (an argument, or a config key such as model.delta_rule_impl)."""
    if impl not in impls:
        raise ValueError(f"{where}: unknown {impl_key}={impl!r}; expected one of {impls}")
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"{where}: {chunk_key}={chunk_size} must be one of {CHUNK_SIZES}")


def check_sequence(where: str, q, k, v, g, beta, initial_state) -> None:
    """Shapes and dtypes of a fast-weight op over a sequence: q, k [B, T, H, K]; v [B, T, HV, V]
    with HV a multiple of H; g, beta [B, T, HV]; initial_state None or [B, HV, K, V]; all float.
    `where` (the op's name) starts the error."""
    named = dict(q=q, k=k, v=v, g=g, beta=beta)
    if initial_state is not None:
        named["initial_state"] = initial_state
    for name, x in named.items():
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{where}: `{name}` must be floating point, got {x.dtype}")
    if q.ndim != 4:
        raise ValueError(f"{where}: `q` must be [B, T, H, K], got shape {q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"{where}: `k` shape {k.shape} must equal `q` shape {q.shape}")
    B, T, H, K = q.shape
    if T == 0:
        raise ValueError(f"{where}: sequence length T (axis 1 of `q`) must be >= 1, got 0")
    if v.ndim != 4 or v.shape[:2] != (B, T):
        raise ValueError(f"{where}: `v` must be [B={B}, T={T}, HV, V], got shape {v.shape}")
    HV, V = v.shape[2], v.shape[3]
    if HV % H:
        raise ValueError(f"{where}: value heads of `v` ({HV}) must be a multiple of the key heads of `q`/`k` ({H})")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, HV):
            raise ValueError(f"{where}: `{name}` must be [B, T, HV]={(B, T, HV)}, got shape {x.shape}")
    if initial_state is not None and initial_state.shape != (B, HV, K, V):
        raise ValueError(f"{where}: `initial_state` must be [B, HV, K, V]={(B, HV, K, V)}, got shape "
                         f"{initial_state.shape}")
