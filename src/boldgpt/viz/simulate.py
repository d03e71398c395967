"""The simulator at a glance: stimuli, their noiseless and measured maps, and the atlas."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from PIL import Image

from boldgpt.data import schema
from boldgpt.viz.maps import save_figure, show_image, show_map


def _example_rows(root: Path, subjects: Sequence[int], n: int, seed: int) -> dict:
    """For ``n`` stimuli seen by all ``subjects`` (shared ones first): the picture and,
    per subject, the decoded map of its first presentation."""
    files = [p for pattern in schema.SPLIT_FILES.values() for p in sorted(root.glob(pattern))]
    index = []
    for f, path in enumerate(files):
        t = pq.read_table(path, columns=["subject_id", "nsd_id", "shared1000", "trial_id"])
        for r, (s, i, sh, tr) in enumerate(zip(*(t[c].to_numpy() for c in t.column_names))):
            index.append((int(s), int(i), bool(sh), int(tr), f, r))
    seen: dict[int, dict[int, tuple]] = {}
    shared = set()
    for s, i, sh, tr, f, r in index:
        if s in subjects and (i not in seen.get(s, {}) or tr < seen[s][i][0]):
            seen.setdefault(s, {})[i] = (tr, f, r)
        if sh:
            shared.add(i)
    common = set.intersection(*(set(seen.get(s, {})) for s in subjects))
    if not common:
        raise ValueError(f"no stimulus was seen by all of subjects {list(subjects)}")
    rng = np.random.default_rng(seed)
    ordered = sorted(common, key=lambda i: (i not in shared, rng.random()))
    chosen = ordered[:n]
    wanted: dict[int, list[tuple[int, str, int]]] = {}
    for i in chosen:
        for s in subjects:
            _, f, r = seen[s][i]
            wanted.setdefault(f, []).append((r, f"{s}:{i}", s))
    out: dict = {"ids": chosen, "maps": {}, "images": {}}
    for f, rows in wanted.items():
        t = pq.read_table(files[f], columns=["image", "activity", "nsd_id"]).take(
            [r for r, _, _ in rows]
        )
        for k, (_, key, _s) in enumerate(rows):
            act = t["activity"][k].as_py()["bytes"]
            out["maps"][key] = schema.dequantize(np.asarray(Image.open(io.BytesIO(act))))
            nsd = int(t["nsd_id"][k].as_py())
            if nsd not in out["images"]:
                img = t["image"][k].as_py()["bytes"]
                out["images"][nsd] = np.asarray(Image.open(io.BytesIO(img)).convert("RGB"))
    return out


def plot_simulation(
    out_dir: str | os.PathLike,
    path: str | os.PathLike | None = None,
    *,
    subjects: Sequence[int] | None = None,
    n_examples: int = 3,
    seed: int = 0,
) -> Figure:
    """Figure of a simulated dataset.

    Top: ``n_examples`` stimuli seen by every shown subject (up to 3), each with, per
    subject, its noiseless map (ground truth, z units) and one measured single-trial
    map. Bottom: the first subject's eccentricity and polar-angle maps, visual areas,
    category-selective regions and per-pixel SNR. Saved to ``path`` if given.
    """
    from boldgpt.sim.geometry import AREAS, DOMAINS
    from boldgpt.sim.truth import load_ground_truth, load_subject_model

    root = Path(out_dir)
    info = json.loads((root / "simulation.json").read_text())
    subjects = list(subjects if subjects is not None else info["subjects"][:3])
    mask = np.load(root / "mask.npy")
    ex = _example_rows(root, subjects, n_examples, seed)
    ids = ex["ids"]

    cols = max(1 + 2 * len(subjects), 5)
    fig = Figure(figsize=(1.9 * cols, 2.1 * (len(ids) + 1) + 0.6))
    grid = fig.add_gridspec(len(ids) + 1, cols, hspace=0.35, wspace=0.08)
    truths = {s: load_ground_truth(root, s, ids) for s in subjects}
    for row, nsd in enumerate(ids):
        show_image(fig.add_subplot(grid[row, 0]), ex["images"][nsd], title=f"nsd_id {nsd}")
        for k, s in enumerate(subjects):
            name = schema.subject_name(s)
            show_map(fig.add_subplot(grid[row, 1 + 2 * k]), truths[s][row], mask,
                     title=f"{name} noiseless" if row == 0 else None)  # fmt: skip
            show_map(fig.add_subplot(grid[row, 2 + 2 * k]), ex["maps"][f"{s}:{nsd}"], mask,
                     title=f"{name} one trial" if row == 0 else None)  # fmt: skip

    model = load_subject_model(root, subjects[0])
    bottom = len(ids)

    def canvas(values, fill=np.nan):
        return model.to_canvas(np.asarray(values, np.float32)[None], fill)[0]

    angle = np.degrees(np.arctan2(model.rf_y, model.rf_x))
    regions = model.loadings[:, : len(DOMAINS)]
    best = np.where(regions.max(1) > 0.35, regions.argmax(1), np.nan)
    panels = [
        (canvas(model.ecc), "viridis", 0, 8, "eccentricity (deg)"),
        (canvas(angle), "twilight", -180, 180, "polar angle (deg)"),
        (canvas(model.area), "tab10", -0.5, 9.5, "areas"),
        (canvas(best), "Set1", -0.5, 8.5, "category regions"),
        (canvas(model.snr), "magma", 0, 2, "single-trial SNR"),
    ]
    for k, (values, cmap, vmin, vmax, title) in enumerate(panels):
        ax = fig.add_subplot(grid[bottom, k])
        im = show_map(ax, values, mask, cmap=cmap, vmin=vmin, vmax=vmax, title=title)
        if k in (0, 1, 4):
            fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        legend = AREAS if k == 2 else DOMAINS if k == 3 else ()
        color = im.cmap if legend else None
        for j, label in enumerate(legend):
            ax.text(1.02, 1 - j * 0.1, label, transform=ax.transAxes, fontsize=6,
                    color=color(im.norm(j)), va="top")  # fmt: skip
    fig.suptitle(
        f"nsd-flat-sim {info['preset']} (seed {info['seed']}, SNR {info['snr']}): "
        f"{info['splits']['train'] + info['splits']['test']} maps, {info['num_stimuli']} stimuli",
        fontsize=10,
    )
    if path is not None:
        save_figure(fig, path)
    return fig
