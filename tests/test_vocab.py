"""`boldgpt fit-vocab` and the tokenizer's file format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boldgpt.cli import main
from boldgpt.errors import CheckpointError
from boldgpt.patching import MaskedPatchify
from boldgpt.tokenizer import KMeansTokenizer, interior_patches, load_tokenizer, save_tokenizer
from nsd_tiny import build_tiny_nsd


def test_encode_picks_the_nearest_centroid_and_decode_returns_it():
    tok = KMeansTokenizer(3, 2)
    tok.vocab.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    patches = torch.tensor([[[1.0, 1.0], [9.0, -1.0], [-1.0, 7.0], [4.0, 0.0]]])
    assert tok.encode(patches).tolist() == [[0, 1, 2, 0]]
    assert torch.equal(tok.decode(torch.tensor([2, 1])), tok.vocab[[2, 1]])


def test_fit_finds_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [-5.0, -5.0, 0]])
    labels = torch.randint(0, 4, (2000,), generator=g)
    x = centres[labels] + 0.1 * torch.randn(2000, 3, generator=g)
    tok = KMeansTokenizer(4, 3).fit(x)
    # every true centre has a vocabulary entry next to it, and tokens recover clusters
    dist = torch.cdist(centres, tok.vocab)
    assert dist.min(dim=1).values.max() < 0.1
    assigned = tok.encode(x)
    for k in range(4):
        assert len(torch.unique(assigned[labels == k])) == 1


def test_cli_fits_and_writes_a_loadable_vocabulary_and_picture(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLDGPT_HOME", str(tmp_path / "home"))
    tiny = build_tiny_nsd(tmp_path / "nsd", with_mask=True, sessions=3, trials_per_session=24)
    out = tmp_path / "vocab.safetensors"
    code = main(
        [
            "fit-vocab", "--source", str(tiny.root), "--out", str(out), "--vocab-size", "16",
            "--patch-size", "4", "--maps", "50", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    tok, meta = load_tokenizer(out)
    assert tok.vocab.shape == (16, 16)
    assert meta["patch_size"] == "4" and meta["source"] == str(tiny.root)
    assert out.with_suffix(".png").stat().st_size > 1000
    # the vocabulary quantizes the interior patches of the data much better than
    # their mean would (a fitted, not a random, vocabulary)
    maps = torch.from_numpy(tiny.maps["train"].astype(np.float32) * 5 / 255 - 2.5)
    patches = interior_patches(maps, MaskedPatchify(tiny.mask, 4))
    err = (tok.decode(tok.encode(patches)) - patches).pow(2).sum()
    assert err < 0.8 * (patches - patches.mean(0)).pow(2).sum()


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"vocab": torch.zeros(2, 2)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="not a boldgpt vocabulary"):
        load_tokenizer(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.safetensors")
    tok = KMeansTokenizer(2, 2)
    save_tokenizer(tok, tmp_path / "ok.safetensors", patch_size=1)
    assert load_tokenizer(tmp_path / "ok.safetensors")[1]["patch_size"] == "1"
