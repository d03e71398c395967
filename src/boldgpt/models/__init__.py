"""boldgpt models: configs, the transformer backbone, IGPT (shuffled-order GPT), BEiT,
the registry and model directories, import of the seed project's checkpoints, and the
MaskedPCA baseline.

Modules: ``config`` (one frozen dataclass per family: ``PatchModelConfig``,
``IGPTConfig``, ``BEiTConfig``), ``layers`` (attention, KV cache, blocks, the one
weight-decay rule ``param_groups``), ``transformer`` (backbone and ``PatchModel``
base), ``igpt``, ``beit``, ``checks`` (input value checks without device syncs),
``registry`` (presets, ``create_model``, ``model_config``, ``describe``, model
directories, hub), ``original`` (seed-project checkpoints), ``pca`` (MaskedPCA);
image <-> BOLD: ``encoders`` (frozen image encoders), ``losses`` (CLIP, SigLIP,
cosine), ``cbip``, ``image2bold``, ``bold2image``, ``pretrained`` (``init_from``:
start from a pretrained map model).
Generation (sampling, completion) lives in :mod:`boldgpt.generate` and takes a model.

The names below are imported lazily (``from boldgpt.models import IGPT``), so that
importing one model module does not pull in the others.
"""

from __future__ import annotations

from boldgpt.utils.lazy import lazy_exports

_LAZY = {
    "PatchModelConfig": "boldgpt.models.config",
    "IGPTConfig": "boldgpt.models.config",
    "BEiTConfig": "boldgpt.models.config",
    "Transformer": "boldgpt.models.transformer",
    "ModelOutput": "boldgpt.models.transformer",
    "IGPT": "boldgpt.models.igpt",
    "BEiT": "boldgpt.models.beit",
    "KVCache": "boldgpt.models.layers",
    "param_groups": "boldgpt.models.layers",
    "check_subject_ids": "boldgpt.models.checks",
    "create_model": "boldgpt.models.registry",
    "model_config": "boldgpt.models.registry",
    "describe": "boldgpt.models.registry",
    "list_models": "boldgpt.models.registry",
    "register_model": "boldgpt.models.registry",
    "save_model": "boldgpt.models.registry",
    "load_model": "boldgpt.models.registry",
    "push_to_hub": "boldgpt.models.registry",
    "load_original_checkpoint": "boldgpt.models.original",
    "MaskedPCA": "boldgpt.models.pca",
    "CBIP": "boldgpt.models.cbip",
    "CBIPConfig": "boldgpt.models.cbip",
    "Image2BOLD": "boldgpt.models.image2bold",
    "Image2BOLDConfig": "boldgpt.models.image2bold",
    "Bold2Image": "boldgpt.models.bold2image",
    "Bold2ImageConfig": "boldgpt.models.bold2image",
    "build_image_encoder": "boldgpt.models.encoders",
    "init_from": "boldgpt.models.pretrained",
}

__all__, __getattr__, __dir__ = lazy_exports("boldgpt.models", _LAZY, globals())
