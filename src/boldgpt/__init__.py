"""boldgpt: GPT- and BEiT-style foundation models for fMRI brain-activity flat maps.

Quick start::

    import boldgpt
    # a model over maps takes the mask of its data: an array, a .npy file or a name
    model = boldgpt.create_model("boldgpt_tiny_patch10", mask="sim")
    out = model(batch)          # batch: {"activity": (B, 215, 200), "subject_id": (B,)}
    out.loss.backward()
    maps = boldgpt.sample(model, 4)          # (4, 215, 200)
    done = boldgpt.complete(model, patches, observed)   # fill in hidden patches
    boldgpt.save_model(model, "my_model")    # config.json + model.safetensors + README.md
    model = boldgpt.load_model("my_model")   # or a hub id "owner/name"

The names below are imported lazily, so ``import boldgpt`` is cheap.
"""

from __future__ import annotations

from boldgpt.utils.lazy import lazy_exports
from boldgpt.utils.mkl import enable_fast_mkl

__version__ = "0.1.0"

# Before anything imports torch: on AMD CPUs, let torch's MKL use its optimised kernels
# (boldgpt.utils.mkl; BOLDGPT_FAST_MKL=0 turns it off).
enable_fast_mkl()

_LAZY = {
    "create_model": "boldgpt.models.registry",
    "model_config": "boldgpt.models.registry",
    "list_models": "boldgpt.models.registry",
    "save_model": "boldgpt.models.registry",
    "load_model": "boldgpt.models.registry",
    "push_to_hub": "boldgpt.models.registry",
    "sample": "boldgpt.generate",
    "complete": "boldgpt.generate",
    "inpaint": "boldgpt.generate",
    "load_original_checkpoint": "boldgpt.models.original",
    "MaskedPatchify": "boldgpt.patching",
    "KMeansTokenizer": "boldgpt.tokenizer",
    "MaskedPCA": "boldgpt.models.pca",
    "load_nsd_flat": "boldgpt.data.nsd_flat",
}

__all__, __getattr__, __dir__ = lazy_exports("boldgpt", _LAZY, globals())
