"""A corpus of bad inputs, each fed through the public API or the CLI: every one must
raise a clear error that names the input and what was expected, and must not damage
what was already written (a previous cache, model directory or run).

The bad files are made at test time from a tiny, valid NSD-Flat copy
(``nsd_tiny.build_tiny_nsd``); none is committed."""

from __future__ import annotations

import copy
import io
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from boldgpt.cli import main
from boldgpt.data import schema
from boldgpt.data.cache import CachedNSDFlat, build_cache, check_cache
from boldgpt.data.nsd_flat import load_mask
from boldgpt.errors import BoldGPTError, CheckpointError, ConfigError, DataError
from nsd_tiny import build_tiny_nsd, write_hub_layout

# ------------------------------------------------------------------------------ helpers


class Evil:
    """Unpickling this would create ``marker``: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def evil_pickle(path: Path, marker: Path, torch_format: bool = True) -> Path:
    payload = {"model": {"w": torch.zeros(2)}, "hook": Evil(marker)}
    if torch_format:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def raises(exc: type[Exception], fn, *patterns: str) -> str:
    """Call ``fn``; it must raise ``exc`` whose message matches every regex."""
    with pytest.raises(exc) as info:
        fn()
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in: {message}"
    return message


def written(root: Path) -> set[str]:
    """The files under ``root`` (an empty set when it does not exist)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to check nothing was touched)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid source: 2 subjects, 12 trials each (train and test shards), with mask."""
    root = tmp_path_factory.mktemp("good") / "nsd"
    return build_tiny_nsd(
        root, train_shards=1, subjects=(0, 1), sessions=3, trials_per_session=4, with_mask=True
    )


@pytest.fixture(scope="module")
def cached(good, tmp_path_factory):
    """A cache of the good source, built once; tests check it survives their failures."""
    root = tmp_path_factory.mktemp("cache")
    return build_cache(good.root, splits=["train"], cache_root=root, progress=False)


def variant(good, tmp_path: Path, mutate=None, **layout) -> Path:
    """A copy of the good source with its train rows changed by ``mutate(rows)``."""
    rows = copy.deepcopy(good.rows)
    if mutate is not None:
        mutate(rows["train"])
    return write_hub_layout(tmp_path / "src", rows, mask=good.mask, **layout)


def train_shard(root: Path) -> Path:
    return next((root / "data").glob("train-*.parquet"))


def build(root: Path, tmp_path: Path, **kwargs) -> Path:
    return build_cache(root, splits=["train"], cache_root=tmp_path / "c", progress=False, **kwargs)


def set_activity(row: int, data: bytes):
    def mutate(rows):
        rows[row]["activity"] = {"bytes": data, "path": None}

    return mutate


def map_png(shape=schema.MAP_SHAPE, mode="L", fmt="PNG") -> bytes:
    if mode == "I;16":
        img = Image.fromarray(np.full(shape, 1000, dtype=np.uint16))  # mode I;16
    elif mode == "RGB":
        img = Image.fromarray(np.zeros((*shape, 3), np.uint8), mode)
    else:
        img = Image.fromarray(np.zeros(shape, np.uint8), mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# ------------------------------------------------------------------------- data files

ROW = 3  # the row of the train shard made bad; errors must name it

BAD_MAPS = {
    "corrupt_png": (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, r"cannot decode"),
    "truncated_png": (None, r"cannot decode"),  # the good PNG cut in half
    "wrong_canvas": (map_png((100, 120)), r"100x120 .*expected 215x200"),
    "rgb_channels": (map_png(mode="RGB"), r"mode 'RGB'; expected 'L'"),
    "uint16_dtype": (map_png(mode="I;16"), r"mode 'I;16'; expected 'L'"),
    "jpeg": (map_png(fmt="JPEG"), r"JPEG image; expected a lossless PNG"),
}


@pytest.mark.parametrize("case", list(BAD_MAPS))
def test_bad_activity_map_names_file_row_and_expectation(good, cached, tmp_path, case):
    data, expected = BAD_MAPS[case]
    if data is None:
        good_png = good.rows["train"][ROW]["activity"]["bytes"]
        data = good_png[: len(good_png) // 2]
    root = variant(good, tmp_path, set_activity(ROW, data))
    before = tree(cached)
    raises(DataError, lambda: build(root, tmp_path), r"train-.*\.parquet row 3", expected)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").glob("[!.]*"))
    assert tree(cached) == before


def test_truncated_parquet_is_named(good, tmp_path):
    root = variant(good, tmp_path)
    shard = train_shard(root)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    raises(
        DataError, lambda: build(root, tmp_path), re.escape(str(shard)), "not a readable parquet"
    )


def test_a_text_file_named_parquet_is_named(good, tmp_path):
    root = variant(good, tmp_path)
    train_shard(root).write_text("subject_id,activity\n0,xyz\n")
    raises(DataError, lambda: build(root, tmp_path), r"train-.*\.parquet", "not a readable parquet")


@pytest.mark.parametrize("column", ["subject_id", "nsd_id", "activity", "shared1000"])
def test_missing_column_is_named(good, tmp_path, column):
    root = variant(good, tmp_path, drop_columns=[column])
    raises(
        DataError,
        lambda: build(root, tmp_path),
        r"train-.*\.parquet",
        f"missing column '{column}'",
        re.escape(schema.REQUIRED_COLUMNS[column].split(" ")[0]),
    )


def test_extra_columns_are_ignored(good, tmp_path):
    root = variant(good, tmp_path)
    shard = train_shard(root)
    table = pq.read_table(shard)
    table = table.append_column("my_notes", pa.array(["x"] * table.num_rows))
    pq.write_table(table, shard)
    ds = CachedNSDFlat(build(root, tmp_path), "train")
    keep = ~good.column("train", "shared1000")
    np.testing.assert_array_equal(ds.activity, good.maps["train"][keep])
    np.testing.assert_array_equal(ds.subject_ids, good.column("train", "subject_id")[keep])


def _rewrite_column(root: Path, name: str, values: pa.Array) -> Path:
    shard = train_shard(root)
    table = pq.read_table(shard)
    table = table.set_column(table.schema.get_field_index(name), name, values)
    pq.write_table(table, shard)
    return shard


def test_column_of_the_wrong_type_is_named(good, tmp_path):
    root = variant(good, tmp_path)
    n = len(good.rows["train"])
    _rewrite_column(root, "subject_id", pa.array([f"subj{i}" for i in range(n)]))
    raises(DataError, lambda: build(root, tmp_path), "column 'subject_id' has type string", "int64")


def test_null_id_names_the_row(good, tmp_path):
    root = variant(good, tmp_path)
    ids = [r["nsd_id"] for r in good.rows["train"]]
    ids[ROW] = None
    _rewrite_column(root, "nsd_id", pa.array(ids, pa.int64()))
    raises(DataError, lambda: build(root, tmp_path), "row 3: column 'nsd_id' is missing")


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("subject_id", 8, r"subject_id .*8.*expected 0\.\.7"),
        ("subject_id", -1, r"subject_id .*-1.*expected 0\.\.7"),
        ("nsd_id", 73_000, r"nsd_id .*73000.*expected 0\.\.72999"),
        ("nsd_id", -5, r"nsd_id .*-5.*expected 0\.\.72999"),
    ],
)
def test_out_of_range_ids_are_named(good, tmp_path, column, value, expected):
    def mutate(rows):
        rows[ROW][column] = value

    root = variant(good, tmp_path, mutate)
    raises(DataError, lambda: build(root, tmp_path), r"train-.*\.parquet row 3", expected)


def test_empty_dataset_is_refused_by_train_before_writing(good, tmp_path, capsys):
    root = variant(good, tmp_path)
    shard = train_shard(root)
    pq.write_table(pq.read_table(shard).slice(0, 0), shard)  # the schema, no rows
    out = tmp_path / "run"
    cfg = _write_config(
        tmp_path,
        f"out_dir: {out}\ndata: {{source: {str(root)!r}, cache_root: {str(tmp_path / 'c')!r}}}\n",
    )
    rc = main(["train", str(cfg), "log.progress=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert re.search(r"no (maps|rows)", err) and "train" in err and str(root) in err
    assert written(out) <= {".lock"}  # at most the run lock of train()


def test_subject_not_in_the_source_is_named(good, tmp_path):
    raises(
        DataError,
        lambda: build(good.root, tmp_path, subjects=[5]),
        r"subject_id \[5\]",
        r"\[0, 1\]",
    )


def test_source_without_shards_is_named(tmp_path):
    (tmp_path / "src" / "data").mkdir(parents=True)
    raises(
        DataError,
        lambda: build(tmp_path / "src", tmp_path),
        "no parquet shards",
        r"train-\*\.parquet",
    )


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.ones((100, 100), bool), r"shape \(100, 100\); expected \(215, 200\)"),
        (np.zeros(schema.MAP_SHAPE, bool), "mask is empty"),
        (np.full(schema.MAP_SHAPE, 0.5), "dtype float64; expected bool"),
    ],
    ids=["wrong_shape", "no_pixels", "float_values"],
)
def test_bad_mask_file_is_named(tmp_path, array, expected):
    path = tmp_path / "mask.npy"
    np.save(path, array)
    raises(DataError, lambda: load_mask(mask_file=path), re.escape(str(path)), expected)


def test_mask_file_holding_a_pickle_is_refused_without_running_it(tmp_path):
    path, marker = tmp_path / "mask.npy", tmp_path / "ran"
    np.save(path, np.array([Evil(marker)], dtype=object), allow_pickle=True)
    raises(DataError, lambda: load_mask(mask_file=path), re.escape(str(path)), "pickle")
    assert not marker.exists()


def test_source_shipping_a_mask_of_the_wrong_shape(good, tmp_path):
    root = variant(good, tmp_path)
    np.save(root / "mask.npy", np.ones((215, 199), bool))
    raises(DataError, lambda: build(root, tmp_path), r"mask\.npy", r"expected \(215, 200\)")


def test_corrupt_cache_array_asks_for_a_rebuild(cached, tmp_path):
    copy_dir = tmp_path / "cache"
    shutil.copytree(cached, copy_dir)
    act = copy_dir / "train" / "activity.npy"
    act.write_bytes(act.read_bytes()[:1000])
    raises(DataError, lambda: check_cache(copy_dir), re.escape(str(act)), "rebuild")


# -------------------------------------------------------------------- NaN / Inf values


def test_maps_with_nan_or_inf_are_refused_by_pca(tmp_path):
    from boldgpt.models.pca import MaskedPCA

    mask = np.ones((6, 6), bool)
    maps = np.random.default_rng(0).normal(size=(20, 6, 6))
    maps[3, 2, 2] = np.inf
    raises(DataError, lambda: MaskedPCA(mask, 4).fit(maps), "NaN or Inf")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_float_maps_with_nan_or_inf_are_refused_before_the_model(bad):
    from boldgpt.data.transforms import prepare_batch

    activity = torch.zeros(2, *schema.MAP_SHAPE)
    activity[1, 100, 50] = bad
    raises(
        DataError,
        lambda: prepare_batch({"activity": activity}),
        "activity",
        "NaN|Inf",
        "map 1",
    )


def _small_model(**kwargs):
    from boldgpt.models.registry import create_model

    mask = np.zeros((20, 20), bool)
    mask[2:18, 3:17] = True
    kw = dict(mask=mask, patch_size=4, depth=1, embed_dim=16, num_heads=2)
    return create_model("boldgpt_micro_patch10", **{**kw, **kwargs})


def test_model_refuses_nan_maps_and_unknown_subjects():
    model = _small_model()
    x = torch.zeros(2, 20, 20)
    n = model.num_subjects if hasattr(model, "num_subjects") else 8
    raises(
        DataError,
        lambda: model({"activity": x, "subject_id": torch.tensor([0, n])}),
        "subject_id",
        rf"0\.\.{n - 1}",
    )
    x[0, 5, 5] = float("nan")
    raises(DataError, lambda: model({"activity": x, "subject_id": torch.tensor([0, 1])}), "NaN")


# ---------------------------------------------------------------------------- configs


def _write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train: {max_steps: ten}\n", r"train\.max_steps.*'ten'.*int"),
        ("optim: {lr: [1, 2]}\n", r"optim\.lr.*expected a number"),
        ("optim: {lrr: 0.1}\n", r"optim\.lrr.*lr"),
        ("trian: {max_steps: 3}\n", r"trian.*train"),
        ("train: {max_steps: 3\n", r"not valid YAML"),
        ("- a\n- b\n", r"mapping"),
        ("data: {batch_size: -4}\n", r"data\.batch_size must be > 0; got -4"),
    ],
    ids=[
        "wrong_type",
        "list_for_float",
        "unknown_key",
        "unknown_section",
        "bad_yaml",
        "not_mapping",
        "negative",
    ],
)
def test_bad_config_is_named(tmp_path, text, expected):
    from boldgpt.engine.config import load_config

    path = _write_config(tmp_path, text)
    raises(ConfigError, lambda: load_config(path), expected)


def test_cli_train_with_bad_override_fails_cleanly_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    path = _write_config(tmp_path, f"out_dir: {out}\ndata: {{source: 'sim:ci'}}\n")
    rc = main(["train", str(path), "optim.lr=fast"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "optim.lr" in err and "'fast'" in err and "Traceback" not in err
    assert written(out) <= {".lock"}  # at most the run lock of train()


# ------------------------------------------------------------- checkpoints and models


def test_resume_from_a_checkpoint_of_another_architecture(tmp_path):
    from boldgpt.engine.checkpoint import CheckpointManager
    from boldgpt.engine.train import train
    from test_faults import Tiny, config, tiny_data

    train(config(tmp_path, train={"max_steps": 3}), model=Tiny(), data=tiny_data())
    before = tree(tmp_path / "checkpoints")

    class Wider(Tiny):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(4, 4)

    raises(
        CheckpointError,
        lambda: train(config(tmp_path, train={"max_steps": 6}), model=Wider(), data=tiny_data()),
        re.escape(str(CheckpointManager(tmp_path / "checkpoints").latest_path)),
        r"missing key extra\.weight",
    )
    assert tree(tmp_path / "checkpoints") == before


def test_training_checkpoint_that_would_run_code_is_refused(tmp_path):
    from boldgpt.engine.checkpoint import load_checkpoint
    from boldgpt.errors import UnsafeFileError

    marker = tmp_path / "ran"
    for fmt in (True, False):
        path = evil_pickle(tmp_path / f"evil{fmt}.pt", marker, torch_format=fmt)
        raises(UnsafeFileError, lambda p=path: load_checkpoint(p), re.escape(str(path)), "convert")
    assert not marker.exists()


@pytest.fixture
def model_dir(tmp_path) -> Path:
    from boldgpt.models.registry import save_model

    return save_model(_small_model(), tmp_path / "model")


def test_pickle_where_safetensors_is_expected(model_dir, tmp_path):
    from boldgpt.models.registry import load_model

    marker = tmp_path / "ran"
    evil_pickle(model_dir / "model.safetensors", marker)
    raises(CheckpointError, lambda: load_model(model_dir), r"model\.safetensors")
    assert not marker.exists()


def test_original_checkpoint_that_would_run_code_is_refused(tmp_path):
    from boldgpt.models.registry import load_model

    marker, folder = tmp_path / "ran", tmp_path / "orig"
    folder.mkdir()
    evil_pickle(folder / "last.ckpt", marker)
    raises(CheckpointError, lambda: load_model(folder), r"last\.ckpt", "convert")
    assert not marker.exists()


def test_model_directory_without_config(model_dir):
    from boldgpt.models.registry import load_model

    (model_dir / "config.json").unlink()
    raises(CheckpointError, lambda: load_model(model_dir), re.escape(str(model_dir)), "config.json")


def _edit_config(model_dir: Path, edit) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_model_directory_with_an_unknown_model_name(model_dir):
    from boldgpt.models.registry import load_model

    _edit_config(model_dir, lambda c: c.update(name="boldgpt_giant_patch3"))
    raises(Exception, lambda: load_model(model_dir), "boldgpt_giant_patch3", "list-models")


def test_model_directory_whose_config_no_longer_matches_its_weights(model_dir):
    from boldgpt.models.registry import load_model

    # format 1 kept model arguments under "kwargs"; format 2 is flat
    _edit_config(model_dir, lambda c: c.get("kwargs", c).update(embed_dim=32))
    raises(
        CheckpointError, lambda: load_model(model_dir), re.escape(str(model_dir)), "shape mismatch"
    )


def test_model_directory_with_a_config_that_is_not_json(model_dir):
    from boldgpt.models.registry import load_model

    (model_dir / "config.json").write_text("{name: oops")
    raises(CheckpointError, lambda: load_model(model_dir), r"config\.json")


def test_model_directory_with_truncated_weights(model_dir):
    from boldgpt.models.registry import load_model

    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    raises(
        CheckpointError, lambda: load_model(model_dir), "cannot read weights", r"model\.safetensors"
    )


def test_pca_and_vocabulary_files_that_are_pickles(tmp_path):
    from boldgpt.models.pca import load_pca
    from boldgpt.tokenizer import load_tokenizer

    marker = tmp_path / "ran"
    for load in (load_pca, load_tokenizer):
        path = evil_pickle(tmp_path / "file.safetensors", marker)
        raises(BoldGPTError, lambda p=path, f=load: f(p), re.escape(str(path)))
    assert not marker.exists()


def test_cli_generate_with_a_missing_model(tmp_path, capsys):
    rc = main(["generate", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "nowhere" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--num", "0"], "--num"),
        (["--threads", "0"], "--threads"),
        (["--complete", "--num-orders", "4"], "--num-orders 4"),  # fixed prompt order
        (["--complete", "--prompt-order", "random", "--num-orders", "0"], "--num-orders 0"),
        (
            ["--complete", "--method", "autoregressive", "--prompt-order", "random"]
            + ["--num-orders", "3"],
            "--num-orders 3",
        ),
    ],
)
def test_cli_generate_with_bad_options(tmp_path, capsys, extra, named):
    out = tmp_path / "out"
    rc = main(["generate", str(tmp_path / "model"), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and named in err and "Traceback" not in err
    assert not out.exists()


def test_cli_data_cache_with_a_corrupt_source(good, tmp_path, capsys):
    root = variant(good, tmp_path, set_activity(ROW, b"not a png"))
    rc = main(
        [
            "data",
            "cache",
            "--source",
            str(root),
            "--cache-root",
            str(tmp_path / "c"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "row 3" in err and "cannot decode" in err and "Traceback" not in err
