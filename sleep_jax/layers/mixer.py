"""What a block kind's mixer implements, and the config group it declares.

A mixer is the part of a block that differs by kind (attention, GDN, JetBlock, ...); the norms,
residuals and MLP around it are `layers.block.Block`'s. It implements exactly:

    from_config(config, index, *, rngs)      build layer `index` from a `model.ModelConfig`
    init_state(batch)                        its zero recurrent state (None: it has none): a dict
                                             holding its fast weights under FAST_WEIGHTS ("S"),
                                             the rest tails of the token sequence (the conv's)
    init_kv(batch, length)                   zero keys/values {"k", "v"} (None: it keeps none)
    span(x [B,T,D], state, past, span: windows.Span) -> (y [B,T,D], state, kv)
        a span of tokens; `past`: retained keys/values of earlier tokens (attention), kv: this
        span's own keys/values (None without attention); with `span.count` set, the tokens after
        the first `count` are padding: the returned state is that after the `count`-th token
    step(x [B,D], state, cache, token: windows.Token) -> (y [B,D], state, cache)
        one token per row; `cache`: this layer's ring buffer (None without attention)

and the class attributes `has_state` / `has_kv`, `fields` (its config group: a `Fields` dataclass
of the `model.*` keys it owns, or None) and `impls` (the `model.delta_rule_impl` values it has a
form for; None when it has no fast-weight op).
"""
import dataclasses
from typing import ClassVar

from flax import nnx

# The entry of a stateful mixer's state that holds its fast weights (sleep carries it across
# passes and windows; the other entries restart every pass).
FAST_WEIGHTS = "S"


@dataclasses.dataclass(frozen=True)
class Fields:
    """A config group: `model.*` keys owned by one part of the model, under their flat names (as
    on the command line and in config.json). `__post_init__` checks and normalises its own values:
    each rule on them lives here and names the key. `model.ModelConfig` holds every group's fields.

    Class attributes: `layer_index_fields` (fields holding layer indices) and `layer_value_fields`
    (fields holding one value per layer): `ModelConfig` checks them against the pattern and
    `hf.insert` moves them with their layers.
    """
    layer_index_fields: ClassVar[tuple[str, ...]] = ()
    layer_value_fields: ClassVar[tuple[str, ...]] = ()

    def _at_least_one(self, *names: str) -> None:
        for name in names:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")

    def _set(self, name: str, value) -> None:
        """Normalise a field of this frozen group (e.g. a list into a tuple)."""
        object.__setattr__(self, name, value)


class Mixer(nnx.Module):
    """Base of the mixers: the defaults of the protocol in the module docstring."""
    fields: ClassVar[type[Fields] | None] = None
    has_state: ClassVar[bool] = False
    has_kv: ClassVar[bool] = False
    impls: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def from_config(cls, config, index: int, *, rngs: nnx.Rngs) -> "Mixer":
        raise NotImplementedError

    def init_state(self, batch: int):
        return None

    def init_kv(self, batch: int, length: int):
        return None
