"""Faults a long run meets on a shared cluster: a full disk, a corrupt checkpoint, two
runs on one directory, two builders of one cache, NaN/Inf losses and gradients, a
data-loader worker that dies or hangs. Each test fails when its guard is removed.

Training tests use :func:`boldgpt.engine.train.train` with a tiny model and dataset
defined here (the model contract: ``model(batch).loss``)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from boldgpt.engine.checkpoint import CheckpointManager, load_checkpoint, lock_run_dir
from boldgpt.engine.config import config_from_dict
from boldgpt.engine.train import TrainData, train
from boldgpt.errors import DiskFullError, NonFiniteError, RunLockedError

SIDE = 8


# ---------------------------------------------------------------------- tiny training


@dataclass
class Out:
    loss: torch.Tensor


class Tiny(nn.Module):
    """Linear autoencoder of (B, 8, 8) maps. ``poison`` maps a forward-call number
    (1-based) to ``"loss"`` (a NaN loss) or ``"grad"`` (a finite loss whose gradient is
    NaN) to inject faults at known steps."""

    def __init__(self, poison: dict[int, str] | None = None):
        super().__init__()
        self.lin = nn.Linear(SIDE * SIDE, SIDE * SIDE)
        self.poison = poison or {}
        self.calls = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> Out:
        self.calls += 1 if self.training else 0
        x = batch["activity"].flatten(1)
        loss = (self.lin(x) - x).square().mean()
        kind = self.poison.get(self.calls) if self.training else None
        if kind == "loss":
            loss = loss * float("nan")
        elif kind == "grad":
            # sqrt'(0) is inf and inf * 0 is NaN: the loss stays finite
            loss = loss + torch.sqrt((self.lin.weight * 0).abs().sum())
        return Out(loss=loss)


class Maps(torch.utils.data.Dataset):
    """Random uint8 maps; in a DataLoader worker, batch index ``die_at`` kills the
    worker (``"kill"``) or blocks it (``"hang"``)."""

    def __init__(self, n: int, seed: int, fault: str | None = None, die_at: int = 2):
        rng = np.random.default_rng(seed)
        self.maps = torch.from_numpy(rng.integers(0, 256, (n, SIDE, SIDE), dtype=np.uint8))
        self.fault, self.die_at, self.fetches = fault, die_at, 0

    def __len__(self) -> int:
        return len(self.maps)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        self.fetches += 1
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker and self.fault and self.fetches >= self.die_at:
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(30)  # long enough to fail the test, short enough not to hang it
        return {"activity": self.maps[torch.as_tensor(indices)]}


def prepare(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {"activity": batch["activity"].to(device).float() / 128 - 1}


def tiny_data(fault: str | None = None) -> TrainData:
    return TrainData(
        train=Maps(64, 1, fault), val=Maps(16, 2), mask=np.ones((SIDE, SIDE), bool), prepare=prepare
    )


def config(out_dir: Path, **sections):
    cfg = {
        "out_dir": str(out_dir),
        "data": {"batch_size": 8},
        "optim": {"lr": 1e-2, "min_lr": 1e-4, "warmup_steps": 1},
        "train": {"max_steps": 10, "eval_every": 100, "eval_batches": 1, "device": "cpu"},
        "log": {"every": 1, "tensorboard": False, "progress": False, "figures_every": 0},
        "checkpoint": {"every": 3, "keep": 5},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return config_from_dict(cfg)


def run(
    out_dir: Path, model: nn.Module | None = None, dataset: TrainData | None = None, **sections
):
    torch.manual_seed(0)
    cfg = config(out_dir, **sections)
    return train(cfg, model=model or Tiny(), data=dataset or tiny_data())


def finite_state(path: Path) -> bool:
    state = load_checkpoint(path)["model"]
    return all(bool(torch.isfinite(v).all()) for v in state.values())


# --------------------------------------------------------------------------- disk full


def _fail_midway(real):
    """A writer that writes half of what ``real`` would, then runs out of space."""

    def write(obj, f, *args, **kwargs):
        import io

        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_checkpoint_write_out_of_space_keeps_the_previous_one(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep=2)
    state = {"model": {"w": torch.arange(1000.0)}}
    manager.save(state, step=1)
    monkeypatch.setattr(torch, "save", _fail_midway(torch.save))
    with pytest.raises(DiskFullError, match=r"no space left .*step-0000002\.pt.*unchanged"):
        manager.save({"model": {"w": torch.zeros(1000)}}, step=2)
    monkeypatch.undo()
    assert manager.latest() == manager.latest_path
    ckpt = load_checkpoint(manager.latest())
    assert ckpt["step"] == 1 and torch.equal(ckpt["model"]["w"], torch.arange(1000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "step-0000001.pt"]


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or sys.platform != "linux":
        return False
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def test_checkpoint_on_a_really_full_file_system(tmp_path):
    """The same on a 256 KiB tmpfs (only where the test may mount one)."""
    fs = tmp_path / "small"
    if not _mount_tmpfs(fs, "256k"):
        pytest.skip("cannot mount a size-limited tmpfs here (needs root)")
    try:
        manager = CheckpointManager(fs, keep=3)
        manager.save({"model": {"w": torch.ones(1000)}}, step=1)
        with pytest.raises(DiskFullError, match="no space left"):
            manager.save({"model": {"w": torch.zeros(200_000)}}, step=2)  # 800 KB
        assert load_checkpoint(manager.latest())["step"] == 1
        assert sorted(p.name for p in fs.iterdir()) == ["latest.pt", "step-0000001.pt"]
    finally:
        subprocess.run(["umount", str(fs)], check=False)


def test_model_directory_out_of_space_keeps_the_previous_model(tmp_path, monkeypatch):
    import safetensors.torch

    from boldgpt.models.registry import create_model, load_model, save_model

    mask = np.zeros((20, 20), bool)
    mask[2:18, 3:17] = True
    kwargs = dict(mask=mask, patch_size=4, depth=1, embed_dim=16, num_heads=2)
    old = create_model("boldgpt_micro_patch10", **kwargs)
    save_model(old, tmp_path / "model")
    real = safetensors.torch.save_file

    def full(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(100)
        # safetensors reports the OSError only as text
        raise RuntimeError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(DiskFullError, match=r"no space left .*directory .*model"):
        save_model(create_model("boldgpt_micro_patch10", **kwargs), tmp_path / "model")
    monkeypatch.undo()
    loaded = load_model(tmp_path / "model")
    for k, v in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary left


def test_cache_build_out_of_space_keeps_the_previous_cache(tmp_path, monkeypatch):
    from boldgpt.data.cache import CachedNSDFlat, build_cache
    from nsd_tiny import build_tiny_nsd

    tiny = build_tiny_nsd(tmp_path / "src", train_shards=1, subjects=(0,), sessions=2)
    built = build_cache(tiny.root, splits=["train"], cache_root=tmp_path / "c", progress=False)
    before = np.array(CachedNSDFlat(built, "train").activity)
    real = np.save

    def full(file, arr, *args, **kwargs):
        real(file, arr, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(DiskFullError, match=r"no space left .*unchanged"):
        build_cache(
            tiny.root, splits=["train"], cache_root=tmp_path / "c", rebuild=True, progress=False
        )
    monkeypatch.undo()
    after = CachedNSDFlat(built, "train")  # check_cache passes: complete and consistent
    np.testing.assert_array_equal(after.activity, before)
    assert not [p for p in built.parent.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------- corrupt checkpoints


def test_resume_skips_a_truncated_checkpoint_with_a_warning(tmp_path, capfd):
    first = run(tmp_path, train={"stop_after": 6})
    assert first.step == 6
    ckpts = CheckpointManager(tmp_path / "checkpoints")
    newest = ckpts.step_path(6)
    data = newest.read_bytes()
    with open(newest, "r+b") as f:  # in place: latest.pt is a hard link to it
        f.truncate(len(data) // 2)
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*step-0000006\.pt"):
        assert ckpts.latest() == ckpts.step_path(3)
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        second = run(tmp_path)
    assert second.status == "finished" and second.step == 10
    assert f"resumed from {ckpts.step_path(3)}" in capfd.readouterr().err


def test_resume_skips_a_checkpoint_with_flipped_bytes(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2):
        manager.save({"model": {"w": torch.full((4000,), float(step))}}, step=step)
    path = manager.step_path(2)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the tensor data: the zip CRC no longer matches
    path.write_bytes(bytes(raw))  # a new file: latest.pt keeps the good copy
    os.unlink(manager.latest_path)
    with pytest.warns(UserWarning, match=r"step-0000002\.pt: its entry .* is corrupt"):
        assert manager.latest() == manager.step_path(1)


# ----------------------------------------------------------------------------- locking


def test_second_run_on_the_same_out_dir_refuses(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom boldgpt.engine.checkpoint import lock_run_dir\n"
            f"with lock_run_dir({str(tmp_path)!r}):\n"
            "    print('locked', flush=True)\n    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        expected = rf"run directory .* in use .*pid {holder.pid}"
        with pytest.raises(RunLockedError, match=expected), lock_run_dir(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with lock_run_dir(tmp_path):  # released when its holder died
        pass


def test_train_refuses_an_out_dir_in_use_and_writes_nothing(tmp_path):
    run(tmp_path, train={"max_steps": 3})
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
    # the lock as a running trainer holds it
    with lock_run_dir(tmp_path), pytest.raises(RunLockedError, match="in use by another"):
        run(tmp_path, train={"max_steps": 6}, checkpoint={"resume": "no"})
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_two_builders_of_one_cache_build_it_once(tmp_path, monkeypatch):
    from boldgpt.data import cache
    from nsd_tiny import build_tiny_nsd

    tiny = build_tiny_nsd(tmp_path / "src", train_shards=1, subjects=(0,), sessions=2)
    builds = []
    real = cache._build

    def slow_build(*args, **kwargs):
        builds.append(threading.get_ident())
        time.sleep(0.5)  # both callers arrive while the first is building
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "_build", slow_build)
    results, errors = [], []

    def build():
        try:
            results.append(
                cache.build_cache(
                    tiny.root, splits=["train"], cache_root=tmp_path / "c", progress=False
                )
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(builds) == 1
    ds = cache.CachedNSDFlat(results[0], "train")
    np.testing.assert_array_equal(
        ds.activity, tiny.maps["train"][~tiny.column("train", "shared1000")]
    )


# --------------------------------------------------------------------- NaN / Inf values


@pytest.fixture(params=["plain", "fused"])
def optimizer_kind(request, monkeypatch):
    """The CPU's AdamW (the guard checks on the host at once), or a fused AdamW as on
    GPUs (the guard skips the update on the device and reports at the log line)."""
    if request.param == "fused":
        import boldgpt.engine.train as engine

        real = engine.make_optimizer

        def fused(model, config, device):
            keys = ("params", "lr", "weight_decay")
            groups = [{k: g[k] for k in keys} for g in real(model, config, device).param_groups]
            opt = config.optim
            return torch.optim.AdamW(groups, betas=tuple(opt.betas), eps=opt.eps, fused=True)

        monkeypatch.setattr(engine, "make_optimizer", fused)
    return request.param


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_loss_or_gradient_stops_with_the_last_good_checkpoint(
    tmp_path, kind, optimizer_kind
):
    ckpts = tmp_path / "checkpoints"
    model = Tiny(poison={5: kind})
    with pytest.raises(NonFiniteError) as info:
        run(tmp_path, model=model)
    message = str(info.value)
    assert "step 5" in message and str(ckpts / "step-0000003.pt") in message
    assert "skip_nonfinite" in message  # says how to go on
    # nothing of the bad step reached the weights or a checkpoint
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert sorted(p.name for p in ckpts.glob("step-*.pt")) == ["step-0000003.pt"]
    assert load_checkpoint(ckpts / "latest.pt")["step"] == 3
    assert finite_state(ckpts / "latest.pt")


def test_non_finite_batches_can_be_skipped_and_are_counted(tmp_path, optimizer_kind):
    from boldgpt.engine.logs import read_log

    model = Tiny(poison={4: "loss", 7: "grad"})
    result = run(tmp_path, model=model, train={"skip_nonfinite": True})
    assert result.status == "finished" and result.step == 10
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    # plain: a skipped batch is not a step; fused: the step counts, its update is skipped
    assert model.calls == (12 if optimizer_kind == "plain" else 10)
    train_logs = [r for r in read_log(tmp_path) if r["split"] == "train"]
    assert train_logs[-1]["skipped_nonfinite"] == 2
    assert all(np.isfinite(r["loss"]) for r in train_logs)


# ------------------------------------------------------------------- data-loader workers


@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_a_dead_or_stuck_loader_worker_fails_fast(tmp_path, fault):
    start = time.perf_counter()
    with pytest.raises(Exception, match=r"(?i)data-?loader worker") as info:
        run(tmp_path, dataset=tiny_data(fault), data={"num_workers": 1, "worker_timeout": 3})
    assert time.perf_counter() - start < 20
    assert "data.num_workers" in str(info.value)  # says how to see the real error
