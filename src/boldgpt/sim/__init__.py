"""nsd-flat-sim: the embedded dataset generator.

Writes a simulated fMRI dataset in exactly the NSD-Flat format (columns, dtypes, PNG
encodings, uint8 convention, 215 x 200 canvas, hub file layout) from a ground-truth
model of visual cortex: a retinotopic atlas with receptive fields that pool image
contrast, category-selective regions, per-subject anatomy and gains, and spatially
correlated noise at a chosen SNR. The noiseless maps are kept, so models trained on
the data can be scored against the truth.

    from boldgpt.sim import simulate_dataset, load_ground_truth
    root = simulate_dataset("sim-demo", "demo")                 # 12,000 maps
    truth = load_ground_truth(root, subject_id=0, nsd_ids=[...]) # (n, 215, 200)

Modules: ``presets`` (named sizes, dataset identity), ``geometry`` (mask, atlas),
``design`` (schedule), ``stimuli`` / ``scenes`` /
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
    "default_mask": "boldgpt.sim.geometry",
    "simulate_dataset": "boldgpt.sim.simulator",
    "PRESETS": "boldgpt.sim.presets",
    "Preset": "boldgpt.sim.presets",
    "DEFAULT_SNR": "boldgpt.sim.simulator",
    "load_ground_truth": "boldgpt.sim.truth",
    "load_stimulus_truth": "boldgpt.sim.truth",
    "load_subject_model": "boldgpt.sim.truth",
    "validate_simulation": "boldgpt.sim.validate",
}

__all__, __getattr__, __dir__ = lazy_exports("boldgpt.sim", _LAZY, globals())
