"""Depo multi-hop retrieval over a directed cycle (Allen-Zhu's Physics of LMs 4.1 layout).

    python -m sleep_jax.main --config=configs/depo.py:tiny --workdir=runs/depo_tiny
    python -m sleep_jax.main --config=configs/depo.py:paper --workdir=runs/depo \
        --config.sleep.passes=4

Variants:
- ``tiny``: cycles of 2 to 8 nodes (left-padded), window L = 16 (T = 48, kinds CCP: two windows
  of edges, then 3 queries), a 4-layer AGAG model with d = 64. Trained on k in {1, 2} with AdamW
  at 3e-3 and Muon at 1e-2, weight decay 0.1, 3000 steps x 32 x 48 tokens = 4.6M tokens;
  evaluated at k = 1, 2, 4, 8 (chance 0.245), each eval example at one k. Measured over 6 seeds
  (docs/results.md, section 2): k = 1 is 1.000 at every N; k = 2 is 0.968 +- 0.072 at N = 1
  (solved on 5 seeds of 6) and 0.998 +- 0.002 at N = 2 and 4 (every seed). Without the weight
  decay k = 2 was a lottery over seeds at every N (section 2a). One run takes about 8 (N = 1),
  13 (N = 2) and 22 (N = 4) minutes on one CPU core.
- ``paper``: section 6.2 of the paper: cycles of at most 75 nodes (n ~ U[2, 75], left-padded),
  L = 75, T = 375 (300 context + 50 query tokens, padded to whole windows), 10 layers, d = 512,
  batch 128, 100,000 steps: 100,000 x 128 x 375 = 4.8B tokens. Trained on k ~ U[1, 16] hops,
  evaluated (accuracy and held-out loss) at k = 1, 2, 4, 8, 16. The paper's model is
  "the Jet-Nemotron architecture": here attention and JetBlocks (GDN with a dynamic value conv)
  alternate. Where full and sliding attention sit in the paper's 10 layers, head counts, MLP
  width and schedule are not in the paper: this project's choices.
"""
from sleep_jax.train.config import base_config, model_block, sleep_block

VARIANTS = ("tiny", "paper")


def get_config(variant: str = "tiny"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/depo.py:{variant}: unknown variant; one of {VARIANTS}")
    config = base_config("depo", variant)
    window = config.task.window
    if variant == "tiny":
        config.task.hops_train = (1, 2)
        config.model = model_block(d_model=64, attn_heads=2, mlp_hidden=128, chunk_size=32)
        config.train.update(steps=3000, batch_size=32, warmup_steps=50, log_every=25,
                            eval_every=0, checkpoint_every=250, eval_batch_size=64,
                            adamw_lr=3e-3, muon_lr=1e-2, weight_decay=0.1)
    else:
        config.model = model_block(  # attention and JetBlocks ("J") alternating
            d_model=512, pattern="AJ" * 5, attn_heads=8, attn_kv_heads=8, attn_head_dim=64,
            jet_heads=4, jet_head_dim=128, jet_v_head_dim=128, mlp_hidden=2048)
        config.train.update(steps=100_000, batch_size=128, warmup_steps=500, log_every=50,
                            eval_every=2000, checkpoint_every=1000, eval_batch_size=128)
    config.sleep = sleep_block(window=window)
    return config
