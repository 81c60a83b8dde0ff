"""Block sizes and launch settings of the delta-rule kernels, per backend, kept as data.

Keys of each entry:
  block_v      width of the value-dimension tile of the recurrence, output and backward-recurrence
               kernels (the state tile held on chip is [K, block_v] float32). Used when it divides
               V, else the whole V is one tile.
  recurrence   "loop": one program per (head, V tile) walks the chunks in a `fori_loop` with the
               state in registers (GPU: Triton programs cannot carry data across grid steps).
               "grid": the chunk axis is a sequential ("arbitrary") grid axis and the state is
               carried in the resident output block (TPU: keeps only one chunk in VMEM).
  layout       "tokens_first": kernels read and write [B, T, HV, D] in place (no transposes);
               "heads_first": a head-major copy [B*HV, T, D] (TPU tiling needs the last two block
               dims to be (tokens, features)). See launch.py.
  pad_pow2     pad K and V up to a power of two >= 16 (Triton needs power-of-two tiles and dots of
               at least 16).
  k_multiple   pad K up to a multiple of this (TPU: 8, so the [K, block_v] state blocks of the
               [N, NT*K, V] chunk-state arrays are sublane-aligned).
  bf16_inverse_precision  precision of the float32 dots of the in-chunk triangular inverse when
               the inputs are bfloat16 ("high" = TF32 on GPU; Mosaic TPU knows only "default"
               and "highest"). float32 inputs always use "highest".
  num_warps, num_stages   Triton launch settings (GPU only).

Nothing here was tuned on hardware: the GPU and TPU entries are starting points for the session
that first measures them (see `sleep_jax/bench/gpu_check.sh`). Both compile without the hardware:
`python -m sleep_jax.bench.delta_rule --resources` (GPU registers, spills, shared memory per
kernel) and `--tpu_compile=v5e:2x2` (the TPU compiler); CI runs both at the anchor head size.
"""
BLOCK_SIZES = {
    "gpu": {"block_v": 64, "recurrence": "loop", "layout": "tokens_first", "pad_pow2": True,
            "k_multiple": 1, "bf16_inverse_precision": "high", "num_warps": 4, "num_stages": 2},
    "tpu": {"block_v": 128, "recurrence": "grid", "layout": "heads_first", "pad_pow2": False,
            "k_multiple": 8, "bf16_inverse_precision": "highest"},
    # CPU runs the kernels with interpret=True (tests); it mirrors the GPU structure.
    "cpu": {"block_v": 64, "recurrence": "loop", "layout": "tokens_first", "pad_pow2": False,
            "k_multiple": 1, "bf16_inverse_precision": "highest"},
}


def block_sizes(backend: str) -> dict:
    """The entry for `backend` ("cpu", "gpu" or "tpu"; "cuda"/"rocm" count as "gpu")."""
    backend = "gpu" if backend in ("cuda", "rocm") else backend
    if backend not in BLOCK_SIZES:
        raise ValueError(f"delta-rule pallas: no block sizes for backend {backend!r}; "
                         f"known: {sorted(BLOCK_SIZES)}")
    return dict(BLOCK_SIZES[backend])


def parse_overrides(text: str) -> dict:
    """'block_v=32,num_warps=8' -> {"block_v": 32, "num_warps": 8} (integers where they parse)."""
    sizes = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"block-size overrides: {item!r} is not key=value (in {text!r})")
        value = value.strip()
        sizes[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
    return sizes
