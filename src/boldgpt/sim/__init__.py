"""nsd-flat-sim: the embedded dataset generator.

Writes a simulated fMRI dataset in exactly the NSD-Flat format (columns, dtypes, PNG
encodings, uint8 convention, 215 x 200 canvas, hub file layout) from a ground-truth
model of visual cortex: a retinotopic atlas with receptive fields that pool image
contrast, category-selective regions, per-subject anatomy and gains, and spatially
correlated noise at a chosen SNR. The noiseless maps are kept, so models trained on
the data can be scored against the truth.

    from boldgpt.data.simulate import simulate_dataset, load_ground_truth
    root = simulate_dataset("sim-demo", "demo")                 # 10,000 maps
    truth = load_ground_truth(root, subject_id=0, nsd_ids=[...]) # (n, 215, 200)

Modules: ``geometry`` (mask, atlas), ``design`` (schedule), ``stimuli`` / ``scenes`` /
``painter`` / ``objects`` / ``categories`` (pictures), ``features`` (what the brain
sees), ``forward`` (noiseless maps), ``noise`` (noise, z-scoring), ``store`` (rendering
every stimulus once), ``trials`` (a subject's maps and rows), ``writer`` (parquet, PNG,
card), ``simulator`` (the pipeline), ``truth`` (reading the ground truth back),
``validate`` (the science checks).

Names are imported lazily, so ``default_mask`` does not pull in the whole generator.
"""

from __future__ import annotations

from boldgpt.utils.lazy import lazy_exports

_LAZY = {
    "default_mask": "boldgpt.data.simulate.geometry",
    "simulate_dataset": "boldgpt.data.simulate.simulator",
    "PRESETS": "boldgpt.data.simulate.simulator",
    "Preset": "boldgpt.data.simulate.simulator",
    "DEFAULT_SNR": "boldgpt.data.simulate.simulator",
    "load_ground_truth": "boldgpt.data.simulate.truth",
    "load_stimulus_truth": "boldgpt.data.simulate.truth",
    "load_subject_model": "boldgpt.data.simulate.truth",
    "validate_simulation": "boldgpt.data.simulate.validate",
}

__all__, __getattr__, __dir__ = lazy_exports("boldgpt.data.simulate", _LAZY, globals())
