"""The NSD-Flat loader: sources, schema validation, splits, subjects, mask, bad input."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from boldgpt.cli import main
from boldgpt.data import nsd_flat, schema
from boldgpt.data.masks import check_mask
from boldgpt.data.sources import SourceSpec, parse_source
from boldgpt.errors import ConfigError, DataError
from boldgpt.sim.writer import FEATURES
from nsd_tiny import build_tiny_nsd, make_rows, png, tiny_mask, write_hub_layout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_nsd(tmp_path_factory.mktemp("nsd") / "tiny", train_shards=2)


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("hf")


def _expected(tiny, split):
    hub = "test" if split == "test" else "train"
    shared = tiny.column(hub, "shared1000")
    keep = {"train": ~shared, "val": shared, "test": np.ones_like(shared)}[split]
    return hub, np.flatnonzero(keep)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_round_trip_through_the_loader(tiny, hf_cache, split):
    ds = nsd_flat.load_nsd_flat(tiny.root, split, cache_dir=hf_cache, progress=False)
    hub, rows = _expected(tiny, split)
    assert len(ds) == len(rows) > 0
    assert ds.features == FEATURES  # exactly the NSD-Flat columns and types
    for name in ("subject_id", "trial_id", "session_id", "nsd_id", "shared1000"):
        assert ds[name] == tiny.column(hub, name)[rows].tolist()
    for j in (0, len(ds) - 1):
        row = ds[j]
        assert np.array_equal(np.asarray(row["activity"]), tiny.maps[hub][rows[j]])
        assert np.array_equal(np.asarray(row["image"]), tiny.images[row["nsd_id"]])
        written = tiny.rows[hub][rows[j]]
        for name in ("objects", "captions", "repetitions", "subject", "coco_id", "BOLD5000"):
            assert row[name] == written[name]


def test_splits_partition_the_hub_train_split(tiny):
    train = nsd_flat.index_split(tiny.root, "train")
    val = nsd_flat.index_split(tiny.root, "val")
    assert not train.meta["shared1000"].any() and val.meta["shared1000"].all()
    assert sorted(train.rows.tolist() + val.rows.tolist()) == list(range(len(tiny.rows["train"])))


def test_locate_names_the_shard_and_row(tiny):
    index = nsd_flat.index_split(tiny.root, "train")
    files = sorted((tiny.root / "data").glob("train-*.parquet"))
    n0 = pq.ParquetFile(files[0]).metadata.num_rows
    last = len(index) - 1
    path, row = index.locate(last)
    assert path == files[1] and row == index.rows[last] - n0
    got = nsd_flat.read_rows(path, [row], ["trial_id", "subject_id"])
    written = tiny.rows["train"][index.rows[last]]
    assert (got["trial_id"][0], got["subject_id"][0]) == (
        written["trial_id"],
        written["subject_id"],
    )


def test_subject_selection(tiny, hf_cache):
    ds = nsd_flat.load_nsd_flat(
        tiny.root, "test", ["subj02", 2], cache_dir=hf_cache, progress=False
    )
    sids = tiny.column("test", "subject_id")
    assert sorted(set(ds["subject_id"])) == [1, 2]
    assert len(ds) == int(np.isin(sids, [1, 2]).sum())
    with pytest.raises(
        DataError, match=r"subject_id \[7\].*available subject_id values: \[0, 1, 2\]"
    ):
        nsd_flat.index_split(tiny.root, "train", [7])


def test_normalize_subjects():
    assert nsd_flat.normalize_subjects(["subj01", "3", 2, 2]) == [0, 2, 3]
    assert nsd_flat.normalize_subjects(None) is None
    for bad in (["subject1"], [-1], [True], ["subj00"]):
        with pytest.raises(ValueError, match="bad subject"):
            nsd_flat.normalize_subjects(bad)


def test_mask_estimated_shipped_and_from_file(tiny, tmp_path):
    assert np.array_equal(nsd_flat.load_mask(tiny.root), tiny.mask)
    shipped = build_tiny_nsd(tmp_path / "shipped", with_mask=True, subjects=(0,), sessions=2)
    # A shipped mask wins over estimation: here it is a superset that estimation cannot find.
    wider = shipped.mask.copy()
    wider[:5] = True
    np.save(shipped.root / "mask.npy", wider)
    assert np.array_equal(nsd_flat.load_mask(shipped.root), wider)
    np.save(tmp_path / "m.npy", tiny.mask.astype(np.uint8))
    assert np.array_equal(nsd_flat.load_mask(mask_file=tmp_path / "m.npy"), tiny.mask)
    Image.fromarray(tiny.mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    assert np.array_equal(nsd_flat.load_mask(tiny.root, tmp_path / "m.png"), tiny.mask)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.ones((200, 215), bool), r"shape \(200, 215\); expected \(215, 200\)"),
        (np.full((215, 200), 0.5, np.float32), "dtype float32; expected bool"),
        (np.zeros((215, 200), bool), "empty"),
    ],
)
def test_bad_mask_file(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message) as err:
        nsd_flat.load_mask(mask_file=tmp_path / "bad.npy")
    assert "bad.npy" in str(err.value)


def test_real_mask_file_passes_validation(nsd_mask):
    np.testing.assert_array_equal(check_mask(nsd_mask), nsd_mask)
    assert check_mask(nsd_mask).sum() == 18_577


def test_decode_activity_checks_every_map():
    good = np.random.default_rng(0).integers(0, 256, schema.MAP_SHAPE, dtype=np.uint8)
    assert np.array_equal(nsd_flat.decode_activity(png(good, "L")), good)
    with pytest.raises(DataError, match=r"f.parquet row 3: .*200x200 .*expected 215x200"):
        nsd_flat.decode_activity(png(good[:200], "L"), "f.parquet row 3")
    with pytest.raises(DataError, match="mode 'RGB'; expected 'L'"):
        nsd_flat.decode_activity(png(np.stack([good] * 3, -1), "RGB"))
    buf = io.BytesIO()
    Image.fromarray(good).save(buf, format="JPEG")
    with pytest.raises(DataError, match="JPEG image; expected a lossless PNG"):
        nsd_flat.decode_activity(buf.getvalue())
    with pytest.raises(DataError, match="row 9: cannot decode"):
        nsd_flat.decode_activity(png(good, "L")[:200], "row 9")


def _write_variant(tmp_path, mutate=None, drop_columns=()):
    rows, _, _ = make_rows(subjects=(0, 1), sessions=2, trials_per_session=6, n_shared=2)
    if mutate:
        mutate(rows)
    return write_hub_layout(tmp_path / "bad", rows, train_shards=2, drop_columns=drop_columns)


def test_corrupt_png_names_file_and_row(tmp_path):
    def corrupt(rows):
        rows["train"][0]["activity"] = {"bytes": b"\x89PNG\r\n\x1a\n garbage", "path": None}

    root = _write_variant(tmp_path, corrupt)
    with pytest.raises(DataError, match=r"train-00000-of-00002\.parquet row 0 column 'activity'"):
        nsd_flat.load_nsd_flat(root, "train", cache_dir=tmp_path / "hf", progress=False)


def test_wrong_map_size_names_file_and_row(tmp_path):
    def shrink(rows):
        rows["train"][-1]["activity"] = {"bytes": png(np.zeros((100, 200), np.uint8), "L")}

    root = _write_variant(tmp_path, shrink)
    index = nsd_flat.index_split(root, "train")
    last = len(index) - 1
    path, row = index.locate(last)
    with pytest.raises(DataError, match=rf"{path.name} row {row} .*100x200.*expected 215x200"):
        nsd_flat.read_maps(index, [0, last])


@pytest.mark.parametrize("column", ["activity", "shared1000", "nsd_id"])
def test_missing_column(tmp_path, column):
    root = _write_variant(tmp_path, drop_columns=[column])
    with pytest.raises(
        DataError, match=rf"train-00000-of-00002\.parquet: missing column '{column}'"
    ):
        nsd_flat.load_nsd_flat(root, "train", progress=False)


def test_null_value_and_wrong_column_type(tmp_path):
    def null(rows):
        rows["train"][3]["shared1000"] = None

    root = _write_variant(tmp_path, null)
    with pytest.raises(
        DataError, match=r"train-00000-of-00002\.parquet row 3: column 'shared1000'"
    ):
        nsd_flat.index_split(root, "train")
    shard = root / "data" / "test-00000-of-00001.parquet"
    table = pq.read_table(shard)
    i = table.schema.get_field_index("shared1000")
    pq.write_table(table.set_column(i, "shared1000", table["shared1000"].cast(pa.int64())), shard)
    with pytest.raises(
        DataError,
        match=r"test-00000-of-00001\.parquet: column 'shared1000' has type int64; expected bool",
    ):
        nsd_flat.index_split(root, "test")


def test_corrupt_parquet_and_missing_paths(tmp_path):
    root = _write_variant(tmp_path)
    (root / "data" / "test-00000-of-00001.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match=r"test-00000-of-00001\.parquet: not a readable parquet"):
        nsd_flat.index_split(root, "test")
    with pytest.raises(DataError, match="does not exist"):
        nsd_flat.resolve_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no parquet shards: expected the hub layout data/train-"):
        nsd_flat.resolve_source(tmp_path / "empty")
    with pytest.raises(DataError, match="mask file .* does not exist"):
        nsd_flat.load_mask(mask_file=tmp_path / "nomask.npy")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        nsd_flat.index_split(root, "validation")


def test_hub_id_offline_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DataError, match="'clane9/NSD-Flat' .*offline mode is on"):
        nsd_flat.load_nsd_flat("clane9/NSD-Flat", "train")
    assert time.perf_counter() - start < 5


def test_unreachable_hub_fails_fast(monkeypatch):
    # Offline flags off, but the endpoint refuses connections: the probe must catch it.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(DataError, match="did not accept a connection"):
        nsd_flat.resolve_source("someone/some-dataset")
    assert time.perf_counter() - start < 5


def test_sim_source_generates_once_into_boldgpt_home(tmp_path, monkeypatch, capsys):
    from boldgpt.sim import presets  # imported before the package is replaced below

    calls = []

    def fake_simulate(out_dir, preset="demo", *, seed=0, overwrite=False, progress=True, **kw):
        calls.append((Path(out_dir), preset, seed))
        if overwrite:
            shutil.rmtree(out_dir)
        build_tiny_nsd(Path(out_dir), subjects=(0,), sessions=2, with_mask=True)
        design = presets.generated_design_id(presets.PRESETS[preset].design)
        identity = {"version": presets.VERSION, "preset": preset, "seed": seed, "design": design}
        (Path(out_dir) / "simulation.json").write_text(json.dumps({"identity": identity}))
        return Path(out_dir)

    fake = types.ModuleType("boldgpt.sim")
    fake.simulate_dataset = fake_simulate
    monkeypatch.setitem(sys.modules, "boldgpt.sim", fake)
    monkeypatch.setenv("BOLDGPT_HOME", str(tmp_path / "home"))
    src = nsd_flat.resolve_source("sim:ci", progress=False)
    assert src.kind == "sim" and src.root == tmp_path / "home" / "sim" / "ci-seed0"
    assert src.name == "sim-ci-seed0"
    nsd_flat.resolve_source("sim:ci", progress=False)
    assert calls == [(src.root, "ci", 0)]  # reused, not regenerated
    assert nsd_flat.resolve_source("sim:ci:3", progress=False).root.name == "ci-seed3"
    assert np.array_equal(nsd_flat.load_mask("sim:ci"), tiny_mask())
    with pytest.raises(ConfigError, match="sim:<preset>"):
        nsd_flat.resolve_source("sim:ci:x")
    # A dataset written by an older preset (another schedule) is simulated again, once.
    ci = presets.PRESETS["ci"]
    monkeypatch.setitem(
        presets.PRESETS, "ci", replace(ci, design=replace(ci.design, shared_images=40))
    )
    calls.clear()
    nsd_flat.resolve_source("sim:ci", progress=True)
    assert calls == [(src.root, "ci", 0)]
    assert "holds an older version of the 'ci' preset" in capsys.readouterr().err
    nsd_flat.resolve_source("sim:ci", progress=False)
    assert len(calls) == 1


@pytest.mark.slow
def test_real_simulator_output_loads_through_the_same_loader(tmp_path, monkeypatch):
    sim = pytest.importorskip("boldgpt.sim")
    if not hasattr(sim, "simulate_dataset"):
        pytest.skip("simulator not available yet")
    from boldgpt.data.cache import CachedNSDFlat, build_cache

    monkeypatch.setenv("BOLDGPT_HOME", str(tmp_path))
    # The ci preset, made smaller (1 subject, 64 px stimuli) to keep the test fast, where
    # `sim:ci` looks for it; the loader must then reuse it rather than simulate again.
    root = tmp_path / "sim" / "ci-seed0"
    sim.simulate_dataset(root, "ci", subjects=1, image_size=64, progress=False)
    stamp = (root / "simulation.json").stat().st_mtime_ns
    ds = nsd_flat.load_nsd_flat("sim:ci", "val", cache_dir=tmp_path / "hf", progress=False)
    assert (root / "simulation.json").stat().st_mtime_ns == stamp
    assert len(ds) > 0 and all(ds["shared1000"]) and set(ds["subject_id"]) == {0}
    assert set(FEATURES) <= set(ds.features)
    assert np.asarray(ds[0]["activity"]).shape == schema.MAP_SHAPE
    out = build_cache("sim:ci", splits=["val"], image_size=32, progress=False)
    cached = CachedNSDFlat(out, "val")
    np.testing.assert_array_equal(cached.mask, np.load(root / "mask.npy"))
    np.testing.assert_array_equal(cached.activity[0], np.asarray(ds[0]["activity"]))
    assert cached.nsd_ids.tolist() == ds["nsd_id"]


def test_cli_inspect(tiny, tmp_path, capsys):
    out = tmp_path / "ex.png"
    assert (
        main(["data", "inspect", "--source", str(tiny.root), "--out", str(out), "--no-progress"])
        == 0
    )
    text = capsys.readouterr().out
    n_val = int(tiny.column("train", "shared1000").sum())
    n_train = len(tiny.rows["train"]) - n_val
    assert f"{'all':<8}{n_train:>10,}{n_val:>10,}{len(tiny.rows['test']):>10,}" in text
    assert f"mask: {int(tiny.mask.sum()):,} of 43,000 pixels" in text
    assert "subjects: 3 (subj01, subj02, subj03)" in text
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 500
    assert main(["data", "inspect", "--source", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_inspect_counts_patches_of_the_real_mask(tiny, nsd_mask, tmp_path):
    from boldgpt.data.inspect import inspect_source
    from boldgpt.patching import num_patches

    np.save(tmp_path / "nsd_mask.npy", nsd_mask)
    info = inspect_source(str(tiny.root), mask_file=tmp_path / "nsd_mask.npy", progress=False)
    assert int(info.mask.sum()) == 18_577  # SPEC section 2
    assert num_patches(info.mask, 10) == (253, 126)
    assert num_patches(info.mask, 16)[0] == 114


def test_reading_data_and_building_models_import_no_heavy_or_simulator_modules():
    # In a fresh interpreter: the data layer (loader, schema, sources, cache, transforms,
    # masks) and the models must not pull in `datasets` (~1 s), scipy, scikit-image or
    # the simulator; every training process and loader worker pays for what they import.
    code = (
        "import sys\n"
        "import boldgpt.data, boldgpt.models\n"
        "import boldgpt.data.nsd_flat, boldgpt.data.sources, boldgpt.data.schema\n"
        "import boldgpt.data.cache, boldgpt.data.transforms, boldgpt.data.masks\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "boldgpt.data.cache" in out and "torch" in out  # the imports did run
    heavy = [m for m in out if m.split(".")[0] in ("datasets", "scipy", "skimage")]
    simulator = [m for m in out if m == "boldgpt.sim" or m.startswith("boldgpt.sim.")]
    assert heavy == [] and simulator == []


def test_parse_source_kinds_and_errors(tmp_path):
    assert parse_source("sim:demo") == SourceSpec("sim:demo", "sim", preset="demo", seed=0)
    assert parse_source("sim:ci:7").seed == 7
    assert parse_source(tmp_path) == SourceSpec(str(tmp_path), "local", path=tmp_path.resolve())
    assert parse_source("clane9/NSD-Flat").hub_id == "clane9/NSD-Flat"
    with pytest.raises(
        ConfigError, match=r"unknown simulator preset 'demoo'.*did you mean 'sim:demo'"
    ):
        parse_source("sim:demoo")
    with pytest.raises(ConfigError, match="integer seed"):
        parse_source("sim:demo:x")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="is a file; expected a directory"):
        parse_source(tmp_path / "f.txt")
    for bad in ("./nowhere", "/no/such/dir", "a/b/c"):
        with pytest.raises(DataError, match="does not exist"):
            parse_source(bad)
