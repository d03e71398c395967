"""Cortical-surface data <-> NSD-Flat flat maps, on real fsaverage geometry.

- :mod:`boldgpt.surface.meshes`: nilearn's bundled fsaverage5 meshes and anatomical maps
  (offline), the built-in occipital ROI, reduction of fsaverage6/fsaverage data;
- :mod:`boldgpt.surface.io`: GIfTI, MGH/MGZ and ``.npy`` maps, GIfTI meshes, vertex masks;
- :mod:`boldgpt.surface.geometry`: flat hemispheres + ROI placed on the canvas;
- :mod:`boldgpt.surface.raster`: vertices -> pixels (barycentric) and pixels -> vertices;
- :mod:`boldgpt.surface.flatten`: ``flatten_dataset`` (``boldgpt data flatten``) and
  ``maps_to_surface`` (``boldgpt data to-surface``);
- :mod:`boldgpt.surface.anatomy`: the calcarine check (figures: :mod:`boldgpt.viz.surface`).

Submodules are imported on use, so ``import boldgpt.surface`` stays cheap.
"""
