"""Model configurations: one frozen dataclass per model family.

:class:`PatchModelConfig` holds everything the models that read a map as patches
share (patching, the transformer backbone, the output head, what a batch holds).
Each family extends it with the fields only it has, and new families (image2bold,
CBIP, ...) subclass it the same way instead of restating it::

    PatchModelConfig          patching + backbone + head (Transformer reads it)
    ├── IGPTConfig            + shuffle, legacy_registers, order_mix
    └── BEiTConfig            + mask_ratio

Registry presets (:mod:`boldgpt.models.registry`) are instances; a variant is
``dataclasses.replace(preset, depth=6)`` (``model_config`` / ``create_model`` do that
with a "did you mean" for unknown fields). A model directory's ``config.json`` is
:meth:`PatchModelConfig.to_dict` plus format information, and
:meth:`PatchModelConfig.from_dict` reads it back.

The mask and the stored patch order are not part of a config: they describe the data
and travel with the weights (``patchify.mask``, ``patchify.patch_indices``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from boldgpt.errors import ConfigError
from boldgpt.patching import ORDER_MIX_KINDS, ORDERINGS

INPUT_KEYS = ("activity", "image")
POS_INIT = ("sincos", "random")


@dataclass(frozen=True)
class PatchModelConfig:
    """Architecture of a model over the patches of a map (or image).

    Patching and inputs:
        input_key: the batch key the model reads: ``"activity"`` (BOLD flat maps
            (B, H, W), over a cortex mask) or ``"image"`` (RGB images (B, 3, S, S),
            full square).
        image_size: S, the side of the images the model reads: its input (image
            models) or the stimuli beside the maps (image2bold, CBIP); None for maps
            alone.
        patch_size: patch side in pixels.
        channels: values per pixel (1 for maps, 3 for RGB).
        ordering: the fixed patch order (``raster``, ``radial``, ``reverse_radial``,
            ``random``); a stored order (``patch_indices``) replaces it.

    Backbone (:class:`~boldgpt.models.transformer.Transformer`):
        embed_dim, depth, num_heads, mlp_ratio: width D, blocks, heads, MLP width / D.
        num_subjects, subject_embed, subject_dropout: per-subject embedding table
            and the training-time probability of dropping a sample's embedding.
        num_registers: extra learned tokens after the subject token.
        context_dim: cross-attend to a context sequence of this width (None: no
            cross-attention).
        qkv_bias, qk_norm, layer_scale, drop_path, drop, attn_drop: block options
            (``layer_scale``: LayerScale init value, None = off; ``drop_path``:
            stochastic depth rate of the last block).
        pos_init: ``sincos``: slot position embeddings (and next-position queries)
            start as 2-D sine-cosine features of the patches' places; ``random``:
            truncated normal (the seed project's init).

    Head:
        categorical, vocab_size: predict k-means token ids (cross-entropy) instead
            of patch values (in-mask MSE).
        head_drop: dropout before the head.
    """

    input_key: str = "activity"
    image_size: int | None = None
    patch_size: int = 10
    channels: int = 1
    ordering: str = "radial"
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_subjects: int = 8
    subject_embed: bool = True
    subject_dropout: float = 0.0
    num_registers: int = 0
    context_dim: int | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    layer_scale: float | None = None
    drop_path: float = 0.0
    drop: float = 0.0
    attn_drop: float = 0.0
    pos_init: str = "sincos"
    categorical: bool = False
    vocab_size: int = 1024
    head_drop: float = 0.0

    model_class: ClassVar[str] = ""
    """Name of the model class this config builds (``config.json``'s ``class``)."""

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"model config {name}={getattr(self, name)!r}: expected {expected}")

        if self.input_key not in INPUT_KEYS:
            raise bad("input_key", f"one of {INPUT_KEYS}")
        if self.input_key == "image":
            if not isinstance(self.image_size, int) or self.image_size < 1:
                raise bad("image_size", "a positive int for an image model")
            if self.image_size % self.patch_size:
                raise bad("image_size", f"a multiple of patch_size={self.patch_size}")
        elif self.image_size is not None and "image" not in self.batch_keys:
            raise bad("image_size", "None for a model over maps alone (no 'image' in batch_keys)")
        for name in ("patch_size", "channels", "embed_dim", "num_heads", "vocab_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "a positive int")
        for name in ("depth", "num_registers", "num_subjects"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, "an int >= 0")
        if self.embed_dim % self.num_heads:
            raise bad("embed_dim", f"a multiple of num_heads={self.num_heads}")
        if self.ordering not in ORDERINGS:
            raise bad("ordering", f"one of {ORDERINGS}")
        if self.pos_init not in POS_INIT:
            raise bad("pos_init", f"one of {POS_INIT}")
        if self.subject_embed and self.num_subjects < 1:
            raise bad("num_subjects", ">= 1 with subject_embed=True")
        for name in ("subject_dropout", "drop", "attn_drop", "head_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "a probability in [0, 1]")
        if not 0.0 <= self.drop_path < 1.0:
            raise bad("drop_path", "a rate in [0, 1)")

    # ---- what the data layer needs ----------------------------------------------

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The keys a batch must hold: the input (``activity`` or ``image``) and
        ``subject_id`` when the model has subject embeddings (BOLD models:
        ``("activity", "subject_id")``; image models: ``("image",)``)."""
        return (self.input_key, "subject_id") if self.subject_embed else (self.input_key,)

    @property
    def is_image_model(self) -> bool:
        """Whether the model reads RGB images over a full square (no cortex mask)."""
        return self.input_key == "image"

    # ---- (de)serialisation ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-able values (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PatchModelConfig:
        """A config from :meth:`to_dict`'s output (or any subset of the fields);
        unknown keys are a ConfigError with "did you mean"."""
        check_fields(cls, values, "model config")
        return cls(**values)

    def replace(self, **overrides: Any) -> PatchModelConfig:
        """``dataclasses.replace`` with a ConfigError naming unknown fields."""
        check_fields(type(self), overrides, f"{type(self).__name__}")
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class IGPTConfig(PatchModelConfig):
    """An autoregressive (GPT) model over patches (:class:`~boldgpt.models.igpt.IGPT`).

    Adds:
        shuffle: train in a random order per sample, with next-position queries (so
            the model can decode in any order). False: always the fixed order.
        legacy_registers: put registers where the seed project did (appended,
            global attention). Leaks later patches into earlier predictions; only
            for running that project's checkpoints.
        order_mix: training orders of a shuffled model, as weights of the kinds in
            :data:`boldgpt.patching.ORDER_MIX_KINDS` (``random``: uniform
            permutations; ``outward``: outward from a random centre slot;
            ``region``: a region around a random centre, then the rest at random;
            ``hemisphere``: one half of the map, then the other). Default: all
            random. Normalised to sum to 1.
        query_tokens: training only (shuffled models): per sample, this many extra
            one-pass query tokens. At a cut k of its order (where the first
            hemisphere or the region ends for ``hemisphere`` and ``region`` orders,
            else a random step), that many
            of the hidden slots are each predicted directly from the first k
            patches, as ``generate.complete(method="query")`` does; their loss joins
            the next-patch loss (one mean over every prediction). 0: off.
        query_weight: with ``query_tokens``, the share of the loss given to the query
            predictions: loss = (1 - w) x next-patch loss + w x query loss. None: one
            mean over every prediction (the queries' share is then Q / (N + Q)).
        completion_head: rank of a completion head (continuous shuffled models): a
            completion token (the end query asked right after a prompt, as a one-pass
            query token) whose output a low-rank linear map turns into every patch of
            the map. Trained at ``COMPLETION_CUTS`` cuts of each training order to
            predict all the patches after the cut; ``generate.complete(method="query")``
            then averages its map with the per-slot queries. 0: off.
        completion_weight: with ``completion_head``, the weight of its loss (MSE over
            the hidden in-mask pixels) added to the next-patch loss.
    """

    shuffle: bool = True
    legacy_registers: bool = False
    order_mix: dict[str, float] = field(default_factory=lambda: {"random": 1.0})
    query_tokens: int = 0
    query_weight: float | None = None
    completion_head: int = 0
    completion_weight: float = 0.25

    model_class: ClassVar[str] = "IGPT"

    def __post_init__(self) -> None:
        super().__post_init__()
        mix = dict(self.order_mix)
        unknown = sorted(set(mix) - set(ORDER_MIX_KINDS))
        if unknown or not mix or any(not float(w) >= 0 for w in mix.values()):
            raise ConfigError(
                f"model config order_mix={self.order_mix!r}: expected non-negative weights "
                f"for some of {ORDER_MIX_KINDS}"
            )
        total = sum(float(w) for w in mix.values())
        if total <= 0:
            raise ConfigError(f"model config order_mix={self.order_mix!r}: weights sum to 0")
        if not self.shuffle and mix != {"random": 1.0}:
            raise ConfigError("model config order_mix needs shuffle=True (a fixed order)")
        if self.query_tokens < 0 or (
            self.query_tokens and (not self.shuffle or self.legacy_registers)
        ):
            raise ConfigError(
                f"model config query_tokens={self.query_tokens}: expected 0, or a positive "
                "count with shuffle=True and without legacy registers (queries need "
                "next-position queries and causal-safe registers)"
            )
        if self.query_weight is not None and not (
            self.query_tokens and 0.0 <= self.query_weight <= 1.0
        ):
            raise ConfigError(
                f"model config query_weight={self.query_weight}: expected a share in "
                "[0, 1], with query_tokens > 0 (or None)"
            )
        if self.completion_head < 0 or (
            self.completion_head
            and (not self.shuffle or self.categorical or self.query_tokens or self.legacy_registers)
        ):
            raise ConfigError(
                f"model config completion_head={self.completion_head}: expected 0, or a "
                "positive rank for a continuous model with shuffle=True, without "
                "query_tokens or legacy registers"
            )
        if not self.completion_weight >= 0:
            raise ConfigError(
                f"model config completion_weight={self.completion_weight}: expected >= 0"
            )
        # (frozen: normalise through object.__setattr__, the dataclass way)
        normalised = {k: float(w) / total for k, w in sorted(mix.items()) if float(w) > 0}
        object.__setattr__(self, "order_mix", normalised)


@dataclass(frozen=True)
class BEiTConfig(PatchModelConfig):
    """A masked-patch (BEiT) model (:class:`~boldgpt.models.beit.BEiT`).

    Adds:
        mask_ratio: fraction of patches masked per training sample: a float
            (fixed), or ``(low, high)`` for a fraction drawn uniformly per sample.
    """

    mask_ratio: float | tuple[float, float] = (0.0, 1.0)

    model_class: ClassVar[str] = "BEiT"

    def __post_init__(self) -> None:
        super().__post_init__()
        ratio = self.mask_ratio
        if isinstance(ratio, (int, float)):
            lo = hi = float(ratio)
        else:
            values = list(ratio)
            if len(values) != 2:
                raise ConfigError(f"mask_ratio must be a float or [low, high]; got {ratio!r}")
            lo, hi = float(values[0]), float(values[1])
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"mask_ratio must satisfy 0 <= low <= high <= 1; got {ratio!r}")
        object.__setattr__(self, "mask_ratio", (lo, hi))


CONFIG_CLASSES: dict[str, type[PatchModelConfig]] = {
    cls.model_class: cls for cls in (IGPTConfig, BEiTConfig)
}
"""Config class by model class name (``config.json``'s ``class``); families defined
elsewhere add theirs here."""


def check_fields(cls: type, values: dict[str, Any], where: str) -> None:
    """ConfigError (with "did you mean") for keys of ``values`` that are not fields of
    the dataclass ``cls``."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, names, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(
        f"{where}: unknown field(s) {', '.join(hints)}; {cls.__name__} has {sorted(names)}"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
