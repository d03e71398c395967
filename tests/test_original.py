"""Loading checkpoints of the seed boldGPT project.

Parity: every fixture in $BOLDGPT_COMPAT_DIR (default ../shared/compat) made with the
original code is reproduced. The variants the fixtures may not cover (tokens, fixed
order, no subject embeddings, other orderings, registers) are checked against
`reference_forward`, the seed model's math written out independently below, which is
itself checked against the fixtures.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from boldgpt.cli import main as cli_main
from boldgpt.errors import CheckpointError
from boldgpt.models.original import load_original_checkpoint
from boldgpt.models.registry import load_model

REPO = Path(__file__).resolve().parents[1]
COMPAT_DIR = Path(os.environ.get("BOLDGPT_COMPAT_DIR", REPO / ".." / "shared" / "compat"))
FIXTURES = sorted(COMPAT_DIR.glob("*.safetensors")) if COMPAT_DIR.is_dir() else []


# ---- an independent reference of the seed model ------------------------------------


def ref_patchify(maps: torch.Tensor, mask: torch.Tensor, indices: torch.Tensor, p: int):
    """(B, H, W) -> (B, N, p*p) patches at ``indices`` of the padded grid, zero
    outside the mask; padding split evenly, the odd pixel at the end."""
    H, W = mask.shape
    ph, pw = -H % p, -W % p
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    x = F.pad(maps * mask, pad)
    m = F.pad(mask.float(), pad)
    gh, gw = x.shape[1] // p, x.shape[2] // p
    cut = lambda t: t.reshape(-1, gh, p, gw, p).transpose(2, 3).reshape(-1, gh * gw, p * p)  # noqa: E731
    return cut(x)[:, indices], cut(m[None])[0][indices] > 0


def ref_forward(state, arch, activity, subject_id, order=None):
    """(patches, output, loss) of the seed model, written out op by op."""
    s = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    p, H = arch["patch_size"], arch["num_heads"]
    patches, pmask = ref_patchify(
        activity.double(), s["patchify.mask"], s["patchify.patch_indices"], p
    )
    B, N, _ = patches.shape
    order = torch.arange(N).expand(B, N) if order is None else order
    seq = torch.stack([patches[b, order[b]] for b in range(B)])
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], s[n + ".weight"], s[n + ".bias"], 1e-5)  # noqa: E731
    lin = lambda x, n, bias=True: x @ s[n + ".weight"].T + (s[n + ".bias"] if bias else 0)  # noqa: E731
    x = lin(seq, "decoder.patch_embed") + s["decoder.pos_embed"][order]
    token = s["decoder.group_token"].expand(B, 1, -1)
    if "decoder.sub_embed" in s:
        token = token + s["decoder.sub_embed"][subject_id]
    x = torch.cat([token, x], 1)
    if "decoder.next_pos_query" in s:
        q = torch.cat(
            [s["decoder.next_pos_query"][order], s["decoder.eos_query"].expand(B, 1, -1)], 1
        )
        x = x + q
    L = x.shape[1]
    allowed = torch.ones(L, L, dtype=torch.bool).tril()
    if "decoder.reg_embed" in s:  # appended, global attention both ways
        R = s["decoder.reg_embed"].shape[0]
        x = torch.cat([x, s["decoder.reg_embed"].expand(B, -1, -1)], 1)
        allowed = torch.ones(L + R, L + R, dtype=torch.bool).tril()
        allowed[:, L:] = True
        allowed[L:, :] = True
    D = x.shape[-1]
    d = D // H
    depth = len({k.split(".")[2] for k in s if k.startswith("decoder.blocks.")})
    for i in range(depth):
        n = f"decoder.blocks.{i}"
        h = ln(x, n + ".norm1")
        T = h.shape[1]
        q = lin(h, n + ".attn.q", False).reshape(B, T, H, d).transpose(1, 2)
        kv = lin(h, n + ".attn.kv", False).reshape(B, T, 2, H, d)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) * d**-0.5
        att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        x = x + lin(y, n + ".attn.proj")
        h = ln(x, n + ".norm3")
        h = lin(h, n + ".mlp.fc1")
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + lin(h, n + ".mlp.fc2")
    x = ln(x[:, :L], "decoder.norm")
    out = lin(x, "decoder.head")[:, :N]
    if "tokenizer.vocab" in s:
        tokens = torch.cdist(seq.reshape(B * N, -1), s["tokenizer.vocab"]).argmin(-1)
        loss = F.cross_entropy(out.reshape(B * N, -1), tokens)
    else:
        m = torch.stack([pmask[order[b]] for b in range(B)]).double()
        loss = (m * (out - seq) ** 2).sum() / m.sum()
    return patches.float(), out.float(), loss.float()


def touched_patches(mask: np.ndarray, p: int) -> np.ndarray:
    H, W = mask.shape
    ph, pw = -H % p, -W % p
    m = np.pad(mask, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    gh, gw = m.shape[0] // p, m.shape[1] // p
    return np.flatnonzero(m.reshape(gh, p, gw, p).any(axis=(1, 3)))


def odd_mask(h: int = 43, w: int = 47) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - 20) / 18) ** 2 + ((xx - 24) / 21) ** 2 < 1


def make_original_state(arch: dict, ordering: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the seed project's layout (SPEC section 12)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: 0.3 * torch.randn(*shape, generator=g)  # noqa: E731
    mask = odd_mask()
    p, D, depth = arch["patch_size"], arch["embed_dim"], arch["depth"]
    idx = touched_patches(mask, p)
    if ordering == "random":
        idx = idx[np.random.default_rng(seed).permutation(len(idx))]
    N = len(idx)
    patch_mask = ref_patchify(torch.zeros(1, *mask.shape), torch.from_numpy(mask), idx, p)[1]
    categorical = arch.get("categorical", False)
    out_dim = arch["vocab_size"] if categorical else p * p
    s = {
        "patchify.mask": torch.from_numpy(mask),
        "patchify.patch_indices": torch.from_numpy(idx),
        "patchify.patch_mask": patch_mask,
        "patchify.order": torch.arange(N),
        "patchify.ranking": torch.arange(N),
        "decoder.group_token": r(1, 1, D),
        "decoder.pos_embed": r(N, D),
        "decoder.patch_embed.weight": r(D, p * p),
        "decoder.patch_embed.bias": r(D),
        "decoder.norm.weight": 1 + r(D),
        "decoder.norm.bias": r(D),
        "decoder.head.weight": r(out_dim, D),
        "decoder.head.bias": r(out_dim),
    }
    if arch.get("with_sub_embed", True):
        s["decoder.sub_embed"] = r(arch["num_subs"], 1, D)
    if arch.get("shuffle", True):
        s["decoder.next_pos_query"] = r(N, D)
        s["decoder.eos_query"] = r(1, D)
    if arch.get("num_registers"):
        s["decoder.reg_embed"] = r(arch["num_registers"], D)
    if categorical:
        s["tokenizer.vocab"] = r(arch["vocab_size"], p * p) * 3
    hidden = int(D * arch.get("mlp_ratio", 4.0))
    for i in range(depth):
        n = f"decoder.blocks.{i}"
        s.update(
            {
                f"{n}.norm1.weight": 1 + r(D),
                f"{n}.norm1.bias": r(D),
                f"{n}.norm3.weight": 1 + r(D),
                f"{n}.norm3.bias": r(D),
                f"{n}.attn.q.weight": r(D, D),
                f"{n}.attn.kv.weight": r(2 * D, D),
                f"{n}.attn.proj.weight": r(D, D),
                f"{n}.attn.proj.bias": r(D),
                f"{n}.mlp.fc1.weight": r(hidden, D),
                f"{n}.mlp.fc1.bias": r(hidden),
                f"{n}.mlp.fc2.weight": r(D, hidden),
                f"{n}.mlp.fc2.bias": r(D),
            }
        )
    return s


def model_outputs(model, activity, subject_id, order=None):
    batch = {"activity": activity, "subject_id": subject_id}
    with torch.no_grad():
        out = model(batch, order=order)
    return model.patchify(activity), out.output, out.loss


# ---- parity with the fixtures of the original code -----------------------------------


@pytest.fixture(scope="module", params=FIXTURES or [None], ids=lambda f: f.name if f else "none")
def fixture_file(request) -> Path:
    if request.param is None:
        pytest.skip(f"no parity fixtures in {COMPAT_DIR}")
    return request.param


def read_fixture(path: Path):
    tensors = load_file(str(path))
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("state.")}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        arch = json.loads(f.metadata()["architecture"])
    return tensors, state, arch


def test_fixture_parity(fixture_file):
    t = read_fixture(fixture_file)[0]
    model = load_original_checkpoint(fixture_file)
    patches, output, loss = model_outputs(
        model, t["input.activity"], t["input.subject_id"], t.get("input.order")
    )
    assert (patches - t["expected.patches"]).abs().max() <= 1e-4
    assert (output - t["expected.output"]).abs().max() <= 1e-4
    assert abs(loss.item() - t["expected.loss"].item()) <= 1e-4


def test_reference_reproduces_the_fixture(fixture_file):
    t, state, arch = read_fixture(fixture_file)
    patches, output, loss = ref_forward(
        state, arch, t["input.activity"], t["input.subject_id"], t.get("input.order")
    )
    assert (patches - t["expected.patches"]).abs().max() <= 1e-4
    assert (output - t["expected.output"]).abs().max() <= 1e-4
    assert abs(loss.item() - t["expected.loss"].item()) <= 1e-4


# ---- the variants, against the reference ----------------------------------------------

BASE = dict(patch_size=5, embed_dim=32, depth=2, num_heads=4, num_subs=5)
VARIANTS = {
    "cont_shuffled_radial": dict(BASE),
    "tokens_shuffled_random_order": dict(BASE, categorical=True, vocab_size=24),
    "cont_fixed_raster": dict(BASE, shuffle=False),
    "tokens_fixed_no_subjects": dict(
        BASE, categorical=True, vocab_size=24, shuffle=False, with_sub_embed=False
    ),
    "cont_shuffled_no_subjects_registers": dict(BASE, with_sub_embed=False, num_registers=2),
    "cont_mlp_ratio_2": dict(BASE, mlp_ratio=2.0),
}
ORDERINGS = {"cont_fixed_raster": "raster", "tokens_shuffled_random_order": "random"}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_match_the_reference(name, tmp_path):
    arch = VARIANTS[name]
    state = make_original_state(arch, ORDERINGS.get(name, "radial"))
    g = torch.Generator().manual_seed(1)
    mask = state["patchify.mask"]
    activity = torch.randn(3, *mask.shape, generator=g) * mask
    subject_id = torch.tensor([0, 4, 2])
    N = len(state["patchify.patch_indices"])
    order = None
    if arch.get("shuffle", True):
        order = torch.stack([torch.randperm(N, generator=g) for _ in range(3)])
    # through a file, the way fixtures are stored: state.* + architecture metadata
    path = tmp_path / f"{name}.safetensors"
    save_file(
        {f"state.{k}": v.contiguous() for k, v in state.items()},
        str(path),
        metadata={"architecture": json.dumps(arch)},
    )
    model = load_original_checkpoint(path)
    assert torch.equal(model.patchify.patch_indices, state["patchify.patch_indices"])
    got = model_outputs(model, activity, subject_id, order)
    expected = ref_forward(state, arch, activity, subject_id, order)
    for a, b in zip(got, expected):
        assert (a - b).abs().max() <= 1e-4


def test_state_dict_with_architecture_argument_and_pt_file(tmp_path):
    arch = VARIANTS["tokens_shuffled_random_order"]
    state = make_original_state(arch, "random", seed=3)
    state.pop("patchify.patch_mask")  # derived: recomputed when absent
    activity = torch.randn(2, 43, 47) * state["patchify.mask"]
    sid = torch.tensor([1, 3])
    expected = ref_forward(state, arch, activity, sid)
    from_dict = load_original_checkpoint(state, architecture=arch)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "step": 10}, path)
    from_pt = load_original_checkpoint(path, architecture=json.dumps(arch))
    for model in (from_dict, from_pt):
        got = model_outputs(model, activity, sid)
        assert (got[1] - expected[1]).abs().max() <= 1e-4


def test_architecture_inferred_from_shapes_with_a_warning_for_heads():
    arch = dict(BASE, embed_dim=128, num_heads=2)
    state = make_original_state(arch, "radial")
    with pytest.warns(UserWarning, match="assuming 2 heads"):
        model = load_original_checkpoint(state)
    c = model.config
    assert (c.embed_dim, c.depth, c.num_subjects, c.patch_size) == (128, 2, 5, 5)
    activity = torch.randn(1, 43, 47) * state["patchify.mask"]
    expected = ref_forward(state, arch, activity, torch.tensor([2]))
    got = model_outputs(model, activity, torch.tensor([2]))
    assert (got[1] - expected[1]).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "arch_change, state_change, match",
    [
        (dict(embed_dim=48), None, r"decoder\.\S+ has shape .* expects"),
        (
            dict(num_subs=8),
            None,
            r"decoder\.sub_embed has shape \(5, 1, 32\).*num_subs=8.*\(8, 1, 32\)",
        ),
        (dict(depth=3), None, r"missing key decoder\.blocks\.2\."),
        (
            dict(categorical=True, vocab_size=24),
            None,
            r"decoder\.head\.weight has shape \(25, 32\).*categorical=True.*expects \(24, 32\)",
        ),
        (dict(mlp_ratio=2.0), None, r"decoder\.blocks\.0\.mlp\.fc1\.weight has shape \(128, 32\)"),
        (
            None,
            lambda s: s.update({"decoder.extra": torch.zeros(2)}),
            r"unexpected key decoder\.extra",
        ),
        (None, lambda s: s.pop("patchify.patch_indices"), r"patchify\.patch_indices"),
        (None, lambda s: s["patchify.patch_mask"][0].zero_(), r"patch_mask differs"),
        (None, lambda s: s.pop("decoder.group_token"), "not a boldGPT checkpoint"),
    ],
)
def test_mismatched_checkpoints_raise_checkpoint_errors(arch_change, state_change, match):
    arch = dict(VARIANTS["cont_shuffled_radial"])
    state = make_original_state(arch, "radial")
    arch.update(arch_change or {})
    if state_change:
        state_change(state)
    with pytest.raises(CheckpointError, match=match):
        load_original_checkpoint(state, architecture=arch)


def test_unreadable_files_raise(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_original_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_original_checkpoint(tmp_path / "missing.pt")


def test_cli_convert_original_writes_a_loadable_model(tmp_path, capsys):
    arch = VARIANTS["tokens_fixed_no_subjects"]
    state = make_original_state(arch, "radial", seed=5)
    ckpt = tmp_path / "orig.pt"
    torch.save(state, ckpt)
    out_dir = tmp_path / "converted"
    code = cli_main(
        ["convert-original", str(ckpt), str(out_dir), "--architecture", json.dumps(arch)]
    )
    assert code == 0
    assert "IGPT tokens" in capsys.readouterr().out
    model = load_model(out_dir)
    activity = torch.randn(2, 43, 47) * state["patchify.mask"]
    expected = ref_forward(state, arch, activity, None)
    got = model_outputs(model, activity, None)
    assert (got[1] - expected[1]).abs().max() <= 1e-4
    # an existing, non-empty output directory is not replaced without --force
    assert (
        cli_main(["convert-original", str(ckpt), str(out_dir), "--architecture", json.dumps(arch)])
        == 2
    )
    assert "--force" in capsys.readouterr().err
    # a directory holding just an original checkpoint (with its architecture) loads directly
    lone = tmp_path / "lone"
    lone.mkdir()
    torch.save({"model": state, "architecture": arch}, lone / "orig.pth")
    got = model_outputs(load_model(lone), activity, None)
    assert (got[1] - expected[1]).abs().max() <= 1e-4
