"""The memory-mapped cache: round trip, keys, invalidation, atomic builds, the Dataset and
DataLoader path, and the ``boldgpt data cache`` command."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from boldgpt.cli import main
from boldgpt.data import cache, nsd_flat
from boldgpt.data.cache import CachedNSDFlat, build_cache, check_cache, make_dataloader
from boldgpt.errors import DataError
from nsd_tiny import build_tiny_nsd, make_rows, png, write_hub_layout

IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_nsd(tmp_path_factory.mktemp("nsd") / "tiny", train_shards=2)


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return build_cache(tiny.root, image_size=IMAGE_SIZE, cache_root=root, progress=False)


def _split_rows(tiny, split):
    hub = "test" if split == "test" else "train"
    shared = tiny.column(hub, "shared1000")
    keep = {"train": ~shared, "val": shared, "test": np.ones_like(shared)}[split]
    return hub, np.flatnonzero(keep)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_cache_round_trip(tiny, built, split):
    ds = CachedNSDFlat(built, split)
    hub, rows = _split_rows(tiny, split)
    assert len(ds) == len(rows)
    np.testing.assert_array_equal(ds.activity, tiny.maps[hub][rows])
    np.testing.assert_array_equal(ds.subject_ids, tiny.column(hub, "subject_id")[rows])
    np.testing.assert_array_equal(ds.trial_ids, tiny.column(hub, "trial_id")[rows])
    np.testing.assert_array_equal(ds.session_ids, tiny.column(hub, "session_id")[rows])
    np.testing.assert_array_equal(ds.mask, tiny.mask)
    batch = ds[[0, len(ds) - 1]]
    for j, i in enumerate([0, len(ds) - 1]):
        nsd_id = int(batch["nsd_id"][j])
        assert nsd_id == tiny.column(hub, "nsd_id")[rows[i]]
        expected = Image.fromarray(tiny.images[nsd_id]).resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC
        )
        np.testing.assert_array_equal(batch["image"][j].numpy(), np.asarray(expected))


def test_worker_processes_and_sliced_reads_give_the_same_cache(tiny, built, tmp_path, monkeypatch):
    monkeypatch.setattr(nsd_flat, "READ_BATCH", 5)  # several slices per row group
    out = build_cache(
        tiny.root, image_size=IMAGE_SIZE, cache_root=tmp_path, num_workers=2, progress=False
    )
    for split in ("train", "val", "test"):
        a, b = CachedNSDFlat(out, split), CachedNSDFlat(built, split)
        np.testing.assert_array_equal(a.activity, b.activity)
        np.testing.assert_array_equal(a.images, b.images)


def test_images_are_stored_once_per_stimulus(tiny, built):
    meta = check_cache(built)
    all_ids = set(tiny.column("train", "nsd_id")) | set(tiny.column("test", "nsd_id"))
    assert meta["images"] == {"count": len(all_ids), "size": IMAGE_SIZE}
    ds = CachedNSDFlat(built, "train")
    np.testing.assert_array_equal(ds.image_nsd_ids[ds.image_index], ds.nsd_ids)


def test_batches_match_single_items(built):
    ds = CachedNSDFlat(built, "train")
    idx = [5, 0, 5, len(ds) - 1]
    batch = ds.__getitems__(idx)
    assert batch["activity"].dtype == torch.uint8 and batch["activity"].shape == (4, 215, 200)
    assert batch["image"].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
    for key in ("subject_id", "nsd_id", "trial_id", "session_id"):
        assert batch[key].dtype == torch.int64
    for j, i in enumerate(idx):
        item = ds[i]
        for key, value in item.items():
            assert torch.equal(batch[key][j], value)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataloader_seeded_shuffle_sampler_and_drop_last(built):
    ds = CachedNSDFlat(built, "train", images=False)

    def order(loader):
        return [t for b in loader for t in b["trial_id"].tolist()]

    by_trial = ds.trial_ids.tolist()
    a, b = order(make_dataloader(ds, 8, seed=1)), order(make_dataloader(ds, 8, seed=1))
    assert a == b and sorted(a) == sorted(by_trial)  # an epoch visits every sample once
    assert a != order(make_dataloader(ds, 8, seed=2))
    assert order(make_dataloader(ds, 8, shuffle=False)) == by_trial
    batches = list(make_dataloader(ds, 8, drop_last=True))
    assert len(batches) == len(ds) // 8 and all(len(x["activity"]) == 8 for x in batches)
    assert "image" not in batches[0]
    picked = [3, 1, 2]
    loader = make_dataloader(ds, 2, sampler=picked)
    assert order(loader) == [by_trial[i] for i in picked]
    with pytest.raises(ValueError, match="shuffle=True or a sampler"):
        make_dataloader(ds, 2, shuffle=True, sampler=picked)


def test_dataloader_workers_reopen_the_memmap(built):
    ds = CachedNSDFlat(built, "val")
    ds[0]  # opens the memory map
    # The maps are not copied into the pickle (the mask and ids are: ~45 kB).
    assert len(pickle.dumps(ds)) < ds.activity.nbytes / 4
    loaded = [b["activity"] for b in make_dataloader(ds, 4, shuffle=False, num_workers=2)]
    np.testing.assert_array_equal(torch.cat(loaded).numpy(), ds.activity)


def test_cache_is_reused_and_keyed_by_parameters(tiny, built):
    root = built.parent
    marker = (built / "COMPLETE").stat().st_mtime_ns
    assert build_cache(tiny.root, image_size=IMAGE_SIZE, cache_root=root, progress=False) == built
    assert (built / "COMPLETE").stat().st_mtime_ns == marker
    one = build_cache(
        tiny.root, subjects=["subj01"], splits=["val"], cache_root=root, progress=False
    )
    assert one != built
    ds = CachedNSDFlat(one, "val")
    assert set(ds.subject_ids.tolist()) == {0} and not ds.with_images
    with pytest.raises(DataError, match="no split 'train'"):
        CachedNSDFlat(one, "train")
    with pytest.raises(DataError, match="holds no images"):
        CachedNSDFlat(one, "val", images=True)


def test_changed_source_triggers_rebuild(tmp_path):
    tiny = build_tiny_nsd(tmp_path / "src", subjects=(0,), sessions=2)
    first = build_cache(tiny.root, splits=["train"], cache_root=tmp_path / "c", progress=False)
    rows, maps, _ = make_rows(subjects=(0,), sessions=2, seed=7)
    write_hub_layout(tiny.root, rows, train_shards=2)
    second = build_cache(tiny.root, splits=["train"], cache_root=tmp_path / "c", progress=False)
    assert second == first
    shared = np.array([r["shared1000"] for r in rows["train"]])
    np.testing.assert_array_equal(CachedNSDFlat(second, "train").activity, maps["train"][~shared])


def test_failed_build_keeps_the_old_cache_and_leaves_nothing(tiny, built, monkeypatch):
    calls = []

    def failing(task):
        calls.append(task)
        if len(calls) > 1:
            raise RuntimeError("killed halfway")
        return real(task)

    real = cache._decode_task
    monkeypatch.setattr(cache, "_decode_task", failing)
    before = sorted(p.name for p in built.parent.iterdir())
    with pytest.raises(RuntimeError, match="killed halfway"):
        build_cache(
            tiny.root, image_size=IMAGE_SIZE, cache_root=built.parent, rebuild=True, progress=False
        )
    assert sorted(p.name for p in built.parent.iterdir()) == before  # no temp dir left
    check_cache(built)  # the previous complete cache is untouched


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_png_fails_the_build_naming_file_and_row(tmp_path, workers):
    rows, _, _ = make_rows(subjects=(0, 1), sessions=2)
    rows["train"][-2]["activity"] = {"bytes": png(np.zeros((215, 200, 3), np.uint8), "RGB")}
    write_hub_layout(tmp_path / "src", rows, train_shards=2)
    n0 = (len(rows["train"])) // 2
    row = len(rows["train"]) - 2 - n0
    with pytest.raises(DataError, match=rf"train-00001-of-00002\.parquet row {row} .*mode 'RGB'"):
        build_cache(
            tmp_path / "src", cache_root=tmp_path / "c", num_workers=workers, progress=False
        )
    assert not [p for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")]


def test_build_killed_by_sigkill_is_never_loaded(tiny, tmp_path):
    started = tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import pathlib, time
        from boldgpt.data import cache, nsd_flat
        real = cache._decode_task
        def slow(task):
            out = real(task)
            pathlib.Path({str(started)!r}).touch()
            time.sleep(60)
            return out
        cache._decode_task = slow
        cache.build_cache({str(tiny.root)!r}, cache_root={str(tmp_path / "c")!r},
                          num_workers=0, progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    try:
        deadline = time.time() + 60
        while not started.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the build did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = list((tmp_path / "c").glob(".*.tmp"))
    assert len(leftovers) == 1  # a half-written build under a temporary name
    with pytest.raises(DataError, match="not a complete boldgpt cache"):
        CachedNSDFlat(leftovers[0], "train")
    final = cache.cache_path(cache.resolve_source(tiny.root), cache_root=tmp_path / "c")
    assert not final.exists()
    out = build_cache(tiny.root, cache_root=tmp_path / "c", progress=False)
    assert out == final and not list((tmp_path / "c").glob(".*.tmp"))  # cleaned up
    check_cache(out)


def test_incomplete_or_truncated_cache_is_rejected_and_rebuilt(tiny, tmp_path):
    out = build_cache(tiny.root, splits=["val"], cache_root=tmp_path, progress=False)
    (out / "COMPLETE").unlink()
    with pytest.raises(DataError, match="not a complete boldgpt cache"):
        CachedNSDFlat(out, "val")
    out = build_cache(tiny.root, splits=["val"], cache_root=tmp_path, progress=False)
    CachedNSDFlat(out, "val")
    with open(out / "val" / "activity.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match=r"val/activity\.npy: unreadable cache array"):
        check_cache(out)
    out = build_cache(tiny.root, splits=["val"], cache_root=tmp_path, progress=False)
    assert len(CachedNSDFlat(out, "val")) == int(tiny.column("train", "shared1000").sum())


def test_bad_parameters(tiny, tmp_path):
    with pytest.raises(ValueError, match="splits must be"):
        build_cache(tiny.root, splits=["training"], cache_root=tmp_path)
    with pytest.raises(ValueError, match="image_size must be"):
        build_cache(tiny.root, image_size=3, cache_root=tmp_path)


def test_cli_cache(tiny, tmp_path, capsys):
    args = [
        "data",
        "cache",
        "--source",
        str(tiny.root),
        "--cache-root",
        str(tmp_path),
        "--no-progress",
    ]
    assert main([*args, "--splits", "val", "--subjects", "subj02"]) == 0
    out = capsys.readouterr().out.splitlines()
    n = int(((tiny.column("train", "subject_id") == 1) & tiny.column("train", "shared1000")).sum())
    assert out[0] == f"  val: {n:,} maps"
    assert len(CachedNSDFlat(out[-1], "val")) == n
    assert out[1].startswith("built in ")
    assert main([*args, "--splits", "val", "--subjects", "subj02"]) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[1].startswith("reused a valid cache") and again[-1] == out[-1]


def _subparser(parser, *names):
    import argparse

    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_every_command_names_its_data_source_and_subjects_the_same_way():
    from boldgpt.cli import build_parser
    from boldgpt.data.sources import DEFAULT_SOURCE

    root = build_parser()
    with_subjects = [("data", "inspect"), ("data", "cache"), ("fit-vocab",), ("fit-pca",)]
    with_source = [*with_subjects, ("generate",), ("demo",)]
    for names in with_source:
        p = _subparser(root, *names)
        options = {s for a in p._actions for s in a.option_strings}
        positionals = [a.dest for a in p._actions if not a.option_strings]
        assert "--source" in options and "source" not in positionals, names
        assert p.get_default("source") == DEFAULT_SOURCE, names
        assert "hub id" in p.format_help(), names  # the forms of a source are documented
    for names in [*with_subjects, ("generate",), ("data", "simulate")]:
        p = _subparser(root, *names)
        extra = ["MODEL"] if names == ("generate",) else ["OUT"] if "simulate" in names else []
        args = p.parse_args([*extra, "--subjects", "0,subj02"])
        assert args.subjects == [0, 1], names
        assert "subj01,subj02" in p.format_help(), names
