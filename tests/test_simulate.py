"""The embedded dataset generator as code: format, layout, presets, design, bad input.

The science of the generated data is in test_simulate_science.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from boldgpt.data import schema
from boldgpt.data.masks import named_mask
from boldgpt.data.sources import SIM_PRESETS, parse_source
from boldgpt.errors import ConfigError, DataError
from boldgpt.patching import MaskedPatchify
from boldgpt.sim import (
    PRESETS,
    default_mask,
    geometry,
    load_ground_truth,
    simulate_dataset,
    store,
    trials,
)
from boldgpt.sim.design import generate_design, load_design
from boldgpt.sim.stimuli import render_stimulus
from boldgpt.sim.writer import FEATURES, SplitWriter, encode_png, rows_table, shard_names
from sim_data import ci_dataset

# Public COCO facts: name -> (official id, contiguous 0-79 index, supercategory).
COCO = {
    "person": (1, 0, "person"),
    "stop sign": (13, 11, "outdoor"),
    "zebra": (24, 22, "animal"),
    "pizza": (59, 53, "food"),
    "clock": (85, 74, "indoor"),
}
NSD_SESSIONS = [40, 40, 32, 30, 40, 32, 40, 30]


@pytest.fixture(scope="session")
def ci(tmp_path_factory) -> Path:
    return ci_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def ci_rows(ci) -> pd.DataFrame:
    parts = []
    for split in ("train", "test"):
        for path in sorted(ci.glob(f"data/{split}-*.parquet")):
            t = pq.read_table(path).to_pandas()
            t["split"] = split
            parts.append(t)
    return pd.concat(parts, ignore_index=True)


# --- geometry ----------------------------------------------------------------------


def test_default_mask_has_realistic_size_and_two_hemispheres():
    m = default_mask()
    assert m.dtype == bool and m.shape == (215, 200)
    # The real nsdgeneral mask: 18,577 pixels, 253 touched 10x10 patches (126 interior).
    assert 18_000 <= m.sum() <= 19_000
    p = MaskedPatchify(m, 10)
    assert 235 <= p.num_patches <= 270
    assert 110 <= int(p.interior.sum()) <= 145
    left, right = m[:, :100].sum(), m[:, 100:].sum()
    assert abs(left - right) < 0.05 * m.sum()
    assert not m[:, 99:101].any()  # the hemispheres do not touch
    m[:] = False  # a copy: the cached mask is unaffected
    assert default_mask().sum() > 18_000


def test_atlas_is_retinotopic_and_mirrored():
    # Points along the left calcarine axis, from the fovea outward: eccentricity grows
    # and the left hemisphere sees the right visual field.
    x = np.array([-68.0, -60.0, -45.0, -30.0])
    y = np.full(4, -16.0)
    a = geometry.atlas_at(x, y)
    assert np.all(np.diff(a.ecc) > 0)
    assert np.all(a.rf_x > 0)
    assert [geometry.AREAS[i] for i in a.area] == ["V1"] * 4
    mirrored = geometry.atlas_at(-x, y)
    np.testing.assert_allclose(mirrored.rf_x, -a.rf_x)
    np.testing.assert_allclose(mirrored.rf_y, a.rf_y)
    # Polar angle reverses at the V1/V2 border (vertical meridian) and V2/V3 border
    # (horizontal meridian): dorsal V1 -> lower field, then back up in V2.
    t = np.array([0.0, 1.0, 2.0, 2.75, 3.5, 4.1])
    ang = geometry.early_polar_angle(t)
    np.testing.assert_allclose(ang, [0, -45, -90, -45, 0, -45])
    np.testing.assert_allclose(geometry.early_polar_angle(-t), -ang)


# --- layout and format ---------------------------------------------------------------


def test_ci_layout(ci):
    spec = PRESETS["ci"]
    assert (ci / "data" / "train-00000-of-00001.parquet").exists()
    assert (ci / "data" / "test-00000-of-00001.parquet").exists()
    assert np.array_equal(np.load(ci / "mask.npy"), default_mask())
    card = (ci / "README.md").read_text()
    assert card.startswith("---\n") and "path: data/train-*" in card and "path: data/test-*" in card
    info = json.loads((ci / "simulation.json").read_text())
    assert info["preset"] == "ci" and info["seed"] == 0 and info["subjects"] == [0, 1]
    for name in ("stimuli.npz", "features.npy", "subject00.npz", "subject01.npz"):
        assert (ci / "truth" / name).exists()
    # Nothing half-written is left beside or inside the dataset.
    assert not list(ci.parent.glob(".*.tmp")) and not (ci / ".stimuli.bin").exists()
    n_test = spec.subjects * spec.design.test_sessions * spec.design.trials_per_session
    n_all = spec.subjects * spec.design.sessions[0] * spec.design.trials_per_session
    assert info["splits"] == {"train": n_all - n_test, "test": n_test}


def test_ci_loads_with_datasets_and_matches_nsd_flat_format(ci):
    ds = datasets.load_dataset(str(ci))
    assert set(ds) == {"train", "test"}
    assert ds["train"].features == FEATURES
    row = ds["train"][0]
    act, img = row["activity"], row["image"]
    assert act.mode == "L" and act.size == (200, 215)
    assert img.mode == "RGB" and img.size == (256, 256)
    maps = np.stack([np.asarray(r["activity"]) for r in ds["test"].select(range(20))])
    mask = default_mask()
    assert np.all(maps[:, ~mask] == 127)  # zero before quantization outside the cortex
    z = schema.dequantize(maps[:, mask])
    assert abs(z.mean()) < 0.15 and 0.6 < z.std() < 1.2  # z-scored per session


def test_rows_are_consistent(ci_rows):
    r = ci_rows
    for s, g in r.groupby("subject_id"):
        assert sorted(g["trial_id"]) == list(range(len(g)))  # 0-based, unique
        assert np.array_equal(g["session_id"], g["trial_id"] // 100)
        assert (g["subject"] == schema.subject_name(s)).all()
        assert g.groupby("nsd_id").size().max() <= 3
        last = g["session_id"].max()
        assert set(g.loc[g["split"] == "test", "session_id"]) == {last}
    # Shared images are seen by both subjects; the others by one only.
    seen_by = r.groupby("nsd_id")["subject_id"].nunique()
    shared = r.groupby("nsd_id")["shared1000"].first()
    assert (seen_by[shared] == 2).all() and (seen_by[~shared] == 1).all()
    # repetitions: the 1-based trial ids at which each subject saw the image.
    for _, row in r.sample(50, random_state=0).iterrows():
        reps = row["repetitions"]
        s = row["subject_id"]
        mine = sorted(
            r.loc[(r["subject_id"] == s) & (r["nsd_id"] == row["nsd_id"]), "trial_id"] + 1
        )
        assert [reps[f"subject{s + 1}_rep{k}"] for k in range(len(mine))] == mine
    # Every presentation of an image carries the same picture and annotations.
    for _, g in r.groupby("nsd_id"):
        assert len({row["bytes"] for row in g["image"]}) == 1
        assert len({json.dumps(o, default=list) for o in g["captions"]}) == 1


def test_annotations_are_coco_like(ci_rows):
    rows = ci_rows.drop_duplicates("nsd_id")
    for _, row in rows.iterrows():
        obj = row["objects"]
        n = len(obj["category"])
        assert n >= 1 and all(len(obj[k]) == n for k in obj)
        for (x, y, w, h), area in zip(obj["bbox"], obj["area"]):
            assert min(x, y) >= 0 and x + w <= 256 and y + h <= 256
            assert 0 < area <= w * h
        for name, target, sup in zip(obj["category"], obj["target"], obj["supercategory"]):
            if name in COCO:
                assert (target, sup) == COCO[name][1:]
        assert len(row["captions"]) == 5
        assert all(obj["category"][0].split()[0] in c.lower() for c in row["captions"])
        assert row["coco_split"] in ("train2017", "val2017") and row["coco_id"] > 0


def test_categories_are_visually_distinct():
    """A linear classifier on 8x8 colour thumbnails tells the 24 categories apart far
    above chance (1/24), so image encoders have something to learn."""
    stims = [render_stimulus(i, seed=5, size=64) for i in range(480)]
    x = np.stack([np.asarray(Image.fromarray(s.image).resize((8, 8))) for s in stims])
    x = x.reshape(len(x), -1) / 255.0
    x -= x[:360].mean(0)
    y = np.array([s.label for s in stims])
    onehot = np.eye(80)[y]
    w = np.linalg.solve(x[:360].T @ x[:360] + np.eye(x.shape[1]), x[:360].T @ onehot[:360])
    assert np.mean((x[360:] @ w).argmax(1) == y[360:]) > 0.2


def test_load_ground_truth(ci, ci_rows):
    ids = ci_rows["nsd_id"].unique()[:7]
    t = load_ground_truth(ci, 1, ids)
    assert t.shape == (7, 215, 200) and t.dtype == np.float32
    mask = default_mask()
    assert np.all(t[:, ~mask] == 0) and np.all(np.abs(t[:, mask]).max(1) > 0)
    assert not np.allclose(t, load_ground_truth(ci, 0, ids))  # subjects differ
    with pytest.raises(ValueError, match="not stimuli of this dataset"):
        load_ground_truth(ci, 0, [72_999_999])
    with pytest.raises(ValueError, match="subject 5 is not simulated"):
        load_ground_truth(ci, 5, ids)


# --- design ------------------------------------------------------------------------


def test_generated_full_design_has_nsd_structure():
    d = generate_design(PRESETS["full"].design, range(8), seed=0)
    t = d.trials
    assert len(t) == 213_000 and d.split_sizes() == {"train": 195_000, "test": 18_000}
    assert list(t.groupby("subject_id")["session_id"].max() + 1) == NSD_SESSIONS
    assert t.loc[t["shared1000"], "nsd_id"].nunique() == 1000
    assert t.groupby(["subject_id", "nsd_id"]).size().max() == 3
    own = t.loc[~t["shared1000"]].groupby("nsd_id")["subject_id"].nunique()
    assert (own == 1).all()
    # A subject's schedule does not depend on which other subjects are simulated.
    alone = generate_design(PRESETS["full"].design, [3], seed=0).trials
    np.testing.assert_array_equal(alone["nsd_id"], t.loc[t["subject_id"] == 3, "nsd_id"])


def test_real_schedule_splits(nsd_design_path):
    d = load_design(nsd_design_path)
    t = d.trials
    assert d.split_sizes() == {"train": 195_000, "test": 18_000}
    assert t.loc[t["shared1000"], "nsd_id"].nunique() == 1000
    for s, g in t.groupby("subject_id"):
        assert set(g.loc[g["split"] == "test", "session_id"]) == set(
            range(NSD_SESSIONS[s] - 3, NSD_SESSIONS[s])
        )
    # Subsampled: whole stimuli (all their trials) until about the requested size.
    small = load_design(nsd_design_path, subjects=2, max_trials=1000, seed=0).trials
    assert 1000 <= len(small) < 1000 + 6 and set(small["subject_id"]) == {0, 1}
    full_counts = t[t["subject_id"] < 2].groupby(["subject_id", "nsd_id"]).size()
    small_counts = small.groupby(["subject_id", "nsd_id"]).size()
    assert (full_counts.loc[small_counts.index] == small_counts).all()
    for s, g in small.groupby("subject_id"):
        assert (g.loc[g["split"] == "test", "session_id"] >= NSD_SESSIONS[s] - 3).all()
        assert (g.loc[g["split"] == "train", "session_id"] < NSD_SESSIONS[s] - 3).all()


def test_simulate_with_real_schedule_and_mask(tmp_path, nsd_design_path, nsd_mask):
    root = simulate_dataset(
        tmp_path / "real", "ci", design=nsd_design_path, mask=nsd_mask, subjects=[1],
        progress=False,
    )  # fmt: skip
    rows = pd.concat(
        [
            pq.read_table(p).to_pandas().assign(split=p.name.split("-")[0])
            for p in sorted(root.glob("data/*.parquet"))
        ]  # fmt: skip
    )
    real = pd.read_parquet(nsd_design_path)
    real = real[real["sub"] == "subj02"].set_index("trial_id")
    assert (rows["subject_id"] == 1).all() and len(rows) >= PRESETS["ci"].max_trials
    # Same sessions (0-based) and stimuli as the schedule; test = its last 3 sessions.
    np.testing.assert_array_equal(rows["session_id"], real.loc[rows["trial_id"], "ses"] - 1)
    np.testing.assert_array_equal(rows["nsd_id"], real.loc[rows["trial_id"], "nsd_id"])
    assert ((rows["split"] == "test") == (rows["session_id"] >= 37)).all()
    maps = np.stack([np.asarray(Image.open(io.BytesIO(a["bytes"]))) for a in rows["activity"]])
    assert np.all(maps[:, ~nsd_mask] == 127) and maps[:, nsd_mask].std() > 20


# --- writing: PNG, shards, atomicity, reuse ------------------------------------------


def test_png_roundtrip():
    rng = np.random.default_rng(0)
    for shape in ((215, 200), (37, 53, 3)):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(a)))), a)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4), np.float32))


def _rows(n: int) -> dict:
    png = encode_png(np.full((215, 200), 127, np.uint8))
    empty = {"area": [], "bbox": [], "category": [], "iscrowd": [], "segmentation": [],
             "supercategory": [], "target": []}  # fmt: skip
    zeros, ids = np.zeros(n, np.int64), np.arange(n)
    return {
        "subject_id": zeros, "trial_id": ids, "session_id": zeros, "nsd_id": ids,
        "image": [png] * n, "activity": [png] * n, "subject": ["subj01"] * n,
        "flagged": zeros > 0, "BOLD5000": zeros > 0, "shared1000": zeros > 0,
        "coco_split": ["train2017"] * n, "coco_id": ids + 1, "objects": [empty] * n,
        "captions": [["a"]] * n, "repetitions": np.zeros((n, 24), np.int64),
    }  # fmt: skip


def test_split_writer_streams_shards(tmp_path):
    # The full preset: 195,000 train rows in 4,000-row shards, named like the hub's.
    names = shard_names("train", 195_000, PRESETS["full"].rows_per_shard)
    assert len(names) == 49 and names[-1] == "data/train-00048-of-00049.parquet"
    w = SplitWriter(tmp_path, "train", 25, rows_per_shard=10)
    for _ in range(5):  # rows arrive in blocks that do not align with shards
        w.write(rows_table(_rows(5)))
    w.close()
    files = sorted(tmp_path.glob("data/train-*.parquet"))
    assert [f.name for f in files] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert [pq.read_metadata(f).num_rows for f in files] == [10, 10, 5]
    assert pq.read_table(files[0]).schema.equals(FEATURES.arrow_schema)
    w = SplitWriter(tmp_path / "x", "test", 7, rows_per_shard=10)
    w.write(rows_table(_rows(5)))
    with pytest.raises(RuntimeError, match="wrote 5 rows, expected 7"):
        w.close()


@pytest.fixture(scope="module")
def tiny_design() -> pd.DataFrame:
    """One subject, 5 sessions of 8 trials, 20 images shown twice."""
    rng = np.random.default_rng(0)
    ids = np.repeat(rng.choice(73_000, 20, replace=False), 2)
    return pd.DataFrame(
        {
            "sub": "subj01",
            "ses": np.repeat(np.arange(1, 6), 8),
            "trial_id": np.arange(40),
            "nsd_id": rng.permutation(ids),
        }  # fmt: skip
    )


def test_tiny_dataset_streams_reuses_and_is_atomic(tmp_path, tiny_design, monkeypatch):
    out = tmp_path / "tiny"
    # Small shards and no signal cache: the streaming path of the full preset.
    monkeypatch.setitem(PRESETS, "ci", dataclasses.replace(PRESETS["ci"], rows_per_shard=10))
    monkeypatch.setattr(trials, "SIGNAL_CACHE_BYTES", 0)
    simulate_dataset(out, "ci", design=tiny_design, progress=False)
    assert len(list(out.glob("data/train-*-of-00002.parquet"))) == 2  # 16 train rows
    assert len(list(out.glob("data/test-*-of-00003.parquet"))) == 3  # 24 test rows
    stamp = (out / "simulation.json").stat().st_mtime_ns

    # Same parameters: reused as is. Other parameters: refused without overwrite.
    simulate_dataset(out, "ci", design=tiny_design, progress=False)
    assert (out / "simulation.json").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="snr.*overwrite"):
        simulate_dataset(out, "ci", design=tiny_design, snr=2.0, progress=False)

    # A run that dies half-way leaves the existing dataset untouched and no debris.
    calls = {"n": 0}
    real_render = store.render_stimulus

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(store, "render_stimulus", failing)
    with pytest.raises(KeyboardInterrupt):
        simulate_dataset(out, "ci", design=tiny_design, snr=2.0, overwrite=True, progress=False)
    assert (out / "simulation.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "simulation.json").read_text())["snr"] == 0.5
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["tiny"]
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        simulate_dataset(tmp_path / "new", "ci", design=tiny_design, progress=False)
    assert not (tmp_path / "new").exists()


# --- bad input ---------------------------------------------------------------------


def test_bad_arguments(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(ConfigError, match="unknown simulator preset 'huge'.*ci"):
        simulate_dataset(out, "huge")
    for snr in (0, -1, float("nan"), "loud"):
        with pytest.raises(ConfigError, match="snr must be a positive number"):
            simulate_dataset(out, "ci", snr=snr)
    with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
        simulate_dataset(out, "ci", seed=-1)
    with pytest.raises(ConfigError, match="image_size"):
        simulate_dataset(out, "ci", image_size=8)
    for subjects in ([9], 0, ["a"]):
        with pytest.raises(ConfigError, match="subjects"):
            simulate_dataset(out, "ci", subjects=subjects)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a simulated dataset"):
        simulate_dataset(tmp_path / "mine", "ci", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").exists()
    assert not out.exists()


def test_bad_mask_files(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        simulate_dataset(out, "ci", mask=tmp_path / "missing.npy")
    bad = tmp_path / "bad.npy"
    bad.write_text("not an array")
    with pytest.raises(DataError, match="bad.npy.*not a readable .npy"):
        simulate_dataset(out, "ci", mask=bad)
    np.save(tmp_path / "shape.npy", np.ones((200, 215), bool))
    with pytest.raises(DataError, match=r"shape.npy.*expected shape \(215, 200\)"):
        simulate_dataset(out, "ci", mask=tmp_path / "shape.npy")
    np.save(tmp_path / "float.npy", np.full((215, 200), 0.5))
    with pytest.raises(DataError, match="float.npy.*bool"):
        simulate_dataset(out, "ci", mask=tmp_path / "float.npy")
    np.save(tmp_path / "tiny.npy", np.zeros((215, 200), bool))
    with pytest.raises(DataError, match="only 0 pixels"):
        simulate_dataset(out, "ci", mask=tmp_path / "tiny.npy")


def test_bad_design_tables(tmp_path, tiny_design):
    path = tmp_path / "design.csv"
    tiny_design.drop(columns=["ses"]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"design.csv.*lacks column\(s\) ses"):
        load_design(path)
    bad = tiny_design.copy()
    bad.loc[7, "nsd_id"] = 80_000
    with pytest.raises(DataError, match="row 7, nsd_id = 80000 is out of range"):
        load_design(bad)
    bad = tiny_design.copy()
    bad.loc[3, "sub"] = "subject one"
    with pytest.raises(DataError, match="row 3, column 'sub'.*subj01"):
        load_design(bad)
    bad = tiny_design.copy()
    bad.loc[5, "trial_id"] = 4
    with pytest.raises(DataError, match="row 5 repeats trial_id 4"):
        load_design(bad)
    bad = tiny_design.copy()
    bad["nsd_id"] = 7  # one image 40 times
    with pytest.raises(DataError, match="more than 3 times"):
        load_design(bad)
    bad = tiny_design.copy()
    bad.loc[2, "ses"] = None
    with pytest.raises(DataError, match="row 2, column 'ses': expected an integer"):
        load_design(bad)
    (tmp_path / "design.json").write_text("{}")
    with pytest.raises(DataError, match="expected a .parquet, .csv or .tsv"):
        load_design(tmp_path / "design.json")
    with pytest.raises(FileNotFoundError):
        load_design(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match=r"subjects \[3\] are not in the design"):
        load_design(tiny_design, subjects=[3])


# --- command line ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from boldgpt.cli import simulate as cli

    parser = argparse.ArgumentParser(prog="boldgpt data")
    cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli(ci, tmp_path, capsys):
    parser = _parser()
    help_text = parser._subparsers._group_actions[0].choices["simulate"].format_help()
    for word in ("OUT_DIR", "--preset", "--design", "--mask", "--snr", "--subjects", "full"):
        assert word in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "x", "--subjects", "one"])
    assert parser.parse_args(["simulate", "x", "--subjects", "0,2"]).subjects == [0, 2]
    assert parser.parse_args(["simulate", "x", "--subjects", "subj01,subj03"]).subjects == [0, 2]
    assert parser.parse_args(["simulate", "x", "--num-subjects", "3"]).num_subjects == 3
    with pytest.raises(SystemExit):  # a list of subjects or a count, not both
        parser.parse_args(["simulate", "x", "--subjects", "0", "--num-subjects", "3"])
    # The session's ci dataset has these parameters: reused, summarized, drawn.
    fig = tmp_path / "sim.png"
    args = parser.parse_args(["simulate", str(ci), "--preset", "ci", "--no-progress",
                              "--figure", str(fig)])  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "400 train + 200 test maps" in out and "subjects [0, 1]" in out
    assert Image.open(fig).size[0] > 500


def test_shipped_named_mask_is_the_simulators_default_mask():
    # The data layer ships the mask as a file so that it never imports the simulator; the
    # file must stay the mask the simulator draws every sim:<preset> dataset with.
    shipped = named_mask("sim")
    assert shipped.dtype == np.bool_ and shipped.shape == schema.MAP_SHAPE
    np.testing.assert_array_equal(shipped, default_mask())


def test_data_layer_knows_the_simulators_presets():
    assert set(SIM_PRESETS) == set(PRESETS)
    assert parse_source("sim:ci").preset == "ci"


def test_a_dataset_is_current_only_for_the_preset_that_wrote_it(ci, monkeypatch):
    from boldgpt.sim.presets import is_current

    assert is_current(ci, "ci", seed=0)
    assert not is_current(ci, "ci", seed=1)
    assert not is_current(ci, "demo", seed=0)
    assert not is_current(ci.parent / "missing", "ci", seed=0)
    # The preset's schedule changed since the dataset was written: it must be rewritten.
    spec = PRESETS["ci"]
    changed = dataclasses.replace(spec.design, shared_images=spec.design.shared_images + 1)
    monkeypatch.setitem(PRESETS, "ci", dataclasses.replace(spec, design=changed))
    assert not is_current(ci, "ci", seed=0)
