"""GSM-Infinite-style word problems: long distractor-padded contexts, integer answers.

    python -m sleep_jax.main --config=configs/gsm_infinite.py:tiny --workdir=runs/gsm_tiny
    python -m sleep_jax.main --config=configs/gsm_infinite.py:paper --workdir=runs/gsm \
        --config.sleep.passes=2

Variants:
- ``tiny``: problems of 768-1000 characters, window L = 256, op counts 1-3, d = 64 (CPU smoke
  scale; expect little accuracy from a model this small).
- ``paper``: problems of 2000-3300 tokens, window L = 2000, op counts 1-8, batch 256;
  a 12-layer attention/GDN model with d = 768 trained from scratch on the byte-level vocabulary.
"""
from sleep_jax.train.config import base_config, model_block, sleep_block

VARIANTS = ("tiny", "paper")


def get_config(variant: str = "tiny"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/gsm_infinite.py:{variant}: unknown variant; one of {VARIANTS}")
    config = base_config("gsm_infinite", variant)
    window = config.task.window
    if variant == "tiny":
        config.model = model_block(d_model=64, attn_heads=2, mlp_hidden=128)
        config.train.update(steps=200, batch_size=8, warmup_steps=20, log_every=10,
                            eval_every=0, checkpoint_every=100, eval_batch_size=16)
    else:
        config.model = model_block(
            d_model=768, pattern="AG" * 6, attn_heads=12, attn_kv_heads=4, attn_head_dim=64,
            attn_output_gate=True, qk_norm=True, rope_theta=100000.0,
            gdn_heads=6, gdn_v_heads=12, gdn_head_dim=128, gdn_v_head_dim=64,
            mlp_hidden=3072, tie_embeddings=False, dtype="bfloat16")
        config.train.update(steps=20000, batch_size=256, warmup_steps=500, log_every=50,
                            eval_every=2000, checkpoint_every=1000, eval_batch_size=256)
    config.sleep = sleep_block(window=window, remat="pass" if variant == "paper" else "none")
    return config
