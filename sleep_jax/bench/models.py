"""The small model the benchmarks measure (shared by `bench.sleep` and `bench.engine`)."""
from sleep_jax.model import ModelConfig


def bench_model_config(d_model: int = 128, impl: str = "auto") -> ModelConfig:
    """The small model of this benchmark: AGAG, 4 attention heads, 2 GDN heads of 32."""
    return ModelConfig(vocab_size=256, d_model=d_model, pattern="AGAG", attn_heads=4, attn_kv_heads=2,
                       attn_head_dim=32, gdn_heads=2, gdn_v_heads=2, gdn_head_dim=32, gdn_v_head_dim=32,
                       mlp_hidden=4 * d_model, delta_rule_impl=impl, chunk_size=32)
