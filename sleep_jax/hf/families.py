"""The supported hub architectures: config translation both ways and the tensor key map.

A family is `Family(model_config, hub_config, tensor_maps, kinds)`:
- `model_config(hub: dict, **overrides) -> ModelConfig` reads a hub `config.json` (errors name the
  hub field);
- `hub_config(config: ModelConfig) -> dict` writes one that transformers loads;
- `tensor_maps(config) -> [TensorMap]`: every hub tensor of the architecture, in hub key names
  (those the models' own `save_pretrained` writes);
- `kinds`: the block kinds (letters of `model.pattern`) its hub format can hold. `exportable`
  checks a model against them, so a layer of another kind is one line naming it, not a KeyError.
"""
import dataclasses
import math
from typing import Callable

from sleep_jax.hf.tensors import copy, dense_in, dense_in_interleaved, dense_out, depthwise_conv, reshaped
from sleep_jax.layers import KINDS
from sleep_jax.model import ModelConfig, new_kind_keys


@dataclasses.dataclass(frozen=True)
class Family:
    model_config: Callable
    hub_config: Callable
    tensor_maps: Callable
    kinds: str


def _require(hub: dict, field: str, allowed, model_type: str):
    value = hub.get(field)
    if value not in allowed:
        raise ValueError(f"{model_type}: config field {field}={value!r} is not supported (supported: {allowed})")
    return value


def _rope(hub: dict, model_type: str) -> dict:
    """rope_theta and partial_rotary_factor from `rope_parameters` (default RoPE only)."""
    rope = hub.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{model_type}: config field rope_parameters.rope_type={rope.get('rope_type')!r} is not "
                         f"supported (supported: 'default')")
    return {"rope_theta": float(rope.get("rope_theta", hub.get("rope_theta", 10000.0))),
            "rotary_fraction": float(rope.get("partial_rotary_factor", hub.get("partial_rotary_factor", 1.0)))}


LAYER_LETTERS = {"linear_attention": "G", "full_attention": "A"}


def _pattern(hub: dict, model_type: str, letters: dict) -> str:
    kinds = hub.get("layer_types")
    if kinds is None or len(kinds) != hub["num_hidden_layers"]:
        raise ValueError(f"{model_type}: config field layer_types must list num_hidden_layers="
                         f"{hub.get('num_hidden_layers')} layer kinds, got {kinds}")
    unknown = sorted(set(kinds) - set(letters))
    if unknown:
        raise ValueError(f"{model_type}: config field layer_types has unsupported kinds {unknown} "
                         f"(supported: {sorted(letters)})")
    return "".join(letters[k] for k in kinds)


# ---- Qwen3.5 (text) ---------------------------------------------------------------------------

def qwen3_5_model_config(hub: dict, **overrides) -> ModelConfig:
    """`qwen3_5_text`: zero-centred RMSNorms, gated attention with per-head q/k norm and partial
    rotary, Qwen GDN (fused q/k/v conv, beta = sigmoid), SwiGLU MLP in every layer."""
    model_type = hub.get("model_type", "qwen3_5_text")
    _require(hub, "hidden_act", ("silu",), model_type)
    _require(hub, "attention_bias", (False, None), model_type)   # it would add an o_proj bias too
    fields = dict(
        vocab_size=hub["vocab_size"], d_model=hub["hidden_size"], mlp_hidden=hub["intermediate_size"],
        pattern=_pattern(hub, model_type, LAYER_LETTERS),
        attn_heads=hub["num_attention_heads"], attn_kv_heads=hub["num_key_value_heads"],
        attn_head_dim=hub.get("head_dim") or hub["hidden_size"] // hub["num_attention_heads"],
        attn_output_gate=True, qk_norm="head", norm_style="zero_centred", **_rope(hub, model_type),
        gdn_heads=hub["linear_num_key_heads"], gdn_v_heads=hub["linear_num_value_heads"],
        gdn_head_dim=hub["linear_key_head_dim"], gdn_v_head_dim=hub["linear_value_head_dim"],
        conv_kernel=hub["linear_conv_kernel_dim"], tie_embeddings=bool(hub.get("tie_word_embeddings", False)),
        norm_eps=hub.get("rms_norm_eps", 1e-6), hf_model_type=model_type)
    return ModelConfig(**{**fields, **overrides})


def qwen3_5_hub_config(c: ModelConfig) -> dict:
    kinds = {v: k for k, v in LAYER_LETTERS.items()}
    return {
        "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text", "dtype": c.param_dtype,
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": len(c.pattern), "layer_types": [kinds[k] for k in c.pattern],
        "num_attention_heads": c.attn_heads, "num_key_value_heads": c.attn_kv_heads, "head_dim": c.attn_head_dim,
        "attention_bias": False, "hidden_act": "silu", "rms_norm_eps": c.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta,
                            "partial_rotary_factor": c.rotary_fraction},
        "linear_num_key_heads": c.gdn_heads, "linear_num_value_heads": c.gdn_v_heads,
        "linear_key_head_dim": c.gdn_head_dim, "linear_value_head_dim": c.gdn_v_head_dim,
        "linear_conv_kernel_dim": c.conv_kernel, "tie_word_embeddings": c.tie_embeddings}


def _swiglu(hub: str, path: tuple, *index) -> list:
    """gate/up/down_proj under hub prefix `hub` <-> the SwiGLU at `path` (`index`: one expert of
    a stacked SparseMoE)."""
    return [dense_in(f"{hub}.gate_proj.weight", (*path, "w_gate", *index)),
            dense_in(f"{hub}.up_proj.weight", (*path, "w_up", *index)),
            dense_out(f"{hub}.down_proj.weight", (*path, "w_down", *index))]


def _embeddings(c: ModelConfig) -> list:
    maps = [copy("model.embed_tokens.weight", ("embedding",)), copy("model.norm.weight", ("final_norm", "scale"))]
    if not c.tie_embeddings:
        maps.append(dense_in("lm_head.weight", ("lm_head",)))
    return maps


def qwen3_5_tensor_maps(c: ModelConfig) -> list:
    maps = _embeddings(c)
    for i, kind in enumerate(c.pattern):
        prefix, block = f"model.layers.{i}", ("blocks", i)
        mixer = (*block, "mixer")
        maps += [copy(f"{prefix}.input_layernorm.weight", (*block, "mixer_norm", "scale")),
                 copy(f"{prefix}.post_attention_layernorm.weight", (*block, "mlp_norm", "scale"))]
        maps += _swiglu(f"{prefix}.mlp", (*block, "mlp"))
        if kind == "G":
            p = f"{prefix}.linear_attn"
            maps += [dense_in(f"{p}.in_proj_qkv.weight", (*mixer, "w_q"), (*mixer, "w_k"), (*mixer, "w_v")),
                     dense_in(f"{p}.in_proj_z.weight", (*mixer, "w_z")),
                     dense_in(f"{p}.in_proj_b.weight", (*mixer, "w_beta")),
                     dense_in(f"{p}.in_proj_a.weight", (*mixer, "w_a"))] + _gdn_rest(p, mixer)
        else:
            maps += _gated_attention(f"{prefix}.self_attn", mixer)
    return maps


def _gated_attention(p: str, mixer: tuple) -> list:
    """Qwen's gated attention: q_proj per head [query | gate], per-head q/k norms."""
    return [dense_in_interleaved(f"{p}.q_proj.weight", (*mixer, "w_q"), (*mixer, "w_gate")),
            dense_in(f"{p}.k_proj.weight", (*mixer, "w_k")),
            dense_in(f"{p}.v_proj.weight", (*mixer, "w_v")),
            dense_out(f"{p}.o_proj.weight", (*mixer, "w_o")),
            copy(f"{p}.q_norm.weight", (*mixer, "q_norm", "scale")),
            copy(f"{p}.k_norm.weight", (*mixer, "k_norm", "scale"))]


def _gdn_rest(p: str, mixer: tuple) -> list:
    """The GDN tensors Qwen3.5 and Qwen3-Next share (after the input projections)."""
    return [depthwise_conv(f"{p}.conv1d.weight", (*mixer, "conv_q"), (*mixer, "conv_k"), (*mixer, "conv_v")),
            copy(f"{p}.A_log", (*mixer, "A_log")), copy(f"{p}.dt_bias", (*mixer, "dt_bias")),
            copy(f"{p}.norm.weight", (*mixer, "o_norm", "scale")),
            dense_out(f"{p}.out_proj.weight", (*mixer, "w_o"))]


# ---- OLMo-Hybrid ------------------------------------------------------------------------------

OLMO_LETTERS = {"linear_attention": "G", "full_attention": "O"}


def olmo_hybrid_model_config(hub: dict, **overrides) -> ModelConfig:
    """`olmo_hybrid`: plain RMSNorms; GDN layers pre-norm (beta = 2 sigmoid with
    linear_allow_neg_eigval, separate q/k/v convs, output-norm eps 1e-5); attention layers
    post-norm ("O") with q/k norm over the full projection width, RoPE or NoPE (rope_theta None)."""
    model_type = "olmo_hybrid"
    _require(hub, "hidden_act", ("silu",), model_type)
    _require(hub, "attention_bias", (False, None), model_type)
    pattern = _pattern(hub, model_type, OLMO_LETTERS)
    rope = hub.get("rope_parameters") or {}
    nope = rope.get("rope_theta") is None
    fields = dict(
        vocab_size=hub["vocab_size"], d_model=hub["hidden_size"], mlp_hidden=hub["intermediate_size"],
        pattern=pattern, attn_heads=hub["num_attention_heads"], attn_kv_heads=hub["num_key_value_heads"],
        attn_head_dim=hub.get("head_dim") or hub["hidden_size"] // hub["num_attention_heads"],
        qk_norm="full", norm_style="plain",
        **({"nope_layers": tuple(i for i, k in enumerate(pattern) if k == "O")} if nope else _rope(hub, model_type)),
        gdn_heads=hub["linear_num_key_heads"], gdn_v_heads=hub["linear_num_value_heads"],
        gdn_head_dim=hub["linear_key_head_dim"], gdn_v_head_dim=hub["linear_value_head_dim"],
        gdn_beta_scale=2.0 if hub.get("linear_allow_neg_eigval", True) else 1.0, gdn_norm_eps=1e-5,
        conv_kernel=hub["linear_conv_kernel_dim"], tie_embeddings=bool(hub.get("tie_word_embeddings", False)),
        norm_eps=hub.get("rms_norm_eps", 1e-6), hf_model_type=model_type)
    return ModelConfig(**{**fields, **overrides})


def olmo_hybrid_hub_config(c: ModelConfig) -> dict:
    kinds = {v: k for k, v in OLMO_LETTERS.items()}
    nope = bool(c.nope_layers)
    return {
        "architectures": ["OlmoHybridForCausalLM"], "model_type": "olmo_hybrid", "dtype": c.param_dtype,
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": len(c.pattern), "layer_types": [kinds[k] for k in c.pattern],
        "num_attention_heads": c.attn_heads, "num_key_value_heads": c.attn_kv_heads,
        "attention_bias": False, "hidden_act": "silu", "rms_norm_eps": c.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": None if nope else c.rope_theta},
        "linear_num_key_heads": c.gdn_heads, "linear_num_value_heads": c.gdn_v_heads,
        "linear_key_head_dim": c.gdn_head_dim, "linear_value_head_dim": c.gdn_v_head_dim,
        "linear_allow_neg_eigval": c.gdn_beta_scale == 2.0, "linear_conv_kernel_dim": c.conv_kernel,
        "tie_word_embeddings": c.tie_embeddings,
        # transformers' defaults (100277, ...) index past a small vocabulary; a base config sets them
        "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}


def olmo_hybrid_tensor_maps(c: ModelConfig) -> list:
    maps = _embeddings(c)
    for i, kind in enumerate(c.pattern):
        prefix, block = f"model.layers.{i}", ("blocks", i)
        mixer = (*block, "mixer")
        maps += _swiglu(f"{prefix}.mlp", (*block, "mlp"))
        if kind == "G":
            p = f"{prefix}.linear_attn"
            maps += [copy(f"{prefix}.attention_layer_norm.weight", (*block, "mixer_norm", "scale")),
                     copy(f"{prefix}.feedforward_layer_norm.weight", (*block, "mlp_norm", "scale")),
                     dense_in(f"{p}.q_proj.weight", (*mixer, "w_q")), dense_in(f"{p}.k_proj.weight", (*mixer, "w_k")),
                     dense_in(f"{p}.v_proj.weight", (*mixer, "w_v")), dense_in(f"{p}.g_proj.weight", (*mixer, "w_z")),
                     dense_in(f"{p}.b_proj.weight", (*mixer, "w_beta")),
                     dense_in(f"{p}.a_proj.weight", (*mixer, "w_a")),
                     # read as transformers reads it: q/k/v convs concatenated, then split by our dims
                     depthwise_conv(f"{p}.conv1d.weight", (*mixer, "conv_q"), (*mixer, "conv_k"), (*mixer, "conv_v"),
                                    parts=tuple(f"{p}.{x}_conv1d.weight" for x in "qkv")),
                     copy(f"{p}.A_log", (*mixer, "A_log")), copy(f"{p}.dt_bias", (*mixer, "dt_bias")),
                     copy(f"{p}.o_norm.weight", (*mixer, "o_norm", "scale")),
                     dense_out(f"{p}.o_proj.weight", (*mixer, "w_o"))]
        else:
            p = f"{prefix}.self_attn"
            maps += [copy(f"{prefix}.feedforward_layer_norm.weight", (*block, "mixer_norm", "scale")),
                     copy(f"{prefix}.post_feedforward_layernorm.weight", (*block, "mlp_norm", "scale")),
                     dense_in(f"{p}.q_proj.weight", (*mixer, "w_q")), dense_in(f"{p}.k_proj.weight", (*mixer, "w_k")),
                     dense_in(f"{p}.v_proj.weight", (*mixer, "w_v")), dense_out(f"{p}.o_proj.weight", (*mixer, "w_o")),
                     copy(f"{p}.q_norm.weight", (*mixer, "q_norm", "scale")),
                     copy(f"{p}.k_norm.weight", (*mixer, "k_norm", "scale"))]
    return maps


# ---- Qwen3-Next -------------------------------------------------------------------------------

def qwen3_next_model_config(hub: dict, **overrides) -> ModelConfig:
    """`qwen3_next`: Qwen3.5's layers, with the GDN input projections grouped per key head and a
    sparse MoE (top-k experts + gated shared expert) on every `decoder_sparse_step`-th layer not in
    `mlp_only_layers`."""
    n, step = hub["num_hidden_layers"], hub.get("decoder_sparse_step", 1)
    dense_only = set(hub.get("mlp_only_layers") or [])
    moe_layers = tuple(i for i in range(n) if hub.get("num_experts", 0) > 0 and i not in dense_only
                       and (i + 1) % step == 0)
    moe = dict(moe_layers=moe_layers, moe_experts=hub.get("num_experts", 0), moe_top_k=hub.get("num_experts_per_tok", 1),
               moe_hidden=hub.get("moe_intermediate_size", 0),
               moe_shared_hidden=hub.get("shared_expert_intermediate_size", 0),
               moe_normalize_top_k=bool(hub.get("norm_topk_prob", True)))
    return qwen3_5_model_config({**hub, "model_type": "qwen3_next"},
                                **{"hf_model_type": "qwen3_next", **moe, **overrides})


def qwen3_next_hub_config(c: ModelConfig) -> dict:
    moe = set(c.moe_layers)
    return {**qwen3_5_hub_config(c), "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next",
            "num_experts": c.moe_experts, "num_experts_per_tok": c.moe_top_k,
            "moe_intermediate_size": c.moe_hidden, "shared_expert_intermediate_size": c.moe_shared_hidden,
            "norm_topk_prob": c.moe_normalize_top_k, "decoder_sparse_step": 1,
            "mlp_only_layers": [i for i in range(len(c.pattern)) if i not in moe]}


def qwen3_next_tensor_maps(c: ModelConfig) -> list:
    maps = _embeddings(c)
    for i, kind in enumerate(c.pattern):
        prefix, block = f"model.layers.{i}", ("blocks", i)
        mixer, mlp = (*block, "mixer"), (*block, "mlp")
        maps += [copy(f"{prefix}.input_layernorm.weight", (*block, "mixer_norm", "scale")),
                 copy(f"{prefix}.post_attention_layernorm.weight", (*block, "mlp_norm", "scale"))]
        if i in c.moe_layers:
            maps += [dense_in(f"{prefix}.mlp.gate.weight", (*mlp, "w_router")),
                     dense_in(f"{prefix}.mlp.shared_expert_gate.weight", (*mlp, "w_shared_gate"))]
            maps += _swiglu(f"{prefix}.mlp.shared_expert", (*mlp, "shared"))
            for e in range(c.moe_experts):
                maps += _swiglu(f"{prefix}.mlp.experts.{e}", mlp, e)
        else:
            maps += _swiglu(f"{prefix}.mlp", mlp)
        if kind == "G":
            p = f"{prefix}.linear_attn"
            maps += [dense_in_interleaved(f"{p}.in_proj_qkvz.weight", (*mixer, "w_q"), (*mixer, "w_k"), (*mixer, "w_v"),
                                          (*mixer, "w_z"), groups=c.gdn_heads),
                     dense_in_interleaved(f"{p}.in_proj_ba.weight", (*mixer, "w_beta"), (*mixer, "w_a"),
                                          groups=c.gdn_heads)] + _gdn_rest(p, mixer)
        else:
            maps += _gated_attention(f"{prefix}.self_attn", mixer)
    return maps


# ---- Ouro -------------------------------------------------------------------------------------

def ouro_model_config(hub: dict, **overrides) -> ModelConfig:
    """`ouro` (OuroForCausalLM, remote code): a looped LM. Every layer is a sandwich-norm attention
    block ("S", plain RMSNorms, no biases, full attention, MHA or GQA); the stack runs
    `total_ut_steps` times with the final norm after each step, and the early-exit gate reads each
    step's normed hidden. Inference reads the last step (`ut_exit="last"`; Ouro's
    `early_exit_threshold` becomes `ut_exit_threshold`, used with `ut_exit="threshold"`)."""
    model_type = "ouro"
    _require(hub, "hidden_act", ("silu",), model_type)
    _require(hub, "use_sliding_window", (False, None), model_type)
    if hub.get("rope_scaling") is not None:
        raise ValueError(f"{model_type}: config field rope_scaling={hub['rope_scaling']!r} is not supported "
                         f"(supported: None)")
    n = hub["num_hidden_layers"]
    if any(kind != "full_attention" for kind in hub.get("layer_types") or ["full_attention"] * n):
        raise ValueError(f"{model_type}: config field layer_types={hub['layer_types']} is not supported "
                         f"(supported: full_attention only)")
    fields = dict(
        vocab_size=hub["vocab_size"], d_model=hub["hidden_size"], mlp_hidden=hub["intermediate_size"],
        pattern="S" * n, attn_heads=hub["num_attention_heads"],
        attn_kv_heads=hub.get("num_key_value_heads") or hub["num_attention_heads"],
        attn_head_dim=hub.get("head_dim") or hub["hidden_size"] // hub["num_attention_heads"],
        rope_theta=float(hub.get("rope_theta", 10000.0)), norm_style="plain",
        tie_embeddings=bool(hub.get("tie_word_embeddings", False)), norm_eps=hub.get("rms_norm_eps", 1e-6),
        ut_steps=int(hub.get("total_ut_steps", 4)), exit_gate=True,
        ut_exit_threshold=float(hub.get("early_exit_threshold") or 1.0), hf_model_type=model_type)
    return ModelConfig(**{**fields, **overrides})


def ouro_hub_config(c: ModelConfig) -> dict:
    return {
        "architectures": ["OuroForCausalLM"], "model_type": "ouro", "torch_dtype": c.param_dtype,
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": len(c.pattern), "layer_types": ["full_attention"] * len(c.pattern),
        "num_attention_heads": c.attn_heads, "num_key_value_heads": c.attn_kv_heads, "head_dim": c.attn_head_dim,
        "hidden_act": "silu", "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "rope_scaling": None,
        "use_sliding_window": False, "tie_word_embeddings": c.tie_embeddings, "total_ut_steps": c.ut_steps,
        "early_exit_threshold": c.ut_exit_threshold}


def ouro_tensor_maps(c: ModelConfig) -> list:
    maps = _embeddings(c) + [dense_in("model.early_exit_gate.weight", ("exit_gate",)),
                             copy("model.early_exit_gate.bias", ("exit_gate_bias",))]
    for i in range(len(c.pattern)):
        prefix, block = f"model.layers.{i}", ("blocks", i)
        p, mixer = f"{prefix}.self_attn", (*block, "mixer")
        maps += [copy(f"{prefix}.input_layernorm.weight", (*block, "mixer_norm", "scale")),
                 copy(f"{prefix}.input_layernorm_2.weight", (*block, "mixer_out_norm", "scale")),
                 copy(f"{prefix}.post_attention_layernorm.weight", (*block, "mlp_norm", "scale")),
                 copy(f"{prefix}.post_attention_layernorm_2.weight", (*block, "mlp_out_norm", "scale")),
                 dense_in(f"{p}.q_proj.weight", (*mixer, "w_q")), dense_in(f"{p}.k_proj.weight", (*mixer, "w_k")),
                 dense_in(f"{p}.v_proj.weight", (*mixer, "w_v")), dense_out(f"{p}.o_proj.weight", (*mixer, "w_o"))]
        maps += _swiglu(f"{prefix}.mlp", (*block, "mlp"))
    return maps


# ---- Jet-Nemotron -----------------------------------------------------------------------------

JET_LETTERS = {"jet": "J", "attn": "A", "swa": "A"}
JET_DEFAULTS = {"num_heads": 6, "head_dim": 256, "expand_v": 2.0, "conv_size": 4, "dconv_generator_reduction": 8,
                "norm_eps": 1e-5}   # the published JetBlockConfig's


def _jet_v_head_dim(jet: dict, model_type: str) -> int:
    """V = int(head_dim * expand_v), as the published code computes it (and rejects inexact ones)."""
    expand_v = float(jet["expand_v"])
    v_head_dim = int(jet["head_dim"] * expand_v)
    value_dim = int(jet["num_heads"] * jet["head_dim"] * expand_v)
    if not math.isclose(jet["head_dim"] * expand_v, v_head_dim, rel_tol=1e-5) or value_dim != jet["num_heads"] * v_head_dim:
        raise ValueError(f"{model_type}: config field efficient_attention_config.jet.expand_v={jet['expand_v']!r} "
                         f"does not give a whole value head dim (head_dim={jet['head_dim']})")
    return v_head_dim


def jet_nemotron_model_config(hub: dict, **overrides) -> ModelConfig:
    """`jet_nemotron` (NVlabs/Jet-Nemotron remote code): a Qwen2.5 backbone (q/k/v bias, plain
    RMSNorm, pre-norm, SwiGLU in every layer) whose `layer_types` are "jet" (JetBlock, "J"),
    "attn" (full attention) or "swa" (attention with `efficient_attention_config.swa.window_size`)."""
    model_type = "jet_nemotron"
    _require(hub, "hidden_act", ("silu",), model_type)
    _require(hub, "rope_scaling", (None,), model_type)
    pattern = _pattern(hub, model_type, JET_LETTERS)
    kinds, efficient = hub["layer_types"], hub.get("efficient_attention_config") or {}
    fields = {}
    if "swa" in kinds:
        window = (efficient.get("swa") or {}).get("window_size")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"{model_type}: config field efficient_attention_config.swa.window_size={window!r} must "
                             f"be an integer >= 1 for the swa layers")
        fields["layer_windows"] = tuple(window if kind == "swa" else 0 for kind in kinds)
    if "jet" in kinds:
        jet = {**JET_DEFAULTS, **(efficient.get("jet") or {})}
        fields.update(jet_heads=jet["num_heads"], jet_head_dim=jet["head_dim"],
                      jet_v_head_dim=_jet_v_head_dim(jet, model_type), jet_conv_kernel=jet["conv_size"],
                      jet_generator_reduction=jet["dconv_generator_reduction"], jet_norm_eps=float(jet["norm_eps"]))
    fields.update(
        vocab_size=hub["vocab_size"], d_model=hub["hidden_size"], mlp_hidden=hub["intermediate_size"],
        pattern=pattern, attn_heads=hub["num_attention_heads"], attn_kv_heads=hub["num_key_value_heads"],
        attn_head_dim=hub.get("head_dim") or hub["hidden_size"] // hub["num_attention_heads"], attn_bias=True,
        norm_style="plain", rope_theta=float(hub.get("rope_theta", 1e6)),
        tie_embeddings=bool(hub.get("tie_word_embeddings", True)), norm_eps=hub.get("rms_norm_eps", 1e-6),
        hf_model_type=model_type)
    return ModelConfig(**{**fields, **overrides})


def _jet_expand_v(c: ModelConfig) -> float:
    """expand_v = V / K, nudged up by ulps until the published int(K * expand_v) gives V back."""
    expand_v = c.jet_v_head_dim / c.jet_head_dim
    while (int(c.jet_head_dim * expand_v) != c.jet_v_head_dim
           or int(c.jet_heads * c.jet_head_dim * expand_v) != c.jet_heads * c.jet_v_head_dim):
        expand_v = math.nextafter(expand_v, math.inf)
    return expand_v


def jet_nemotron_hub_config(c: ModelConfig) -> dict:
    layer_windows = c.layer_windows or (0,) * len(c.pattern)
    kinds = ["jet" if k == "J" else "swa" if w else "attn" for k, w in zip(c.pattern, layer_windows)]
    windows = sorted({w for kind, w in zip(kinds, layer_windows) if kind == "swa"})
    windowed_jet = any(w for k, w in zip(c.pattern, layer_windows) if k == "J")
    if len(windows) > 1 or windowed_jet:
        raise ValueError(f"jet_nemotron: model.layer_windows={c.layer_windows} has no hub form (one sliding window, "
                         f"on attention layers)")
    efficient = {"jet": {"mode": "chunk", "num_heads": c.jet_heads, "head_dim": c.jet_head_dim,
                         "expand_v": _jet_expand_v(c), "conv_size": c.jet_conv_kernel,
                         "dconv_generator_reduction": c.jet_generator_reduction,
                         "dconv_implementation": "triton", "norm_eps": c.jet_norm_eps}}
    if windows:
        efficient["swa"] = {"window_size": windows[0]}
    return {
        "architectures": ["JetNemotronForCausalLM"], "model_type": "jet_nemotron", "torch_dtype": c.param_dtype,
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": len(c.pattern), "layer_types": kinds, "num_attention_heads": c.attn_heads,
        "num_key_value_heads": c.attn_kv_heads, "head_dim": c.attn_head_dim, "hidden_act": "silu",
        "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "rope_scaling": None,
        "tie_word_embeddings": c.tie_embeddings, "efficient_attention_config": efficient}


def jet_nemotron_tensor_maps(c: ModelConfig) -> list:
    maps = _embeddings(c)
    for i, kind in enumerate(c.pattern):
        prefix, block = f"model.layers.{i}", ("blocks", i)
        mixer, p = (*block, "mixer"), f"{prefix}.self_attn"
        maps += [copy(f"{prefix}.input_layernorm.weight", (*block, "mixer_norm", "scale")),
                 copy(f"{prefix}.post_attention_layernorm.weight", (*block, "mlp_norm", "scale"))]
        maps += _swiglu(f"{prefix}.mlp", (*block, "mlp"))
        if kind == "J":
            generator = f"{p}.dynamic_conv1d.kernel_generator"
            maps += [dense_in(f"{p}.q_proj.weight", (*mixer, "w_q")), dense_in(f"{p}.k_proj.weight", (*mixer, "w_k")),
                     dense_in(f"{p}.v_proj.weight", (*mixer, "w_v")), dense_in(f"{p}.g_proj.weight", (*mixer, "w_z")),
                     dense_in(f"{p}.b_proj.weight", (*mixer, "w_beta")),
                     dense_in(f"{p}.a_proj.weight", (*mixer, "w_a")),
                     copy(f"{p}.A_log", (*mixer, "A_log")), copy(f"{p}.dt_bias", (*mixer, "dt_bias")),
                     dense_in(f"{generator}.w1.weight", (*mixer, "w_gen1")),
                     dense_in(f"{generator}.w2.weight", (*mixer, "w_gen2")),   # rows (d w), w innermost
                     reshaped(f"{generator}.w2.bias", (*mixer, "b_gen2")),
                     copy(f"{p}.o_norm.weight", (*mixer, "o_norm", "scale")),
                     dense_out(f"{p}.o_proj.weight", (*mixer, "w_o"))]
        else:
            maps += [dense_in(f"{p}.q_proj.weight", (*mixer, "w_q")), reshaped(f"{p}.q_proj.bias", (*mixer, "b_q")),
                     dense_in(f"{p}.k_proj.weight", (*mixer, "w_k")), reshaped(f"{p}.k_proj.bias", (*mixer, "b_k")),
                     dense_in(f"{p}.v_proj.weight", (*mixer, "w_v")), reshaped(f"{p}.v_proj.bias", (*mixer, "b_v")),
                     dense_out(f"{p}.o_proj.weight", (*mixer, "w_o"))]
    return maps


FAMILIES = {
    "qwen3_next": Family(qwen3_next_model_config, qwen3_next_hub_config, qwen3_next_tensor_maps, kinds="AG"),
    "qwen3_5_text": Family(qwen3_5_model_config, qwen3_5_hub_config, qwen3_5_tensor_maps, kinds="AG"),
    "olmo_hybrid": Family(olmo_hybrid_model_config, olmo_hybrid_hub_config, olmo_hybrid_tensor_maps, kinds="OG"),
    "jet_nemotron": Family(jet_nemotron_model_config, jet_nemotron_hub_config, jet_nemotron_tensor_maps,
                           kinds="JA"),
    "ouro": Family(ouro_model_config, ouro_hub_config, ouro_tensor_maps, kinds="S"),
}


def family(model_type) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(f"model_type={model_type!r} is not supported; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


# ModelConfig fields a run chooses itself (how it computes and sleeps; not the weights'
# architecture): a fine-tuning run may set them (`train.stages.resolve`), and an export does not
# need the hub config to hold them.
RUN_FIELDS = ("loop", "dtype", "param_dtype", "delta_rule_impl", "chunk_size", "ut_exit", "ut_exit_threshold")

_PORTABLE = "a sleep_jax run directory holds any model"


def exportable(config: ModelConfig) -> Family:
    """The family of `config.hf_model_type`, once its hub format holds the model: every layer of
    `config.pattern` of a kind it holds (else a ValueError naming the first layer that is not),
    and the written hub config read back giving the same architecture (else a ValueError naming
    the first field a layer reads that it loses). Layers without an MLP are held (`hf.hub_tensors` writes zeros)."""
    if config.hf_model_type is None:
        raise ValueError("model.hf_model_type is None: a model trained from scratch has no hub format; "
                         f"supported: {sorted(FAMILIES)}")
    hub = family(config.hf_model_type)
    for index, kind in enumerate(config.pattern):
        if kind not in hub.kinds:
            mixer, norms = KINDS[kind].mixer.__name__, KINDS[kind].norms
            raise ValueError(f"{config.hf_model_type}: layer {index} is a {kind!r} block ({mixer}, {norms}-norm); the "
                             f"{config.hf_model_type} hub format holds only "
                             f"{', '.join(repr(k) for k in hub.kinds)} layers ({_PORTABLE})")
    with_mlps = dataclasses.replace(config, no_mlp_layers=())
    back = hub.model_config(hub.hub_config(with_mlps), **{name: getattr(config, name) for name in RUN_FIELDS})
    unread = {key for kind in KINDS for key in new_kind_keys(config.pattern, kind)}  # no layer reads them
    for field in dataclasses.fields(config):
        if field.name not in unread and getattr(back, field.name) != getattr(with_mlps, field.name):
            raise ValueError(f"{config.hf_model_type}: model.{field.name}={getattr(config, field.name)!r} has no "
                             f"form in the {config.hf_model_type} hub format (it reads back as "
                             f"{getattr(back, field.name)!r}; {_PORTABLE})")
    return hub
