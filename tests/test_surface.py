"""Surface data -> NSD-Flat and back (boldgpt.surface, `boldgpt data flatten` /
`boldgpt data to-surface`), on the real fsaverage5 geometry that ships with nilearn.

Expected values come from geometry computed here independently (pixel centres of the
NSD-Flat canvas, linear fields, the icosahedron's midpoints), not from the code under
test."""

from __future__ import annotations

import socket
import warnings

import nibabel as nib
import numpy as np
import pytest

from boldgpt.cli import main
from boldgpt.data import schema
from boldgpt.errors import DataError
from boldgpt.surface import meshes
from boldgpt.surface.flatten import flatten_dataset, maps_to_surface
from boldgpt.surface.geometry import SurfaceGeometry, build_geometry
from boldgpt.surface.io import read_maps, write_gifti
from boldgpt.surface.raster import FlatRaster

V5 = meshes.FSAVERAGE5_VERTICES


@pytest.fixture(scope="module")
def geometry() -> SurfaceGeometry:
    return build_geometry()


@pytest.fixture(scope="module")
def sphere() -> list[np.ndarray]:
    return [meshes.load_surface("sphere", h)[0] for h in meshes.HEMIS]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


# --------------------------------------------------------------------------- meshes


def test_fsaverage5_comes_from_nilearns_package_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    from nilearn import datasets

    bunch = datasets.fetch_surf_fsaverage("fsaverage5")
    for hemi in meshes.HEMIS:
        for name in ("flat", "sphere", "pial", "sulc", "curv", "thick"):
            assert str(meshes.fsaverage5_file(name, hemi)) == str(bunch[f"{name}_{hemi}"])
    flat, faces = meshes.load_surface("flat", "left")
    assert flat.shape == (V5, 3) and faces.max() < V5
    assert meshes.load_anatomy("sulc", "right").shape == (V5,)


def test_fsaverage_meshes_are_nested_icosahedra(sphere):
    """Every vertex past each level's count is the normalized midpoint of two earlier
    vertices: data on a denser fsaverage mesh begin with the coarser mesh's vertices."""
    from scipy.spatial import cKDTree

    unit = sphere[0] / np.linalg.norm(sphere[0], axis=1, keepdims=True)
    levels = [12, 42, 162, 642, 2562, 10242]
    for coarse, fine in zip(levels[:-1], levels[1:]):
        _, nearest = cKDTree(unit[:coarse]).query(unit[coarse:fine], k=2)
        mid = unit[nearest[:, 0]] + unit[nearest[:, 1]]
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        assert np.abs(mid - unit[coarse:fine]).max() < 1e-3
    # and a denser mesh's data are reduced by keeping the first 10,242 values
    dense = np.arange(2 * meshes.MESH_VERTICES["fsaverage6"], dtype=np.float32).reshape(2, -1)
    np.testing.assert_array_equal(meshes.reduce_to_mesh(dense, V5, "x"), dense[:, :V5])
    with pytest.raises(DataError, match="x: 10,000 vertices"):
        meshes.reduce_to_mesh(np.zeros((1, 10_000)), V5, "x")


# --------------------------------------------------------------------------- raster


def test_square_covers_exactly_the_pixels_whose_centres_it_contains():
    # left: the square x in [-50, -40] mm, y in [0, 10] mm; right: a far-off triangle
    square = np.array([[-50.0, 0.0], [-40.0, 0.0], [-40.0, 10.0], [-50.0, 10.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    right = np.array([[20.0, -100.0], [30.0, -100.0], [20.0, -90.0]])
    raster = FlatRaster([square, right], [faces, np.array([[0, 1, 2]])])
    # pixel centres x = -100 + j + 0.5, y = 95 - i - 0.5 (row 0 = top)
    expected = np.zeros(schema.MAP_SHAPE, dtype=bool)
    expected[85:95, 50:60] = True
    got = raster.mask.copy()
    got[:, 100:] = False
    np.testing.assert_array_equal(got, expected)
    # linear fields are reproduced exactly by barycentric interpolation
    flat = raster.to_flat(2 * square[:, 0] - 3 * square[:, 1], np.zeros(3))
    rows, cols = np.nonzero(expected)
    x, y = -100 + cols + 0.5, 95 - rows - 0.5
    np.testing.assert_allclose(flat[rows, cols], 2 * x - 3 * y, atol=1e-4)


def test_real_geometry_linear_field_matches_pixel_centres(geometry):
    raster = geometry.raster
    left, right = (2.0 * c[:, 0] + 0.5 * c[:, 1] for c in geometry.coords)
    flat = raster.to_flat(left, right, fill=np.nan)
    rows, cols = np.nonzero(raster.mask)
    x, y = -100 + cols + 0.5, 95 - rows - 0.5
    np.testing.assert_allclose(flat[rows, cols], 2.0 * x + 0.5 * y, atol=1e-3)
    assert np.isnan(flat[~raster.mask]).all()
    # the hemispheres sit on their own halves of the canvas
    hemi = np.zeros(schema.MAP_SHAPE, dtype=int) - 1
    hemi.flat[raster.pixels] = raster.pixel_hemi
    assert (hemi[:, :100] != 1).all() and (hemi[:, 100:] != 0).all()
    assert 15_000 < raster.mask.sum() < 30_000


@pytest.mark.parametrize("wavelength_mm", [200.0, 60.0])
def test_round_trip_smooth_fields_and_constants(geometry, sphere, wavelength_mm):
    raster = geometry.raster
    k = 2 * np.pi / wavelength_mm
    fields = [np.sin(k * s[:, 0]) + np.cos(k * s[:, 1]) * np.sin(k * s[:, 2]) for s in sphere]
    back = raster.to_vertices(raster.to_flat(*fields))
    for h in range(2):
        inside = raster.has_value[h]
        assert inside.sum() > 1500 and np.isnan(back[h][~inside]).all()
        assert _corr(fields[h][inside], back[h][inside]) >= 0.95
    constant = raster.to_vertices(raster.to_flat(np.full(V5, 1.7), np.full(V5, 1.7)))
    for h in range(2):
        np.testing.assert_array_equal(constant[h][raster.has_value[h]], np.float32(1.7))


# --------------------------------------------------------------------------- io


def test_gifti_mgh_and_npy_read_the_same_maps(tmp_path):
    values = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32)
    write_gifti(tmp_path / "a_hemi-L.func.gii", values, "left")
    nib.save(nib.MGHImage(values.T.reshape(50, 1, 1, 3), np.eye(4)), tmp_path / "a.mgz")
    np.save(tmp_path / "a.npy", values)
    for name in ("a_hemi-L.func.gii", "a.mgz", "a.npy"):
        np.testing.assert_array_equal(read_maps(tmp_path / name), values)
    with pytest.raises(DataError, match=r"a\.txt: unknown surface data format"):
        (tmp_path / "a.txt").write_text("1 2 3")
        read_maps(tmp_path / "a.txt")


# --------------------------------------------------------------------------- flatten


AMPLITUDES = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])


def _anatomy_sessions(tmp_path, rng):
    """GIfTI files of the real sulcal depth (session 1) and curvature (session 2) maps
    scaled by AMPLITUDES, plus noise; session 2 has an offset of +5, which per-session
    z-scoring must remove."""
    entries = []
    for ses, kind in ((1, "sulc"), (2, "curv")):
        for hemi in meshes.HEMIS:
            base = meshes.load_anatomy(kind, hemi)
            base = base / base.std()
            maps = AMPLITUDES[:, None] * base + 0.3 * rng.normal(size=(6, V5))
            maps += 5.0 if ses == 2 else 0.0
            write_gifti(tmp_path / f"sub-01_ses-{ses}_hemi-{hemi[0].upper()}.func.gii", maps, hemi)
        entries.append(
            {
                "left": tmp_path / f"sub-01_ses-{ses}_hemi-L.func.gii",
                "right": tmp_path / f"sub-01_ses-{ses}_hemi-R.func.gii",
                "subject": "subj01",
                "session": ses,
                "stimulus": list(range(6)),
                "shared": ses == 2,
            }
        )
    return entries


def test_flattened_dataset_loads_caches_and_trains(tmp_path, monkeypatch):
    from boldgpt.data.cache import build_cache
    from boldgpt.data.nsd_flat import decode_activity, load_mask, load_nsd_flat
    from boldgpt.engine.config import config_from_dict
    from boldgpt.engine.train import train

    monkeypatch.setenv("BOLDGPT_HOME", str(tmp_path / "home"))
    entries = _anatomy_sessions(tmp_path, np.random.default_rng(0))
    out = tmp_path / "flat"
    summary = flatten_dataset(out, entries)
    assert summary["maps"] == {"train": 12, "test": 0}
    mask = load_mask(str(out))
    assert mask.sum() == summary["mask_pixels"]

    train_ds = load_nsd_flat(str(out), "train", progress=False)
    val_ds = load_nsd_flat(str(out), "val", progress=False)
    assert len(train_ds) == 6 and len(val_ds) == 6  # session 2 is marked shared
    assert set(val_ds["session_id"]) == {2} and set(val_ds["nsd_id"]) == set(range(6))
    for ds in (train_ds, val_ds):
        codes = np.stack([decode_activity(a) for a in ds["activity"]])
        assert (codes[:, ~mask] == 127).all()
        z = schema.dequantize(codes)[:, mask]
        # z-scored per session: every pixel averages ~0 over its session (the +5 offset
        # of session 2 is gone) and the maps are not constant
        assert np.abs(z.mean(axis=0)).max() < 0.1
        assert z.std() > 0.5
        # maps of opposite amplitude are anti-correlated, of similar amplitude correlated
        assert _corr(z[0], z[5]) < -0.5 and _corr(z[4], z[5]) > 0.5

    cache = build_cache(str(out), cache_root=tmp_path / "cache", progress=False)
    assert cache.exists()
    config = config_from_dict(
        {
            "out_dir": str(tmp_path / "run"),
            "data": {"source": str(out), "batch_size": 4, "cache_root": str(tmp_path / "cache")},
            "model": {
                "name": "boldgpt_micro_patch10",
                "kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2},
            },
            "optim": {"warmup_steps": 1},
            "train": {"max_steps": 3, "device": "cpu", "eval_every": 3, "eval_batches": 1},
            "log": {"tensorboard": False, "figures_every": 0, "progress": False},
            "checkpoint": {"every": 3},
        }
    )
    result = train(config)
    assert result.status == "finished" and result.step == 3
    assert np.isfinite(result.last_train_loss) and np.isfinite(result.last_val_loss)


def test_cli_flatten_then_to_surface_recovers_the_vertex_maps(tmp_path, sphere):
    """A smooth field per vertex goes through the uint8 dataset and back to GIfTI."""
    from boldgpt.data.nsd_flat import decode_activity, load_nsd_flat

    rng = np.random.default_rng(1)
    fields = []
    for h, hemi in enumerate(meshes.HEMIS):
        s = sphere[h] / 40.0
        amp = rng.normal(size=(4, 1))
        f = amp * np.sin(s[:, 0]) + (1 - amp) * np.cos(s[:, 1] + s[:, 2])
        fields.append(f)
        np.save(tmp_path / f"{hemi}.npy", f.astype(np.float32))
    out = tmp_path / "ds"
    assert (
        main(
            [
                "data",
                "flatten",
                str(out),
                "--left",
                str(tmp_path / "left.npy"),
                "--right",
                str(tmp_path / "right.npy"),
                "--no-zscore",
            ]
        )
        == 0
    )
    ds = load_nsd_flat(str(out), "train", progress=False)
    codes = np.stack([decode_activity(a) for a in ds["activity"]])
    np.save(tmp_path / "maps.npy", codes)  # uint8 maps are decoded by to-surface
    prefix = tmp_path / "back" / "maps"
    assert (
        main(
            ["data", "to-surface", str(tmp_path / "maps.npy"), str(prefix), "--geometry", str(out)]
        )
        == 0
    )
    geometry = SurfaceGeometry.load(out)
    for h, tag in enumerate("LR"):
        img = nib.load(prefix.with_name(f"maps_hemi-{tag}.func.gii"))
        assert img.meta["AnatomicalStructurePrimary"] == ("CortexLeft", "CortexRight")[h]
        back = np.stack([d.data for d in img.darrays])
        inside = geometry.raster.has_value[h]
        assert back.shape == (4, V5) and np.isnan(back[:, ~inside]).all()
        clipped = np.clip(fields[h], -2.5, 2.5)
        for i in range(4):
            assert _corr(clipped[i, inside], back[i, inside]) >= 0.95


# --------------------------------------------------------------------------- bad input


def _pair(tmp_path, left: np.ndarray, right: np.ndarray, name: str = "x") -> dict:
    np.save(tmp_path / f"{name}_lh.npy", left)
    np.save(tmp_path / f"{name}_rh.npy", right)
    return {
        "left": tmp_path / f"{name}_lh.npy",
        "right": tmp_path / f"{name}_rh.npy",
        "subject": 0,
        "session": 0,
    }


def test_wrong_vertex_count_names_the_file(tmp_path):
    entry = _pair(tmp_path, np.zeros((2, 9000)), np.zeros((2, V5)))
    with pytest.raises(DataError, match=r"x_lh\.npy: 9,000 vertices; the mesh in use has 10,242"):
        flatten_dataset(tmp_path / "out", [entry])


def test_denser_mesh_data_are_reduced(tmp_path):
    rng = np.random.default_rng(2)
    small = rng.normal(size=(3, V5))
    dense = np.concatenate([small, rng.normal(size=(3, 40962 - V5))], axis=1)
    a = flatten_dataset(tmp_path / "a", [_pair(tmp_path, small, small, "a")])
    b = flatten_dataset(tmp_path / "b", [_pair(tmp_path, dense, small, "b")])
    assert a["mask_pixels"] == b["mask_pixels"]
    pa = sorted((tmp_path / "a" / "data").glob("*.parquet"))[0].read_bytes()
    pb = sorted((tmp_path / "b" / "data").glob("*.parquet"))[0].read_bytes()
    assert pa == pb


def test_hemisphere_mismatch_names_the_file(tmp_path):
    values = np.zeros((2, V5), dtype=np.float32)
    write_gifti(tmp_path / "maps_left.func.gii", values, "right")  # metadata says right
    np.save(tmp_path / "rh.npy", values)
    entry = {
        "left": tmp_path / "maps_left.func.gii",
        "right": tmp_path / "rh.npy",
        "subject": 0,
        "session": 0,
    }
    with pytest.raises(DataError, match=r"maps_left\.func\.gii: given as the left hemisphere"):
        flatten_dataset(tmp_path / "out", [entry])
    np.save(tmp_path / "sub_hemi-R_bold.npy", values)
    entry = {
        "left": tmp_path / "sub_hemi-R_bold.npy",
        "right": tmp_path / "rh.npy",
        "subject": 0,
        "session": 0,
    }
    with pytest.raises(DataError, match=r"sub_hemi-R_bold\.npy: given as the left"):
        flatten_dataset(tmp_path / "out", [entry])
    entry = _pair(tmp_path, np.zeros((3, V5)), np.zeros((2, V5)))
    with pytest.raises(DataError, match=r"x_lh\.npy has 3 map\(s\) but .*x_rh\.npy has 2"):
        flatten_dataset(tmp_path / "out", [entry])


def test_nan_vertices_are_masked_with_a_warning_or_an_error(tmp_path, geometry):
    rng = np.random.default_rng(3)
    left, right = rng.normal(size=(3, V5)), rng.normal(size=(3, V5))
    # a NaN at one ROI vertex in the middle of the left patch
    roi_vertices = np.unique(geometry.faces[0])
    centre = geometry.coords[0][roi_vertices].mean(axis=0)
    bad = roi_vertices[np.argmin(np.linalg.norm(geometry.coords[0][roi_vertices] - centre, axis=1))]
    left[1, bad] = np.nan
    entry = _pair(tmp_path, left, right)
    with pytest.raises(DataError, match=r"x_lh\.npy: map 1 has 1 non-finite"):
        flatten_dataset(tmp_path / "err", [entry], nan="error")
    with pytest.warns(UserWarning, match=r"x_lh\.npy: 1"):
        summary = flatten_dataset(tmp_path / "ok", [entry])
    mask = np.load(tmp_path / "ok" / "mask.npy")
    assert summary["mask_pixels"] < geometry.mask.sum()
    assert not (mask & ~geometry.mask).any()
    # the pixels lost are those of the triangles around the NaN vertex
    x, y = geometry.coords[0][bad]
    row, col = int(95 - y), int(x + 100)
    assert geometry.mask[row, col] and not mask[row, col]


def test_unknown_format_and_missing_files_name_the_file(tmp_path):
    (tmp_path / "maps.csv").write_text("1,2,3\n")
    np.save(tmp_path / "rh.npy", np.zeros(V5))
    entry = {
        "left": tmp_path / "maps.csv",
        "right": tmp_path / "rh.npy",
        "subject": 0,
        "session": 0,
    }
    with pytest.raises(DataError, match=r"maps\.csv: unknown surface data format"):
        flatten_dataset(tmp_path / "out", [entry])
    entry["left"] = tmp_path / "nope.func.gii"
    with pytest.raises(DataError, match=r"nope\.func\.gii does not exist"):
        flatten_dataset(tmp_path / "out", [entry])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = main(
            [
                "data",
                "flatten",
                str(tmp_path / "o"),
                "--left",
                str(tmp_path / "maps.csv"),
                "--right",
                str(tmp_path / "rh.npy"),
            ]
        )
    assert code == 2


def test_to_surface_rejects_maps_of_the_wrong_shape(geometry):
    with pytest.raises(DataError, match=r"maps of shape \(2, 200, 215\)"):
        maps_to_surface(np.zeros((2, 200, 215), np.float32), geometry)


def test_calcarine_sits_where_anatomy_puts_it(geometry):
    from boldgpt.surface.anatomy import calcarine_check

    check = calcarine_check(geometry)
    for hemi, sign in (("left", -1), ("right", 1)):
        c = check[hemi]
        x, y, z = c["cut_pial_centroid_mm"]
        # the flattening's occipital cut runs along the medial occipital surface at the
        # height of the calcarine sulcus ...
        assert 5 < sign * x < 20 and -95 < y < -70 and -5 < z < 15
        # ... through deep cortex ...
        assert c["cut_sulc_percentile"] > 70
        # ... between the cuneus (above) and the lingual gyrus (below) on the canvas,
        assert c["cuneus_canvas_y_mm"] > c["cut_canvas_mm"][1] > c["lingual_canvas_y_mm"]
        # near the midline, on the hemisphere's own side
        assert 0 < sign * c["cut_canvas_mm"][0] < 30


def test_manifest_with_images_splits_and_a_user_flat_surface(tmp_path, geometry):
    from PIL import Image

    from boldgpt.data.nsd_flat import decode_image, load_nsd_flat
    from boldgpt.surface.flatten import read_manifest

    rng = np.random.default_rng(4)
    lines = ["left,right,subject,session,map,stimulus,image,shared,split"]
    colours = {}
    for ses in (1, 2):
        np.save(tmp_path / f"s{ses}_lh.npy", rng.normal(size=(2, V5)))
        np.save(tmp_path / f"s{ses}_rh.npy", rng.normal(size=(2, V5)))
        for m in range(2):
            stim = 10 * ses + m
            colours[stim] = rng.integers(0, 256, 3, dtype=np.uint8)
            Image.fromarray(np.full((8, 8, 3), colours[stim])).save(tmp_path / f"im{stim}.png")
            split = "test" if ses == 2 else ""
            lines.append(
                f"s{ses}_lh.npy,s{ses}_rh.npy,subj03,{ses},{m},{stim},im{stim}.png,,{split}"
            )
    (tmp_path / "maps.csv").write_text("\n".join(lines) + "\n")
    entries = read_manifest(tmp_path / "maps.csv")
    # nilearn's flat mesh given as the user's own files gives the default geometry
    flats = []
    for hemi in meshes.HEMIS:
        path = tmp_path / f"flat_{hemi}.surf.gii"
        path.write_bytes(nib.load(meshes.fsaverage5_file("flat", hemi)).to_bytes())
        flats.append(path)
    summary = flatten_dataset(tmp_path / "ds", entries, flat=flats, zscore=True)
    assert summary["maps"] == {"train": 2, "test": 2}
    np.testing.assert_array_equal(np.load(tmp_path / "ds" / "mask.npy"), geometry.mask)
    for split, ses in (("train", 1), ("test", 2)):
        ds = load_nsd_flat(str(tmp_path / "ds"), split, progress=False)
        assert list(ds["nsd_id"]) == [10 * ses, 10 * ses + 1]
        assert set(ds["subject_id"]) == {2} and set(ds["session_id"]) == {ses}
        for stim, img in zip(ds["nsd_id"], ds["image"]):
            pixels = decode_image(img)
            assert pixels.shape == (8, 8, 3) and (pixels == colours[stim]).all()


def test_pycortex_placement_puts_the_hemispheres_edge_to_edge_at_zero():
    from boldgpt.surface.geometry import place_hemispheres

    left = np.array([[-80.0, 5.0], [-30.0, 5.0], [-30.0, 40.0]])
    right = np.array([[40.0, 0.0], [90.0, 0.0], [40.0, 30.0]])
    tri = np.array([[0, 1, 2]])
    placed, info = place_hemispheres([left, right], [tri, tri], "pycortex")
    np.testing.assert_array_equal(placed[0], left + [30.0, 0.0])
    np.testing.assert_array_equal(placed[1], right - [40.0, 0.0])
    placed, info = place_hemispheres([left * 3, right * 3], [tri, tri], "fit")
    # 150 mm wide patches are shrunk to 100 - 1 (half gap) - 1 (margin) = 98 mm
    assert info["scale"] == pytest.approx(98 / 150)
    assert placed[0][:, 0].max() == pytest.approx(-1.0) and placed[1][:, 0].min() == pytest.approx(
        1.0
    )


def test_test_sessions_take_each_subjects_last_sessions(tmp_path):
    rng = np.random.default_rng(5)
    sessions = {0: (1, 2, 3), 1: (7, 9)}
    entries = [
        {"left": rng.normal(size=(2, V5)), "right": rng.normal(size=(2, V5))}
        | {"subject": sub, "session": ses}
        for sub, subject_sessions in sessions.items()
        for ses in subject_sessions
    ]
    summary = flatten_dataset(tmp_path / "a", entries, test_sessions=1)
    assert summary["maps"] == {"train": 6, "test": 4}  # sessions 3 and 9
    summary = flatten_dataset(tmp_path / "b", entries, test_sessions=5)
    assert summary["maps"] == {"train": 0, "test": 10}
    one = [{**entries[0], "left": entries[0]["left"][:1], "right": entries[0]["right"][:1]}]
    with pytest.raises(DataError, match="entry 0: subject 0 session 1 has one map"):
        flatten_dataset(tmp_path / "c", one)


def test_bad_manifests_name_the_manifest_line(tmp_path):
    from boldgpt.surface.flatten import read_manifest

    np.save(tmp_path / "lh.npy", np.zeros((2, V5)))
    np.save(tmp_path / "rh.npy", np.zeros((2, V5)))
    (tmp_path / "a.csv").write_text("left,right,subject,sesion\nlh.npy,rh.npy,0,1\n")
    with pytest.raises(DataError, match=r"a\.csv: manifest columns .*unknown \['sesion'\]"):
        read_manifest(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text(
        "left,right,subject,session,map,image\nlh.npy,rh.npy,0,1,0,x.png\n"
    )
    with pytest.raises(DataError, match=r"b\.csv line 2: stimulus image .*x\.png does not exist"):
        flatten_dataset(tmp_path / "out", read_manifest(tmp_path / "b.csv"))
    (tmp_path / "c.csv").write_text("left,right,subject,session,map\nlh.npy,rh.npy,0,1,2\n")
    with pytest.raises(DataError, match=r"c\.csv line 2: map=2 but the files hold 2 map"):
        flatten_dataset(tmp_path / "out", read_manifest(tmp_path / "c.csv"))
