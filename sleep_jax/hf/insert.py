"""The paper's modification of a pretrained model: new blocks inserted at given layer positions.

    model = hf.from_pretrained(DIR)
    model = insert_blocks(model, positions=(4, 8), kind="G")      # two MLP-free GDN blocks

Initialisation: each inserted block is the identity at step 0. Its residual branches end in an
output projection (`mixer.w_o`, and `mlp.w_down` with `mlp=True`) that is set to zero, so the
block adds exactly 0 to the residual stream and the model's logits are those of the pretrained
model, bit for bit. Why this and not a small random init: fine-tuning then starts from the
pretrained loss (nothing to recover from), while the inserted block is still live. Its recurrent
state S is written from the first token (the delta rule's keys and values come from the block's
other, randomly initialised, projections), so sleep's passes refine it from step 0, and the loss
gradient reaches the zeroed projection at once (d loss / d w_o = the mixer's read-out times the
residual gradient). Once w_o moves, the rest of the block gets gradient too (the zero-init
residual branch of ReZero / Fixup / LoRA's B = 0).
"""
import dataclasses
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from sleep_jax.layers import KINDS, Block
from sleep_jax.model import LAYER_INDEX_FIELDS, LAYER_VALUE_FIELDS, HybridModel, ModelConfig

# The parameter that ends each residual branch of an inserted block: zero = identity block.
OUTPUT_PROJECTIONS = (("mixer", "w_o"), ("mlp", "w_down"))


def inserted_config(config: ModelConfig, positions: Sequence[int], kind: str, *, mlp: bool = False) -> ModelConfig:
    """The ModelConfig after inserting blocks of `kind` at `positions` (indices in the new layer list).

    Every per-layer option (`model.LAYER_INDEX_FIELDS`, `model.LAYER_VALUE_FIELDS`) follows its
    layer to its new index; inserted layers get none (value 0) and, unless `mlp`, join
    `no_mlp_layers`. A looped segment keeps its blocks; a block inserted inside it or at either of
    its ends joins it (inserted blocks carry fast weights, which is what sleep's passes refine).
    """
    if kind not in KINDS:
        raise ValueError(f"insert_blocks: kind={kind!r} must be one of {tuple(KINDS)}")
    old_count = len(config.pattern)
    new_count = old_count + len(positions)
    inserted = sorted(int(p) for p in positions)
    if len(set(inserted)) != len(inserted) or any(not 0 <= p < new_count for p in inserted):
        raise ValueError(f"insert_blocks: positions={tuple(positions)} must be distinct indices in [0, {new_count}) "
                         f"(the new layer list: {old_count} layers + {len(inserted)} inserted)")
    new_index = [j for j in range(new_count) if j not in inserted]      # old layer i -> new index
    letters = iter(config.pattern)
    pattern = "".join(kind if j in inserted else next(letters) for j in range(new_count))
    fields = {name: tuple(new_index[i] for i in getattr(config, name)) for name in LAYER_INDEX_FIELDS}
    if not mlp:
        fields["no_mlp_layers"] = tuple(sorted(fields["no_mlp_layers"] + tuple(inserted)))
    for name in LAYER_VALUE_FIELDS:
        values = iter(getattr(config, name))
        fields[name] = tuple(0 if j in inserted else next(values) for j in range(new_count)) \
            if getattr(config, name) else ()
    loop = config.loop
    if loop is not None:
        start, end = loop
        loop = (new_index[start - 1] + 1 if start > 0 else 0, new_index[end] if end < old_count else new_count)
    return dataclasses.replace(config, pattern=pattern, loop=loop, **fields)


def _node(root, path):
    for step in path:
        root = root[step] if isinstance(step, int) else getattr(root, step)
    return root


def insert_blocks(model: HybridModel, positions: Sequence[int], kind: str, *,
                  mlp: bool = False, seed: int = 0) -> HybridModel:
    """A new model: `model` with blocks of `kind` inserted at `positions` (indices in the new layer
    list), without an MLP unless `mlp`.

    The returned model's config is `inserted_config(...)`; every parameter of `model` is copied
    exactly (the same arrays); the inserted blocks draw their parameters from `seed` and have their
    output projections zeroed, so at init the returned model computes the same logits as `model`.
    """
    config = inserted_config(model.config, positions, kind, mlp=mlp)
    inserted = sorted(int(p) for p in positions)
    old_index = {j: i for i, j in enumerate(j for j in range(len(config.pattern)) if j not in inserted)}
    rngs = nnx.Rngs(seed)
    fresh = {j: Block(config, j, rngs=rngs) for j in inserted}
    for block in fresh.values():
        for path in OUTPUT_PROJECTIONS:
            try:
                param = _node(block, path)
            except AttributeError:
                if path[0] == "mixer":
                    raise ValueError(f"insert_blocks: block kind {kind!r} has no output projection "
                                     f"{'.'.join(path)} to zero") from None
                continue
            if param is not None:
                param.set_value(jnp.zeros_like(param.get_value()))
    new = nnx.eval_shape(lambda: HybridModel(config, rngs=nnx.Rngs(seed)))
    for path, param in nnx.iter_graph(new):
        if not isinstance(param, nnx.Param):
            continue
        if path[0] == "blocks" and path[1] in fresh:
            source = _node(fresh[path[1]], path[2:])
        elif path[0] == "blocks":
            source = _node(model, ("blocks", old_index[path[1]], *path[2:]))
        else:
            source = _node(model, path)
        param.set_value(source.get_value())
    return new
