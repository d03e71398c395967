"""Frozen image encoders: one interface for the image side of image2bold and CBIP.

An encoder maps prepared images (B, 3, S, S) (float, normalised with the encoder's
``mean`` / ``std``) to token features (B, M, C) and a pooled embedding (B, C). It
carries what the data transforms need: ``image_size`` S and the normalisation.
Encoders are frozen: no parameter takes a gradient, dropout is off whatever the mode
of the model around them, and their forward runs without autograd.

Encoders are named by a string (:func:`build_image_encoder`):

- the path of a model directory of an image model (``imagebeit_*`` / ``imagegpt_*``
  pretrained with ``boldgpt train``), or its hub id ``owner/name``, loaded with
  :func:`~boldgpt.models.registry.load_model`;
- the registry name of an image model (``"imagebeit_micro_patch16"``): the same
  architecture with random weights, at the requested image size (for tests and
  shape checks; its features carry no learned meaning);
- ``"timm:<model name>"`` (weights from the hub when reachable) or
  ``"timm:<model name>:<weights file>"``: a :mod:`timm` model (optional extra).

:class:`TargetCache` keeps an encoder's outputs per stimulus (NSD id), so a frozen
encoder runs once per picture rather than once per trial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boldgpt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boldgpt.errors import ConfigError, DataError


@dataclass
class EncoderOutput:
    """``tokens`` (B, M, C) features of the image's parts; ``pooled`` (B, C) one
    embedding per image."""

    tokens: torch.Tensor
    pooled: torch.Tensor


class ImageEncoder(nn.Module):
    """Base of the frozen image encoders.

    Subclasses set ``image_size`` (S), ``embed_dim`` (C), ``num_tokens`` (M), ``mean``
    and ``std`` (per channel, applied by the data transforms, not here) and implement
    :meth:`encode`.
    """

    image_size: int
    embed_dim: int
    num_tokens: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    name: str = ""

    def freeze(self) -> ImageEncoder:
        """No gradients, eval mode (kept by :meth:`train`)."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> ImageEncoder:
        # frozen features must not change with the mode of the model around them
        return super().train(False)

    def check_images(self, images: torch.Tensor, key: str = "image") -> None:
        """DataError unless ``images`` is a float (B, 3, S, S) batch of this encoder's
        size."""
        S = self.image_size
        if not torch.is_tensor(images):
            raise DataError(f"batch[{key!r}] must be a tensor (B, 3, {S}, {S}); got {type(images)}")
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise DataError(
                f"batch[{key!r}] must have shape (B, 3, {S}, {S}) for image encoder "
                f"{self.name!r}; got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise DataError(
                f"batch[{key!r}] must be float images normalised with the encoder's mean/std "
                f"(boldgpt.data.transforms.prepare_batch); got {images.dtype}"
            )

    def encode(self, images: torch.Tensor) -> EncoderOutput:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        """images (B, 3, S, S) -> tokens (B, M, C), pooled (B, C); no autograd."""
        self.check_images(images)
        with torch.no_grad():
            return self.encode(images)


class BackboneEncoder(ImageEncoder):
    """A boldgpt image model (IGPT or BEiT over RGB patches) used as an encoder.

    Tokens are the backbone's final (normed) outputs at the patch positions, in the
    model's fixed order (M = number of patches); ``pooled`` is their mean. A causal
    model runs in its fixed order (with its next-position queries, as in training).
    """

    def __init__(self, model: nn.Module, name: str = ""):
        super().__init__()
        config = getattr(model, "config", None)
        if config is None or not getattr(config, "is_image_model", False):
            raise ConfigError(
                f"image encoder {name!r}: expected an image model (imagebeit_* / imagegpt_*, "
                f"input_key='image'); got {type(model).__name__} "
                f"with input_key={getattr(config, 'input_key', None)!r}"
            )
        self.model = model
        self.name = name
        self.image_size = int(config.image_size)
        self.embed_dim = int(config.embed_dim)
        self.num_tokens = int(model.num_patches)
        self.freeze()

    def encode(self, images: torch.Tensor) -> EncoderOutput:
        m, b = self.model, self.model.backbone
        patches = m.patchify(images)
        B, N = patches.shape[:2]
        slots = torch.arange(N, device=patches.device)
        x = torch.cat([b.prefix(None, B), b.embed_patches(patches, slots)], dim=1)
        if b.has_next_pos_query:
            # the fixed order: the last prefix token queries slot 0, patch t slot t + 1
            x[:, -(N + 1) :] += b.queries(torch.arange(N + 1, device=x.device))
        tokens = b(x)[:, b.num_prefix :]
        return EncoderOutput(tokens=tokens, pooled=tokens.mean(dim=1))


class TimmEncoder(ImageEncoder):
    """A :mod:`timm` model as a frozen encoder (``pip install timm``).

    Tokens come from ``forward_features`` (B, M, C); ``pooled`` from
    ``forward_head(..., pre_logits=True)``. Input size and normalisation are read from
    the model's ``pretrained_cfg``.
    """

    def __init__(self, model_name: str, weights: str | None = None):
        super().__init__()
        try:
            import timm
        except ImportError as exc:
            raise ConfigError(
                f"image encoder 'timm:{model_name}' needs the optional package timm "
                f"(pip install timm): {exc}"
            ) from None
        try:
            self.model = timm.create_model(
                model_name,
                pretrained=True,
                pretrained_cfg_overlay=dict(file=weights) if weights else None,
                num_classes=0,
            )
        except Exception as exc:  # timm raises RuntimeError / HF errors for unknown names
            raise ConfigError(
                f"image encoder 'timm:{model_name}': cannot create it ({type(exc).__name__}: "
                f"{exc}); without network access give a local weights file as "
                f"'timm:{model_name}:<file>'"
            ) from exc
        cfg = self.model.pretrained_cfg
        self.name = f"timm:{model_name}"
        self.image_size = int(cfg["input_size"][-1])
        self.mean = tuple(float(v) for v in cfg["mean"])  # type: ignore[assignment]
        self.std = tuple(float(v) for v in cfg["std"])  # type: ignore[assignment]
        self.embed_dim = int(self.model.num_features)
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.image_size, self.image_size)
            self.num_tokens = int(self._tokens(self.model.forward_features(probe)).shape[1])
        self.freeze()

    @staticmethod
    def _tokens(features: torch.Tensor) -> torch.Tensor:
        # convolutional nets give (B, C, h, w) maps: one token per place
        return features.flatten(2).transpose(1, 2) if features.ndim == 4 else features

    def encode(self, images: torch.Tensor) -> EncoderOutput:
        features = self.model.forward_features(images)
        pooled = self.model.forward_head(features, pre_logits=True)
        return EncoderOutput(tokens=self._tokens(features), pooled=pooled)


def build_image_encoder(spec: str, image_size: int | None = None) -> ImageEncoder:
    """The frozen encoder named by ``spec`` (see the module docstring).

    ``image_size``: the size the encoder must take (a ConfigError when a loaded or
    timm encoder expects another); for a registry name it sets the size of the
    fresh model.
    """
    from boldgpt.models.registry import list_models, load_model, model_config
    from boldgpt.utils.hub import is_hub_id

    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"image_encoder must be a non-empty string; got {spec!r}")
    if spec.startswith("timm:"):
        name, _, weights = spec[len("timm:") :].partition(":")
        encoder: ImageEncoder = TimmEncoder(name, weights or None)
    elif Path(spec).expanduser().exists():
        encoder = BackboneEncoder(load_model(Path(spec).expanduser()), name=spec)
    elif is_hub_id(spec):
        encoder = BackboneEncoder(load_model(spec), name=spec)
    elif spec in list_models():
        from boldgpt.models.registry import create_model

        if not model_config(spec).is_image_model:
            raise ConfigError(f"image_encoder {spec!r} is not an image model")
        size = {} if image_size is None else {"image_size": image_size}
        encoder = BackboneEncoder(create_model(spec, **size), name=spec)
    else:
        images = [n for n in list_models() if n.startswith(("imagebeit_", "imagegpt_"))]
        raise ConfigError(
            f"image_encoder {spec!r}: no such model directory, and not a hub id "
            f"'owner/name', an image model name ({', '.join(images)}) nor 'timm:<name>'"
        )
    if image_size is not None and encoder.image_size != image_size:
        raise ConfigError(
            f"image_encoder {spec!r} takes {encoder.image_size} px images; the model's "
            f"image_size is {image_size} (set image_size={encoder.image_size})"
        )
    return encoder


def batch_images(batch: Mapping[str, Any], encoder: ImageEncoder, model: str) -> torch.Tensor:
    """``batch["image"]`` checked against ``encoder``; a DataError naming what the
    model called ``model`` needs when the batch has no images."""
    if "image" not in batch:
        S = encoder.image_size
        raise DataError(
            f"{model} needs batch['image'] (B, 3, {S}, {S}), the stimuli of the maps; the "
            f"batch has {sorted(batch)} (cache the data with images: image_size={S})"
        )
    encoder.check_images(batch["image"])
    return batch["image"]


class TargetCache:
    """An encoder's outputs per stimulus id, computed once per picture.

    Only valid when a stimulus always reaches the encoder as the same tensor (no
    random image augmentation). Entries live on the device of the outputs; not
    saved with the model.
    """

    def __init__(self) -> None:
        self.tokens: dict[int, torch.Tensor] = {}
        self.pooled: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.pooled)

    def __call__(
        self, encoder: ImageEncoder, images: torch.Tensor, stimulus_id: Sequence[int] | torch.Tensor
    ) -> EncoderOutput:
        """Outputs for images (B, 3, S, S) of stimuli ``stimulus_id`` (B,), running
        the encoder only on pictures not seen before (reading the ids syncs a
        device)."""
        encoder.check_images(images)
        ids = [int(i) for i in torch.as_tensor(stimulus_id).tolist()]
        if len(ids) != images.shape[0]:
            raise DataError(
                f"nsd_id must hold one stimulus id per image: {images.shape[0]}; got {len(ids)}"
            )
        new = sorted({i for i in ids if i not in self.pooled})
        if new:
            first = {i: ids.index(i) for i in new}
            out = encoder(images[[first[i] for i in new]])
            for k, i in enumerate(new):
                self.tokens[i], self.pooled[i] = out.tokens[k], out.pooled[k]
        return EncoderOutput(
            tokens=torch.stack([self.tokens[i] for i in ids]),
            pooled=torch.stack([self.pooled[i] for i in ids]),
        )
