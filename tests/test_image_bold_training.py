"""The training engine with the image↔BOLD families (CBIP, image2bold, bold2image):
their example figures (boldgpt.viz.image_bold, picked by family through
boldgpt.viz.train.EXAMPLE_FIGURES), model.init_from of a pretrained boldGPT map model
into a new family (with freezing), and the model's own image normalisation."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from boldgpt.data.loader import fetch_batch
from boldgpt.data.transforms import prepare_images
from boldgpt.engine.config import config_from_dict
from boldgpt.engine.train import INIT_FILE, Trainer, derange_pictures
from boldgpt.errors import CheckpointError, ConfigError
from boldgpt.models.registry import create_model, save_model
from boldgpt.viz.image_bold import correlation, display_images, retrieval_ranking
from boldgpt.viz.train import EXAMPLE_FIGURES, example_figure_drawer
from image_bold import paired_batch, small_model

SMALL = dict(depth=1, embed_dim=32, num_heads=2)
SIZE = 32
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny NSD-Flat copy with pictures (its mask saved beside it), a small saved
    image encoder at SIZE px and a shared cache directory."""
    from nsd_tiny import build_tiny_nsd

    root = tmp_path_factory.mktemp("image_bold")
    data = build_tiny_nsd(
        root / "nsd", subjects=(0,), sessions=2, trials_per_session=12, with_mask=True
    )
    torch.manual_seed(0)
    encoder = save_model(
        create_model("imagebeit_micro_patch16", image_size=SIZE, **SMALL), root / "encoder"
    )
    return types.SimpleNamespace(data=data, encoder=encoder, cache=root / "cache")


def overrides(tiny, out_dir: Path, family: str) -> list[str]:
    """CLI overrides shrinking configs/<family>_micro.yaml to the tiny data."""
    args = [
        f"out_dir={out_dir}",
        f"data.source={tiny.data.root}",
        f"data.cache_root={tiny.cache}",
        "data.batch_size=4",
        "log.progress=false",
        "log.tensorboard=false",
        f"model.kwargs.image_size={SIZE}",
        *[f"model.kwargs.{k}={v}" for k, v in SMALL.items()],
    ]
    if family == "bold2image":
        args.append("model.kwargs.image_patch_size=8")
    else:
        args.append(f"model.kwargs.image_encoder={tiny.encoder}")
    return args


# ------------------------------------------------------------------- figure helpers


def test_display_images_undo_the_normalisation():
    raw = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    shown = display_images(prepare_images(raw, mean=mean, std=std), (mean, std))
    np.testing.assert_allclose(shown, raw.numpy() / 255.0, atol=1e-6)


def test_correlation_matches_numpy_and_ignores_nan():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert correlation(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    a[3] = np.nan
    keep = np.arange(50) != 3
    assert correlation(a, b) == pytest.approx(np.corrcoef(a[keep], b[keep])[0, 1])
    assert np.isnan(correlation(np.ones(5), b[:5]))


def test_retrieval_ranking_by_cosine_with_one_candidate_per_stimulus():
    # trial 0 and 2 show stimulus 7: one candidate (trial 0); cosine, not dot product
    image = torch.tensor([[1.0, 0.0], [0.0, 10.0], [1.0, 0.0], [1.0, 1.0]])
    bold = torch.tensor([[2.0, 0.1], [0.0, 1.0], [1.0, 0.0], [1.0, 1.2]])
    stimulus = torch.tensor([7, 3, 7, 5])
    candidates, truth, sim, ranking = retrieval_ranking(bold, image, stimulus)
    assert candidates == [0, 1, 3] and truth == [0, 1, 0, 2]
    s2 = 1 / np.sqrt(2)
    assert sim[2].tolist() == pytest.approx([1.0, 0.0, s2])
    assert ranking[2].tolist() == [0, 2, 1]
    assert ranking[1].tolist() == [1, 2, 0]
    assert ranking[3].tolist() == [2, 1, 0]  # (1, 1.2) is nearer (0, 1) than (1, 0)


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in (*ax.texts, ax.xaxis.label, ax.title)]


def test_cbip_figure_shows_the_batch_ranking_and_marks_the_true_picture():
    from boldgpt.viz.image_bold import cbip_examples_figure

    encoder = {"image_size": SIZE, "image_encoder": "imagebeit_micro_patch16"}
    model = small_model("cbip_micro_patch10", **encoder).eval()
    batch = paired_batch(4, SIZE, nsd_id=torch.tensor([3, 5, 3, 9]))  # 3 distinct pictures
    fig = cbip_examples_figure(model, batch)
    titles = [ax.get_title() for ax in fig.axes[:5]]
    assert titles == ["map", "true image", "retrieved #1", "retrieved #2", "retrieved #3"]
    with torch.no_grad():
        bold = torch.nn.functional.normalize(
            model.encode_bold(batch["activity"], batch["subject_id"]), dim=-1
        )
        image = torch.nn.functional.normalize(model.image_encoder(batch["image"]).pooled, dim=-1)
    sim = bold @ image[[0, 1, 3]].T  # candidates: first trial of 3, 5, 9
    labels = [ax.xaxis.label.get_text() for ax in fig.axes]
    for i, truth in enumerate([0, 1, 0, 2]):
        row = labels[5 * i + 2 : 5 * i + 5]
        best = sim[i].argsort(descending=True).tolist()
        assert row == [f"cos={float(sim[i, u]):.2f}" + (" ✓" if u == truth else "") for u in best]


def test_image2bold_figure_labels_the_one_pass_prediction_with_its_correlation():
    from boldgpt.generate import complete
    from boldgpt.viz.image_bold import image2bold_examples_figure

    encoder = {"image_size": SIZE, "image_encoder": "imagebeit_micro_patch16"}
    model = small_model("image2bold_micro_patch10", **encoder).eval()
    batch = paired_batch(2, SIZE, seed=1)
    fig = image2bold_examples_figure(model, batch)
    p = model.patchify
    with torch.no_grad():
        empty = torch.zeros(2, p.num_patches, dtype=torch.bool)
        patches = complete(
            model, torch.zeros(2, p.num_patches, p.dim), empty, subject_id=batch["subject_id"],
            context=model.image_encoder(batch["image"]).tokens, method="query",
        )  # fmt: skip
    pred, mask = p.inverse(patches).numpy(), p.mask.numpy()
    for i in range(2):
        r = np.corrcoef(pred[i][mask], batch["activity"][i].numpy()[mask])[0, 1]
        assert fig.axes[3 * i + 2].texts[0].get_text() == f"r={r:.2f}"


def test_families_are_drawn_through_one_table_and_unknown_ones_are_none():
    for name in ("boldgpt_micro_patch10", "cbip_micro_patch10"):
        family = "IGPT" if name.startswith("boldgpt") else "CBIP"
        assert family in EXAMPLE_FIGURES
    model = create_model("boldgpt_micro_patch10", mask="sim", **SMALL)
    assert example_figure_drawer(model) is EXAMPLE_FIGURES["IGPT"]
    assert example_figure_drawer(nn.Linear(2, 2)) is None  # no registry config
    image_model = create_model("imagebeit_micro_patch16", image_size=SIZE, **SMALL)
    assert example_figure_drawer(image_model) is None  # its examples are not maps


# ------------------------------------------------------------- engine: debug figures


@pytest.mark.slow
@pytest.mark.parametrize("family", ["cbip", "image2bold", "bold2image"])
def test_debug_run_draws_the_family_figure(tmp_path, tiny, family):
    """`boldgpt train configs/<family>_micro.yaml debug=true` (8 steps) writes the
    family's example figure and names it in the log."""
    from boldgpt.cli import main

    args = [*overrides(tiny, tmp_path / "run", family), "debug=true"]
    assert main(["train", str(CONFIGS / f"{family}_micro.yaml"), *args]) == 0
    figures = sorted((tmp_path / "run" / "figures").glob("*.png"))
    assert [f.name for f in figures] == ["examples-step0000004.png", "examples-step0000008.png"]
    from PIL import Image

    pixels = np.asarray(Image.open(figures[0]).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # maps and pictures drawn


def test_a_family_without_a_figure_is_skipped_with_one_log_line(tmp_path, capsys):
    from test_train import toy_config, toy_data

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, batch):
            return types.SimpleNamespace(loss=(self.w - 1) ** 2)

    cfg = toy_config(tmp_path, train={"max_steps": 2}, log={"figures_every": 1})
    result = Trainer(config_from_dict(cfg), model=Toy(), data=toy_data()).fit()
    assert result.status == "finished"
    err = capsys.readouterr().err
    assert err.count("no example figures: boldgpt.viz has none for Toy models") == 1
    assert not (tmp_path / "figures").exists()


# --------------------------------------------------------------- engine: init_from


def cbip_config(tiny, out_dir: Path, init_from: Path, **model: object) -> dict:
    cfg = {
        "out_dir": str(out_dir),
        "data": {"source": str(tiny.data.root), "cache_root": str(tiny.cache), "batch_size": 4},
        "model": {
            "name": "cbip_micro_patch10",
            "init_from": str(init_from),
            "kwargs": {**SMALL, "image_size": SIZE, "image_encoder": str(tiny.encoder)},
            **model,
        },
        "optim": {"warmup_steps": 1},
        "train": {"max_steps": 2, "eval_every": 2, "eval_batches": 1},
        "log": {"every": 1, "progress": False, "tensorboard": False, "figures_every": 0},
    }
    return cfg


@pytest.mark.slow
def test_cbip_starts_from_a_saved_boldgpt_model_and_trains(tmp_path, tiny):
    torch.manual_seed(1)
    source = create_model("boldgpt_micro_patch10", mask=tiny.data.mask, **SMALL, num_subjects=8)
    source_dir = save_model(source, tmp_path / "boldgpt")
    frozen = "backbone.blocks.0.*"
    cfg = cbip_config(tiny, tmp_path / "run", source_dir, freeze=[frozen])
    trainer = Trainer(config_from_dict(cfg))
    model, src = trainer.model, source.state_dict()
    assert type(model).__name__ == "CBIP"
    state = model.state_dict()
    shared = [k for k in src if k in state and src[k].shape == state[k].shape]
    loaded = [k for k in shared if not k.startswith(("patchify.", "head.", "residual_cov"))]
    assert "backbone.pos_embed" in loaded and "backbone.blocks.0.attn.q.weight" in loaded
    for key in loaded:  # step 0: the source's tensors (same mask, same patch order)
        assert torch.equal(state[key], src[key]), key
    report = (tmp_path / "run" / INIT_FILE).read_text().splitlines()
    assert report[0].startswith(f"init_from {source_dir}: {len(loaded)} tensors loaded")
    assert {line.split()[1] for line in report if line.startswith("  loaded")} == set(loaded)
    assert "  new     head.weight" in report
    assert any(line.startswith("  skipped head.weight: name") for line in report)
    blocks0 = {k: v.clone() for k, v in state.items() if k.startswith("backbone.blocks.0.")}
    pos = state["backbone.pos_embed"].clone()
    assert trainer.fit().status == "finished"
    after = trainer.model.state_dict()
    for key, value in blocks0.items():  # frozen by pattern: still the source's
        assert torch.equal(after[key], value), key
    assert not torch.equal(after["backbone.pos_embed"], pos)  # the rest trains


def test_cbip_init_from_a_map_model_over_another_mask_fails_before_training(tmp_path, tiny):
    other = np.zeros_like(tiny.data.mask)
    other[40:120, 30:170] = True
    source_dir = save_model(
        create_model("boldgpt_micro_patch10", mask=other, **SMALL), tmp_path / "boldgpt"
    )
    with pytest.raises(CheckpointError, match="another mask"):
        Trainer(config_from_dict(cbip_config(tiny, tmp_path / "run", source_dir)))
    assert not (tmp_path / "run" / "log.jsonl").exists()  # refused before the run began


# ------------------------------------------------------------ image normalisation


class FakeImageModel(nn.Module):
    """Reads images only and asks for its own normalisation (like a timm encoder)."""

    image_normalization = ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))

    def __init__(self) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(batch_keys=("image",), image_size=SIZE)
        self.w = nn.Parameter(torch.zeros(()))


def test_engine_batches_use_the_models_image_normalisation(tmp_path, tiny):
    cfg = cbip_config(tiny, tmp_path / "run", tiny.encoder)
    del cfg["model"]
    trainer = Trainer(config_from_dict(cfg), model=FakeImageModel())
    assert trainer.spec.image_normalization == FakeImageModel.image_normalization
    raw = fetch_batch(trainer.data.train, [0, 1])
    image = trainer._prepare(raw)["image"]
    x = raw["image"].float().permute(0, 3, 1, 2) / 255  # (B, 3, S, S) in [0, 1]
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    std = torch.tensor([0.25, 0.5, 1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(image, (x - mean) / std)


# ------------------------------------------------- data.shuffle_pairs (the control)


def test_derange_pictures_gives_every_stimulus_another_ones_picture():
    rows = np.array([5, 5, 2, 7, 2, 9, 5, 7])  # picture row of each map; 5 is seen 3 times
    moved = derange_pictures(rows, seed=3)
    assert (moved != rows).all()  # no map keeps its own picture
    for stimulus in (5, 2, 7, 9):  # every repeat of a stimulus gets one same picture
        assert len(set(moved[rows == stimulus])) == 1
    # each picture of the rows now belongs to exactly one other stimulus
    given = {int(s): int(moved[rows == s][0]) for s in (2, 5, 7, 9)}
    assert sorted(given.values()) == [2, 5, 7, 9]
    np.testing.assert_array_equal(derange_pictures(rows, seed=3), moved)  # seeded
    assert any((derange_pictures(rows, seed=s) != moved).any() for s in range(4, 10))


def test_shuffle_pairs_changes_the_training_pictures_only(tmp_path, tiny):
    def data(shuffle: bool):
        cfg = cbip_config(tiny, tmp_path / f"run{shuffle}", tiny.encoder)
        del cfg["model"]["init_from"]
        cfg["data"]["shuffle_pairs"] = shuffle
        return Trainer(config_from_dict(cfg)).data

    true, shuffled = data(False), data(True)
    t, s = true.train.image_index, shuffled.train.image_index
    np.testing.assert_array_equal(s, derange_pictures(t, seed=0))
    rows = list(range(len(true.train)))
    real, swapped = fetch_batch(true.train, rows), fetch_batch(shuffled.train, rows)
    np.testing.assert_array_equal(real["activity"], swapped["activity"])
    np.testing.assert_array_equal(real["nsd_id"], swapped["nsd_id"])
    differ = (real["image"] != swapped["image"]).flatten(1).any(1)
    assert differ.all()  # (distinct stimuli have distinct pictures in the tiny data)
    np.testing.assert_array_equal(true.val.image_index, shuffled.val.image_index)


def test_shuffle_pairs_refuses_a_model_without_pictures(tmp_path, tiny):
    cfg = cbip_config(tiny, tmp_path / "run", tiny.encoder)
    cfg["model"] = {"name": "boldgpt_micro_patch10", "kwargs": SMALL}
    cfg["data"]["shuffle_pairs"] = True
    with pytest.raises(ConfigError, match="data.shuffle_pairs=true needs a model that reads"):
        Trainer(config_from_dict(cfg))
