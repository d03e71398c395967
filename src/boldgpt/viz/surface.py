"""Figures of real cortical anatomy on the NSD-Flat canvas (:mod:`boldgpt.surface`):
nilearn's fsaverage5 sulcal depth, curvature and thickness flattened with the ROI
outline and the calcarine cut, and a flat map sent back to the inflated surface."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from boldgpt.data import schema
from boldgpt.surface import meshes
from boldgpt.surface.anatomy import calcarine_cut
from boldgpt.surface.geometry import SurfaceGeometry, build_geometry


def anatomy_figure(out: str | os.PathLike, geometry: SurfaceGeometry | None = None) -> Path:
    """Draw nilearn's real fsaverage5 sulcal depth, curvature and thickness flattened onto
    the NSD-Flat canvas, with the ROI outline and the calcarine cut, beside the whole left
    flat hemisphere with the ROI shaded. Writes a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    geometry = geometry or build_geometry()
    raster = geometry.raster
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1.25, 1, 1, 1]})

    # context: the whole left flat hemisphere, the ROI shaded
    flat, faces = meshes.load_surface("flat", "left")
    sulc = meshes.load_anatomy("sulc", "left")
    ax = axes[0]
    ax.tripcolor(flat[:, 0], flat[:, 1], faces, sulc, cmap="Greys", shading="gouraud")
    roi_faces = faces[geometry.roi[0][faces].all(axis=1)]
    ax.triplot(flat[:, 0], flat[:, 1], roi_faces, color="tab:orange", lw=0.15, alpha=0.6)
    ax.set_aspect("equal")
    ax.set_title("left hemisphere, fsaverage5 flat\n(ROI: pial y < -60 mm, orange)", fontsize=10)
    ax.set_xlabel("flat x (mm)")
    ax.set_ylabel("flat y (mm)")

    left, right, bottom, top = schema.MAP_RECT_MM
    cuts = [calcarine_cut(h) for h in meshes.HEMIS]
    titles = {"sulc": "sulcal depth", "curv": "curvature", "thick": "thickness (mm)"}
    cmaps = {"sulc": "Greys", "curv": "Greys", "thick": "viridis"}
    for ax, name in zip(axes[1:], ("sulc", "curv", "thick")):
        values = [meshes.load_anatomy(name, h) for h in meshes.HEMIS]
        flat_map = raster.to_flat(*values, fill=np.nan)
        lo, hi = np.nanpercentile(flat_map, [2, 98])
        im = ax.imshow(
            flat_map, cmap=cmaps[name], vmin=lo, vmax=hi, extent=(left, right, bottom, top)
        )
        ax.contour(
            np.flipud(raster.mask).astype(float),
            [0.5],
            colors="tab:orange",
            linewidths=0.8,
            extent=(left, right, bottom, top),
        )
        if name == "sulc":
            for h, hemi in enumerate(meshes.HEMIS):
                pts = geometry.coords[h][cuts[h][geometry.roi[h][cuts[h]]]]
                ax.plot(
                    pts[:, 0],
                    pts[:, 1],
                    ".",
                    color="tab:red",
                    ms=1.5,
                    label="calcarine banks (flattening cut)" if h == 0 else None,
                )
                pole = np.argmin(meshes.load_surface("pial", hemi)[0][:, 1])
                ax.plot(
                    *geometry.coords[h][pole],
                    "*",
                    color="tab:red",
                    ms=9,
                    label="occipital pole" if h == 0 else None,
                )
            ax.text(-50, 60, "cuneus side", fontsize=7, ha="center", color="tab:blue")
            ax.text(-50, -95, "lingual side", fontsize=7, ha="center", color="tab:blue")
            ax.legend(loc="upper center", fontsize=7, framealpha=0.8, bbox_to_anchor=(0.5, -0.12))
        ax.set_title(f"{titles[name]} on the NSD-Flat canvas", fontsize=10)
        ax.set_xlabel("x (mm)")
        bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        if name == "sulc":
            bar.set_label("deep (sulci) = dark", fontsize=8)
    axes[1].set_ylabel("y (mm)")
    fig.suptitle(
        f"Real fsaverage5 anatomy (nilearn) flattened: {int(raster.mask.sum()):,} pixels in the "
        "occipital ROI (orange outline), left hemisphere on the left",
        fontsize=11,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def round_trip_figure(out: str | os.PathLike, geometry: SurfaceGeometry | None = None) -> Path:
    """The way back, drawn: real sulcal depth (z-scored over the ROI) flattened and coded
    as uint8 like a dataset map (or a model's output), then sent back to the vertices
    (:func:`boldgpt.surface.flatten.maps_to_surface`) and drawn on nilearn's inflated
    fsaverage5 left hemisphere beside the original. Writes a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    from boldgpt.surface.flatten import maps_to_surface

    geometry = geometry or build_geometry()
    raster = geometry.raster
    sulc = [meshes.load_anatomy("sulc", h) for h in meshes.HEMIS]
    inside = [np.zeros(len(s), dtype=bool) for s in sulc]
    for h in range(2):
        inside[h][np.unique(geometry.faces[h])] = True
    mean = np.concatenate([s[m] for s, m in zip(sulc, inside)]).mean()
    std = np.concatenate([s[m] for s, m in zip(sulc, inside)]).std()
    z = [(s - mean) / std for s in sulc]
    coded = schema.quantize(raster.to_flat(*z, fill=0.0))
    left, _ = maps_to_surface(coded, geometry)
    back = left[0]
    has = raster.has_value[0]
    corr = float(np.corrcoef(np.clip(z[0][has], -2.5, 2.5), back[has])[0, 1])

    fig = plt.figure(figsize=(15, 4.2))
    ax = fig.add_subplot(1, 4, 1)
    left_mm, right_mm, bottom, top = schema.MAP_RECT_MM
    shown = np.where(raster.mask, schema.dequantize(coded), np.nan)
    ax.imshow(shown, cmap="Greys", vmin=-2.5, vmax=2.5, extent=(left_mm, right_mm, bottom, top))
    ax.set_title("flat map (uint8 code), z", fontsize=10)
    ax.set_xlabel("x (mm)")
    infl = str(meshes.fsaverage5_file("infl", "left"))
    panels = [
        (z[0], "medial", "original (left, medial)"),
        (np.where(has, back, 0.0), "medial", "back from the flat map (medial)"),
        (np.where(has, back, 0.0), "posterior", "back from the flat map (posterior)"),
    ]
    for k, (values, view, title) in enumerate(panels):
        ax = fig.add_subplot(1, 4, k + 2, projection="3d")
        plotting.plot_surf(
            infl,
            values,
            hemi="left",
            view=view,
            axes=ax,
            figure=fig,
            cmap="Greys",
            vmin=-2.5,
            vmax=2.5,
            engine="matplotlib",
            colorbar=False,
        )
        ax.set_title(title, fontsize=10)
    fig.suptitle(
        "Flat map -> surface (boldgpt data to-surface): sulcal depth through the uint8 code "
        f"and back; correlation with the original over the ROI's {int(has.sum()):,} left "
        f"vertices: {corr:.3f}",
        fontsize=10,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
