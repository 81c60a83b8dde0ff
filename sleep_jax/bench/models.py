"""The models the benchmarks measure: the small one (shared by `bench.sleep` and `bench.engine`) and
the mid-size one (`bench.engine`'s time to first token)."""
from sleep_jax.model import ModelConfig


def bench_model_config(d_model: int = 128, impl: str = "auto", halting_head: bool = False) -> ModelConfig:
    """The small model of this benchmark: AGAG, 4 attention heads, 2 GDN heads of 32 (and the
    halting head of adaptive sleep, for `sleep.halting="learned"`)."""
    return ModelConfig(vocab_size=256, d_model=d_model, pattern="AGAG", attn_heads=4, attn_kv_heads=2,
                       attn_head_dim=32, gdn_heads=2, gdn_v_heads=2, gdn_head_dim=32, gdn_v_head_dim=32,
                       mlp_hidden=4 * d_model, delta_rule_impl=impl, chunk_size=32, halting_head=halting_head)


def mid_model_config(impl: str = "auto") -> ModelConfig:
    """A mid-size model (~35M parameters, Qwen3.5-like): width 512, 8 layers GGGAGGGA, GDN 4 key / 8
    value heads of K = V = 64, attention 8 heads / 2 key-value heads of 64, MLP 1536, vocab 16384."""
    return ModelConfig(vocab_size=16384, d_model=512, pattern="GGGAGGGA", attn_heads=8, attn_kv_heads=2,
                       attn_head_dim=64, gdn_heads=4, gdn_v_heads=8, gdn_head_dim=64, gdn_v_head_dim=64,
                       mlp_hidden=1536, delta_rule_impl=impl, chunk_size=64)
