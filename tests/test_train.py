"""The training loop: bit-exact resume, bad configs, signals, freezing, accumulation,
the sampler and the schedule.

Most tests use a tiny model defined here that follows the model contract
(``model(batch).loss``, ``param_groups``) and draws random masks from torch's global
RNG the way boldGPT draws random orders, so RNG restoration is exercised too.
"""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from boldgpt.engine.checkpoint import CheckpointManager, load_checkpoint
from boldgpt.engine.config import config_from_dict
from boldgpt.engine.distributed import ResumableShardSampler
from boldgpt.engine.logs import read_log
from boldgpt.engine.train import TrainData, lr_factor, train
from boldgpt.errors import CheckpointError, ConfigError, DataError

SIDE = 12


@dataclass
class ToyOutput:
    loss: torch.Tensor


class ToyModel(nn.Module):
    """Masked autoencoder of (B, 12, 12) maps: hide a random subset of pixels, predict
    them. Randomness (mask, dropout) comes from torch's global RNG."""

    def __init__(self, width: int = 32, mask_ratio: float = 0.5, dropout: float = 0.1):
        super().__init__()
        self.mask_ratio = mask_ratio
        self.encoder = nn.Sequential(nn.Linear(SIDE * SIDE, width), nn.GELU())
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(width, SIDE * SIDE)
        self.subject_embed = nn.Embedding(4, width)

    def forward(self, batch: dict[str, torch.Tensor]) -> ToyOutput:
        x = batch["activity"].flatten(1)
        hidden = torch.rand_like(x) < self.mask_ratio
        h = self.encoder(x * ~hidden) + self.subject_embed(batch["subject_id"])
        pred = self.decoder(self.drop(self.norm(h)))
        weight = hidden.float() if self.mask_ratio > 0 else torch.ones_like(x)
        loss = ((pred - x).square() * weight).sum() / weight.sum().clamp_min(1)
        return ToyOutput(loss=loss)

    def param_groups(self, weight_decay: float) -> list[dict]:
        decay = [p for n, p in self.named_parameters() if p.ndim == 2 and "embed" not in n]
        other = [p for n, p in self.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": other, "weight_decay": 0.0},
        ]


class ToyMaps(torch.utils.data.Dataset):
    """Smooth random uint8 maps with a subject id, batched through ``__getitems__`` like
    the real cache."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        base = rng.normal(size=(n, 3, 3))
        maps = np.kron(base, np.ones((4, 4))) + 0.3 * rng.normal(size=(n, SIDE, SIDE))
        self.activity = torch.from_numpy(np.clip(127 + 40 * maps, 0, 255).astype(np.uint8))
        self.subject_id = torch.from_numpy(rng.integers(0, 4, size=n))

    def __len__(self) -> int:
        return len(self.activity)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return {"activity": self.activity[idx], "subject_id": self.subject_id[idx]}


def toy_prepare(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    out = {k: v.to(device) for k, v in batch.items()}
    out["activity"] = out["activity"].float() * (5 / 255) - 2.5
    return out


def toy_data(n_train: int = 48, n_val: int = 16) -> TrainData:
    return TrainData(
        train=ToyMaps(n_train, seed=1),
        val=ToyMaps(n_val, seed=2),
        mask=np.ones((SIDE, SIDE), bool),
        prepare=toy_prepare,
    )


def toy_config(out_dir: Path, **sections) -> dict:
    """A small fast config dict; ``sections`` update its sections."""
    cfg = {
        "out_dir": str(out_dir),
        "seed": 3,
        "data": {"batch_size": 8},
        "optim": {"lr": 3e-3, "min_lr": 1e-4, "warmup_steps": 2},
        "train": {"max_steps": 10, "eval_every": 4, "eval_batches": 0, "device": "cpu"},
        "log": {"every": 1, "tensorboard": False, "progress": False, "figures_every": 0},
        "checkpoint": {"every": 3, "keep": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def run(cfg: dict, model: nn.Module | None = None, **kwargs):
    torch.manual_seed(0)
    model = model if model is not None else ToyModel(**kwargs)
    return train(config_from_dict(cfg), model=model, data=toy_data()), model


def train_losses(out_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_log(out_dir) if r["split"] == "train"]


def test_resume_is_bit_exact(tmp_path):
    """N steps, stop, resume for N more == 2N uninterrupted: identical parameters,
    optimizer state and loss curve (crossing an epoch boundary: 6 batches/epoch)."""
    full, full_model = run(toy_config(tmp_path / "full"))
    assert full.status == "finished" and full.step == 10

    first, _ = run(toy_config(tmp_path / "split", train={"stop_after": 5}))
    assert first.status == "stopped" and first.step == 5
    second, resumed_model = run(toy_config(tmp_path / "split"))
    assert second.status == "finished" and second.step == 10

    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["data"] == b["data"]
    # the resumed run's log continues the curve exactly, without duplicate steps
    assert train_losses(tmp_path / "full") == train_losses(tmp_path / "split")
    assert full.best_val_loss == second.best_val_loss


def test_checkpoint_rotation_latest_and_best(tmp_path):
    result, _ = run(toy_config(tmp_path, checkpoint={"every": 2, "keep": 2}))
    ckpts = CheckpointManager(tmp_path / "checkpoints", keep=2)
    steps = [int(p.stem.split("-")[1]) for p in ckpts.step_files()]
    assert steps == [8, 10]  # rotation kept the newest two
    assert load_checkpoint(ckpts.latest_path)["step"] == 10
    vals = [r for r in read_log(tmp_path) if r["split"] == "val"]
    best = min(vals, key=lambda r: r["loss"])
    best_ckpt = load_checkpoint(ckpts.best_path)
    assert best_ckpt["step"] == best["step"]
    assert best_ckpt["best_val_loss"] == pytest.approx(best["loss"])
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_resume_from_incompatible_checkpoint_fails_before_training(tmp_path):
    run(toy_config(tmp_path, train={"max_steps": 4}))
    log_before = (tmp_path / "log.jsonl").read_text()
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*encoder\.0\.weight"):
        run(toy_config(tmp_path, train={"max_steps": 8}), width=16)
    assert (tmp_path / "log.jsonl").read_text() == log_before  # nothing trained or logged

    bad = tmp_path / "not_a_checkpoint.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="not a boldgpt training checkpoint"):
        run(toy_config(tmp_path / "other", checkpoint={"resume": str(bad)}))


def test_resume_with_other_data_fails_clearly(tmp_path):
    run(toy_config(tmp_path, train={"max_steps": 4}))
    cfg = config_from_dict(toy_config(tmp_path, train={"max_steps": 8}))
    data = toy_data(n_train=40)
    with pytest.raises(CheckpointError, match="48 samples; this split has 40"):
        train(cfg, model=ToyModel(), data=data)


def test_resume_no_starts_over(tmp_path):
    run(toy_config(tmp_path, train={"max_steps": 4}))
    result, _ = run(toy_config(tmp_path, train={"max_steps": 2}, checkpoint={"resume": "no"}))
    assert result.step == 2
    assert [s for s, _ in train_losses(tmp_path)] == [1, 2]


def test_finished_run_refuses_to_continue_without_more_steps(tmp_path):
    run(toy_config(tmp_path, train={"max_steps": 3}))
    with pytest.raises(ConfigError, match="already at step 3"):
        run(toy_config(tmp_path, train={"max_steps": 3}))


class _SignalAt(ToyModel):
    """Sends SIGTERM to its own process during its 3rd training forward."""

    def __init__(self, signum: int):
        super().__init__()
        self.calls, self.signum = 0, signum

    def forward(self, batch):
        if self.training:
            self.calls += 1
            if self.calls == 3:
                os.kill(os.getpid(), self.signum)
        return super().forward(batch)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_checkpoint_and_stops(tmp_path, signum):
    previous = signal.getsignal(signum)
    result, _ = run(toy_config(tmp_path, checkpoint={"every": 100}), model=_SignalAt(signum))
    assert result.status == "interrupted"
    assert result.signal == signal.Signals(signum).name
    assert result.step == 3  # the step in flight finished, then the loop stopped
    assert load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["step"] == 3
    assert signal.getsignal(signum) == previous  # handlers restored
    resumed, _ = run(toy_config(tmp_path))
    assert resumed.status == "finished" and resumed.step == 10


def test_freezing_by_pattern(tmp_path):
    torch.manual_seed(0)
    model = ToyModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(toy_config(tmp_path, model={"freeze": ["encoder.*", "norm.bias"]}), model=model)
    after = model.state_dict()
    for name in ("encoder.0.weight", "encoder.0.bias", "norm.bias"):
        assert torch.equal(before[name], after[name]), name
    for name in ("decoder.weight", "norm.weight", "subject_embed.weight"):
        assert not torch.equal(before[name], after[name]), name

    with pytest.raises(ConfigError, match="'encodr.\\*' matches no parameter"):
        run(toy_config(tmp_path / "typo", model={"freeze": ["encodr.*"]}))


def test_gradient_accumulation_matches_large_batch(tmp_path):
    """batch 8 x 2 micro-steps == batch 16 x 1 (same maps per step; deterministic model)."""
    common = {"train": {"max_steps": 4, "eval_every": 100}, "checkpoint": {"every": 100}}
    _, a = run(
        toy_config(tmp_path / "a", data={"batch_size": 8}, optim={"accumulation": 2}, **common),
        mask_ratio=0.0,
        dropout=0.0,
    )
    _, b = run(
        toy_config(tmp_path / "b", data={"batch_size": 16}, **common), mask_ratio=0.0, dropout=0.0
    )
    torch.manual_seed(0)  # as in run(): the common starting point
    init = ToyModel(mask_ratio=0.0, dropout=0.0)
    moved = 0.0
    for (name, pa), pb, p0 in zip(
        a.state_dict().items(), b.state_dict().values(), init.state_dict().values()
    ):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
        moved += float((pa - p0).abs().max())
    assert moved > 1e-3  # training did change the parameters


def test_schedule_warmup_then_cosine():
    cfg = config_from_dict(
        {"optim": {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 4}, "train": {"max_steps": 14}}
    )
    assert [lr_factor(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, cfg) == pytest.approx(1.0)
    assert lr_factor(9, cfg) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_factor(14, cfg) == pytest.approx(0.1)
    assert lr_factor(20, cfg) == pytest.approx(0.1)


def test_schedule_warmup_stable_decay():
    cfg = config_from_dict(
        {
            "optim": {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 2, "schedule": "wsd",
                      "decay_fraction": 0.3},
            "train": {"max_steps": 10},
        }
    )  # fmt: skip
    # warmup over 2 steps, constant to step 7 (10 - 3), then a straight line to 0.1 at 10
    expected = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.7, 0.4, 0.1, 0.1]
    assert [lr_factor(s, cfg) for s in range(12)] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="optim.decay_fraction"):
        config_from_dict({"optim": {"schedule": "wsd", "decay_fraction": 0.0}})
    with pytest.raises(ConfigError, match="optim.schedule"):
        config_from_dict({"optim": {"schedule": "linear"}})


def test_learning_rates_follow_schedule_and_groups(tmp_path):
    run(toy_config(tmp_path, optim={"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 2}))
    logged = [r["lr"] for r in read_log(tmp_path) if r["split"] == "train"]
    expected = [1e-2 * (0.5 if s == 0 else 1.0) for s in range(2)]
    expected += [
        1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 10)
    ]
    np.testing.assert_allclose(logged, expected, rtol=1e-12)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    decays = [g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]]
    assert decays == [0.05, 0.0]


def test_sampler_shards_cover_global_batches_and_resume():
    n, b, world = 50, 4, 3
    one = ResumableShardSampler(n, b * world, seed=7)
    ranks = [ResumableShardSampler(n, b, world, r, seed=7) for r in range(world)]
    single = list(one)
    shards = [list(s) for s in ranks]
    assert len(single) == 48  # 4 whole global batches of 12
    for k in range(4):
        block = set(single[12 * k : 12 * (k + 1)])
        assert set().union(*(s[b * k : b * (k + 1)] for s in shards)) == block
    assert len(set(single)) == 48
    # a new epoch is a different permutation, reproducible from the seed
    one.advance(4)
    assert one.epoch == 1 and one.position == 0
    again = ResumableShardSampler(n, b * world, seed=7)
    again.load_state_dict(one.state_dict())
    assert list(again) == list(one) != single
    # mid-epoch restore skips exactly the consumed batches
    mid = ResumableShardSampler(n, b, world, 1, seed=7)
    mid.advance(2)
    restored = ResumableShardSampler(n, b, world, 1, seed=7)
    restored.load_state_dict(mid.state_dict())
    assert list(restored) == shards[1][2 * b :]


class _DtypeProbe(ToyModel):
    """Records the dtype of the encoder's output during training forwards."""

    def __init__(self):
        super().__init__()
        self.seen: set[torch.dtype] = set()
        self.encoder.register_forward_hook(lambda m, i, o: self.seen.add(o.dtype))


@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_on_cpu(tmp_path, monkeypatch, native):
    # without native bf16 kernels (a Zen 3 / AVX2 CPU) autocast still works, emulated
    # and ~10x slower: the run says so, naming the CPU
    import warnings

    monkeypatch.setattr("boldgpt.engine.train.cpu_has_fast_bf16", lambda: native)
    probe = _DtypeProbe()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, _ = run(toy_config(tmp_path, train={"precision": "bf16", "max_steps": 3}), probe)
    slow = [w for w in caught if "without bf16 matmul kernels" in str(w.message)]
    assert len(slow) == (0 if native else 1)
    assert probe.seen == {torch.bfloat16}
    assert result.status == "finished" and math.isfinite(result.last_train_loss)
    # parameters and optimizer state stay float32 (autocast only changes the compute)
    assert all(p.dtype == torch.float32 for p in probe.parameters())


def test_fp16_needs_a_gpu(tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        run(toy_config(tmp_path, train={"precision": "fp16"}))


# ------------------------------------------------------------ Trainer, loader, batch hook


def test_trainer_state_dict_round_trip_rewinds_exactly(tmp_path):
    """state_dict() then load_state_dict() on the same Trainer rewinds it: the steps taken
    again (crossing an epoch boundary, with random masks from the restored RNG) give
    exactly the same parameters, optimizer moments and data position."""
    import copy

    from boldgpt.engine.train import Trainer

    torch.manual_seed(0)
    trainer = Trainer(config_from_dict(toy_config(tmp_path)), model=ToyModel(), data=toy_data())
    for _ in range(4):
        trainer.step()
    saved = copy.deepcopy(trainer.state_dict())
    assert saved["step"] == 4 and saved["data"]["position"] == 4 * 8  # samples

    def four_steps() -> tuple[dict, dict, dict]:
        for _ in range(4):  # 6 batches per epoch: steps 5..8 cross into epoch 1
            trainer.step()
        state = trainer.state_dict()
        params = {k: v.clone() for k, v in state["model"].items()}
        moments = {k: v["exp_avg"].clone() for k, v in state["optimizer"]["state"].items()}
        return params, moments, dict(state["data"])

    first = four_steps()
    trainer.load_state_dict(saved)
    assert trainer.global_step == 4
    again = four_steps()
    assert first[2] == again[2] and again[2]["epoch"] == 1
    for name, value in first[0].items():
        assert torch.equal(value, again[0][name]), name
    for key, value in first[1].items():
        assert torch.equal(value, again[1][key]), key
    assert not torch.equal(first[0]["decoder.weight"], saved["model"]["decoder.weight"])


class _PlainMaps(torch.utils.data.Dataset):
    """A dataset without ``__getitems__``: one sample at a time."""

    def __init__(self, n: int):
        self.values = torch.arange(n) * 10

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"value": self.values[i], "index": torch.tensor(i)}


def test_one_loader_factory_for_batched_and_plain_datasets():
    from boldgpt.data.loader import make_dataloader

    maps = ToyMaps(10, seed=4)
    batches = list(make_dataloader(maps, 4, sampler=[9, 0, 3, 5, 1]))
    assert [len(b["activity"]) for b in batches] == [4, 1]
    assert torch.equal(batches[0]["activity"], maps.activity[[9, 0, 3, 5]])
    assert torch.equal(batches[1]["subject_id"], maps.subject_id[[1]])

    plain = list(make_dataloader(_PlainMaps(5), 2, shuffle=False))
    assert [b["index"].tolist() for b in plain] == [[0, 1], [2, 3], [4]]
    assert plain[1]["value"].tolist() == [20, 30]

    # Starting an epoch draws from the loader's own generator, never the global stream
    # (a resumed run would drift otherwise); the order depends on the seed only.
    before = torch.get_rng_state()
    order = [b["index"].tolist() for b in make_dataloader(_PlainMaps(6), 6, seed=1)]
    assert torch.equal(torch.get_rng_state(), before)
    assert order == [b["index"].tolist() for b in make_dataloader(_PlainMaps(6), 6, seed=1)]
    assert sorted(order[0]) == list(range(6))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["imagebeit", "imagegpt"])
def test_image_model_trains_from_shipped_config(tmp_path, family):
    """`boldgpt train configs/<family>_micro.yaml debug=true` on a small dataset: the
    batch hook caches the stimuli at the model's image size, the model trains on them
    and is saved; the saved model reads 64 px images."""
    from boldgpt.cli import main
    from boldgpt.data.cache import CachedNSDFlat
    from boldgpt.data.transforms import prepare_batch
    from boldgpt.models.registry import load_model
    from nsd_tiny import build_tiny_nsd

    tiny = build_tiny_nsd(tmp_path / "nsd", subjects=(0,), sessions=2, trials_per_session=12)
    out_dir = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "configs" / f"{family}_micro.yaml"
    overrides = [
        "debug=true",
        f"out_dir={out_dir}",
        f"data.source={tiny.root}",
        f"data.cache_root={tmp_path / 'cache'}",
        "data.batch_size=4",
        "log.progress=false",
        "log.tensorboard=false",
    ]
    assert main(["train", str(config), *overrides]) == 0

    losses = [r["loss"] for r in read_log(out_dir) if r["split"] == "train"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    model = load_model(out_dir / "model")
    assert model.config.input_key == "image" and model.config.image_size == 64
    (cache_dir,) = [d for d in (tmp_path / "cache").iterdir() if (d / "COMPLETE").exists()]
    train_set = CachedNSDFlat(cache_dir, "train")
    assert train_set.images.shape[1:] == (64, 64, 3)  # cached at the model's size
    batch = prepare_batch({"image": train_set[:4]["image"]})
    torch.manual_seed(0)
    with torch.no_grad():
        assert math.isfinite(float(model(batch).loss))
    assert load_checkpoint(out_dir / "checkpoints" / "latest.pt")["step"] == 8


def _registry_model(num_subjects: int) -> nn.Module:
    """A small boldGPT over the toy maps' full (12, 12) mask in 4x4 patches."""
    from boldgpt.models.registry import create_model

    torch.manual_seed(0)
    return create_model(
        "boldgpt_micro_patch10",
        mask=np.ones((SIDE, SIDE), bool),
        patch_size=4,
        embed_dim=32,
        depth=1,
        num_heads=2,
        num_subjects=num_subjects,
    )


def test_subject_ids_are_checked_on_the_host_batch_before_the_forward(tmp_path):
    model = _registry_model(num_subjects=2)  # the toy maps have subjects 0..3
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(DataError, match=r"subject_id out of range: got values in \[0, 3\]"):
        train(config_from_dict(toy_config(tmp_path)), model=model, data=toy_data())
    assert calls == []  # refused before any forward pass


def test_fine_tuning_from_a_saved_model_directory(tmp_path):
    first, trained = run(toy_config(tmp_path / "a", train={"max_steps": 2}), _registry_model(4))
    assert first.model_dir == tmp_path / "a" / "model"
    # the model card says what the model was trained on and for how long
    card = json.loads((first.model_dir / "config.json").read_text())["card"]
    assert card["training_steps"] == 2 and card["data"].endswith("split train")
    assert "training steps: 2" in (first.model_dir / "README.md").read_text()
    cfg = toy_config(
        tmp_path / "b", train={"max_steps": 2}, model={"init_from": str(first.model_dir)}
    )
    from boldgpt.engine.train import Trainer

    trainer = Trainer(config_from_dict(cfg), data=toy_data())
    for name, value in trained.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    assert trainer.spec.keys == ("activity", "subject_id") and trainer.spec.num_subjects == 4
    assert trainer.fit().status == "finished"


def test_train_fraction_trains_on_a_seeded_subset_of_the_trials(tmp_path):
    from boldgpt.data.loader import fetch_batch
    from boldgpt.engine.train import load_train_data
    from nsd_tiny import build_tiny_nsd

    tiny = build_tiny_nsd(tmp_path / "nsd", subjects=(0,), sessions=2, trials_per_session=20)

    def data(fraction: float, seed: int = 0) -> TrainData:
        cfg = {
            "out_dir": str(tmp_path / "run"),
            "seed": seed,
            "data": {
                "source": str(tiny.root),
                "cache_root": str(tmp_path / "cache"),
                "train_fraction": fraction,
            },
        }
        return load_train_data(config_from_dict(cfg))

    full, quarter = data(1.0), data(0.25)
    n = len(full.train)
    trials = fetch_batch(full.train, list(range(n)))["trial_id"]
    picked = fetch_batch(quarter.train, list(range(len(quarter.train))))["trial_id"]
    assert len(picked) == round(0.25 * n) and len(set(picked.tolist())) == len(picked)
    assert set(picked.tolist()) <= set(trials.tolist())
    assert picked.tolist() == sorted(picked.tolist(), key=trials.tolist().index)  # row order
    again = fetch_batch(data(0.25).train, list(range(len(picked))))["trial_id"]
    assert torch.equal(again, picked)  # the seed fixes the subset
    other = fetch_batch(data(0.25, seed=1).train, list(range(len(picked))))["trial_id"]
    assert not torch.equal(other, picked)
    assert len(quarter.val) == len(full.val)  # validation stays whole
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="data.train_fraction must be in"):
            data(bad)
