"""Rule 110 (the paper's section on computation during sleep).

    python -m sleep_jax.main --config=configs/rule110.py:tiny --workdir=runs/rule110_tiny
    python -m sleep_jax.main --config=configs/rule110.py:paper --workdir=runs/rule110 \
        --config.sleep.passes=4

Variants:
- ``tiny``: 8-bit states (window L = 8, T = 40), a 4-layer AGAG model with d = 64; trains on
  one CPU in a few minutes. Trained and evaluated at t = 0 (pure retrieval of the first bit of
  each evicted state through the fast weights). 300 steps x 64 x 40 tokens = 0.77M tokens.
- ``paper``: the paper's Figure 2b setting: 24-bit states (L = 24, T = 120), 4 layers
  attention -> GDN -> attention -> GDN, d = 256, batch 512, trained at t = 32 for 81,400 steps:
  81,400 x 512 x 120 = 5.0B tokens (the paper: "about 5B tokens"). The paper gives no width, head
  counts or schedule: d = 256 and the rest are this project's choices.

The sequence does not say t, so one model is trained per t (``task.steps``, a tuple; a set of
several t would make the labels ambiguous); ``task.eval_steps`` defaults to the trained t. Sweep
t x N with ``python -m sleep_jax.train.sweep``. The paper's Figure 2a (N = 1, t in {4, 8, 10, 12,
14, 16}, one model per t):

    python -m sleep_jax.train.sweep --config=configs/rule110.py:paper --root=runs/r110_fig2a \
        --grid='task.steps=(4,),(8,),(10,),(12,),(14,),(16,)' --set sleep.passes=1

Figure 2b (t = 32, N varied): ``--root=runs/r110_fig2b --grid='sleep.passes=1,2,4'``.
"""
from sleep_jax.train.config import base_config, model_block, sleep_block

VARIANTS = ("tiny", "paper")


def get_config(variant: str = "tiny"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/rule110.py:{variant}: unknown variant; one of {VARIANTS}")
    config = base_config("rule110", variant)
    config.task.steps = (0,) if variant == "tiny" else (32,)
    bits = config.task.bits
    if variant == "tiny":
        config.model = model_block(
            d_model=64, attn_heads=2, mlp_hidden=128,
            delta_rule_impl="recurrent", chunk_size=16)  # 8-token windows: a scan beats chunks
        config.train.update(steps=300, batch_size=64, warmup_steps=30, log_every=25,
                            eval_every=0, checkpoint_every=100, eval_batch_size=128)
    else:
        config.model = model_block(
            d_model=256, attn_kv_heads=4, attn_head_dim=64,
            gdn_heads=4, gdn_v_heads=4, gdn_head_dim=64, gdn_v_head_dim=64,
            mlp_hidden=1024, chunk_size=32)
        config.train.update(steps=81_400, batch_size=512, warmup_steps=500, log_every=50,
                            eval_every=2000, checkpoint_every=1000, eval_batch_size=512)
    config.sleep = sleep_block(window=bits)
    return config
