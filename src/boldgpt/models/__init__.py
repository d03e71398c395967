"""boldgpt models: the transformer backbone, IGPT (shuffled-order GPT), BEiT, the
registry and model files, import of the seed project's checkpoints, and the MaskedPCA
baseline.

The names below are imported lazily (``from boldgpt.models import IGPT``), so that
importing one model module does not pull in the others.
"""

from __future__ import annotations

from boldgpt.utils.lazy import lazy_exports

_LAZY = {
    "Transformer": "boldgpt.models.transformer",
    "ModelOutput": "boldgpt.models.transformer",
    "IGPT": "boldgpt.models.igpt",
    "BEiT": "boldgpt.models.beit",
    "KVCache": "boldgpt.models.layers",
    "create_model": "boldgpt.models.registry",
    "list_models": "boldgpt.models.registry",
    "register_model": "boldgpt.models.registry",
    "save_model": "boldgpt.models.registry",
    "load_model": "boldgpt.models.registry",
    "load_original_checkpoint": "boldgpt.models.original",
    "MaskedPCA": "boldgpt.models.pca",
}

__all__, __getattr__, __dir__ = lazy_exports("boldgpt.models", _LAZY, globals())
