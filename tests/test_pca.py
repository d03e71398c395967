import numpy as np
import pytest
import torch

from boldgpt.errors import CheckpointError, DataError
from boldgpt.models.pca import MaskedPCA, load_pca, save_pca
from boldgpt.patching import MaskedPatchify, permute, random_order


def _mask():
    mask = np.zeros((20, 24), dtype=bool)
    mask[2:18, 3:11] = True
    mask[5:16, 14:22] = True
    return mask


def _low_rank_maps(n: int, rank: int = 5, noise: float = 0.0, seed: int = 0):
    """Maps = mean + rank-r structure (+ noise); the ground truth is built by hand."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.from_numpy(_mask())
    basis = torch.randn(rank, 20, 24, generator=g)
    coefs = torch.randn(n, rank, generator=g) * torch.linspace(3, 1, rank)
    mean = torch.randn(20, 24, generator=g)
    maps = mean + torch.einsum("nr,rhw->nhw", coefs, basis)
    maps = maps + noise * torch.randn(n, 20, 24, generator=g)
    return maps * mask, basis * mask


def test_fit_recovers_low_rank_subspace_and_reconstructs_exactly():
    maps, basis = _low_rank_maps(200, rank=5)
    pca = MaskedPCA(_mask(), n_components=5).fit(maps)
    mask = torch.from_numpy(_mask())
    # components span the true basis: projecting the basis onto them loses nothing
    b = basis[:, mask]
    proj = b @ pca.components.T @ pca.components
    torch.testing.assert_close(proj, b, atol=1e-3, rtol=1e-3)
    # orthonormal rows
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(5), atol=1e-4, rtol=0)
    recon = pca.decode(pca.encode(maps))
    torch.testing.assert_close(recon, maps, atol=1e-3, rtol=1e-3)
    assert torch.all(recon[:, ~mask] == 0)
    # explained variance is sorted and sums to the total variance (exact low rank)
    x = maps[:, mask]
    total = x.var(dim=0).sum()
    assert torch.all(pca.explained_variance[:-1] >= pca.explained_variance[1:])
    torch.testing.assert_close(pca.explained_variance.sum(), total, rtol=1e-3, atol=0)


def test_encode_partial_matches_least_squares_on_observed_pixels():
    maps, _ = _low_rank_maps(300, rank=6, noise=0.05)
    pca = MaskedPCA(_mask(), n_components=6).fit(maps)
    observed = torch.zeros(20, 24, dtype=torch.bool)
    observed[:, :12] = True  # the left blob only
    z = pca.encode_partial(maps[:4], observed, alpha=0.0)
    # reference: ordinary least squares with numpy on the observed in-mask pixels
    mask = _mask()
    obs = observed.numpy()[mask]
    c = pca.components.numpy()[:, obs].T
    y = (maps[:4].numpy()[:, mask] - pca.mean.numpy())[:, obs]
    ref = np.linalg.lstsq(c, y.T, rcond=None)[0].T
    np.testing.assert_allclose(z.numpy(), ref, atol=1e-3)
    # the per-sample form gives the same answer as the shared form
    z_b = pca.encode_partial(maps[:4], observed.expand(4, -1, -1), alpha=0.0)
    torch.testing.assert_close(z_b, z, atol=1e-4, rtol=1e-4)
    # nothing observed: the prior mean (zero coefficients)
    z0 = pca.encode_partial(maps[:2], torch.zeros(20, 24, dtype=torch.bool))
    assert torch.all(z0 == 0)


def test_prior_ridge_shrinks_towards_zero_with_few_observations():
    maps, _ = _low_rank_maps(300, rank=6, noise=0.3)
    pca = MaskedPCA(_mask(), n_components=6).fit(maps)
    observed = torch.zeros(20, 24, dtype=torch.bool)
    observed[2:4, 3:5] = True  # 4 pixels for 6 unknowns: OLS would be ill posed
    z = pca.encode_partial(maps[:8], observed)
    assert torch.isfinite(z).all()
    assert z.norm() < pca.encode(maps[:8]).norm()


def _brute_force_next_patch(pca, maps, patchify, order):
    """Reference: for each step, a fresh encode_partial on the observed patches."""
    B, N = order.shape
    out = torch.zeros(B, N, patchify.dim)
    slot_maps = patchify.inverse_values(torch.arange(N, dtype=torch.float32)[None])[0]
    for b in range(B):
        for t in range(N):
            seen = order[b, :t]
            observed = torch.isin(slot_maps, seen.float()) & patchify.mask
            z = pca.encode_partial(maps[b : b + 1], observed)
            pred = patchify(pca.decode(z))[0, order[b, t]]
            out[b, t] = pred
    return out


def test_next_patch_predictions_match_brute_force_for_shared_and_per_sample_orders():
    maps, _ = _low_rank_maps(300, rank=6, noise=0.1)
    pca = MaskedPCA(_mask(), n_components=6).fit(maps)
    patchify = MaskedPatchify(_mask(), 4, ordering="radial")
    x = maps[:3]
    order, _ = random_order(3, patchify.num_patches, generator=torch.Generator().manual_seed(1))
    per_sample = pca.next_patch_predictions(x, patchify, order, chunk_size=2)
    ref = _brute_force_next_patch(pca, x, patchify, order)
    torch.testing.assert_close(per_sample, ref, atol=1e-3, rtol=1e-3)

    fixed = pca.next_patch_predictions(x, patchify)  # fixed order
    shared = order[0].expand(3, -1)
    ref_fixed = _brute_force_next_patch(
        pca, x, patchify, torch.arange(patchify.num_patches).expand(3, -1)
    )
    torch.testing.assert_close(fixed, ref_fixed, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(
        pca.next_patch_predictions(x, patchify, order[0]),
        pca.next_patch_predictions(x, patchify, shared),
        atol=1e-4,
        rtol=1e-4,
    )
    # the first prediction knows nothing: it is the mean patch
    mean_patches = patchify(pca.decode(torch.zeros(1, 6)))[0]
    torch.testing.assert_close(per_sample[:, 0], mean_patches[order[:, 0]], atol=1e-5, rtol=0)
    # later predictions beat the mean on in-span data
    target = permute(patchify(x), order)
    err_pca = (per_sample[:, 10:] - target[:, 10:]).pow(2).mean()
    err_mean = (mean_patches[order[:, 10:]] - target[:, 10:]).pow(2).mean()
    assert err_pca < 0.5 * err_mean


def test_save_load_roundtrip_and_errors(tmp_path):
    maps, _ = _low_rank_maps(100, rank=4)
    pca = MaskedPCA(_mask(), n_components=4).fit(maps)
    save_pca(pca, tmp_path / "pca.safetensors")
    loaded = load_pca(tmp_path / "pca.safetensors")
    assert torch.equal(loaded.encode(maps), pca.encode(maps))
    with pytest.raises(DataError, match=r"\(B, 20, 24\)"):
        pca.encode(torch.zeros(2, 21, 24))
    bad = maps[:2].clone()
    bad[0, 5, 5] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        pca.encode(bad)
    with pytest.raises(RuntimeError, match="not fitted"):
        MaskedPCA(_mask(), 3).encode(maps)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not a boldgpt MaskedPCA"):
        load_pca(tmp_path / "other.safetensors")


def _big_mask():
    mask = np.zeros((40, 48), dtype=bool)
    mask[4:36, 6:22] = True
    mask[10:32, 28:44] = True
    return mask


def _maps_with_correlated_noise(n: int, seed: int):
    """Low-rank signal plus spatially smooth noise, fewer maps than pixels: the hard
    case for the plain PPCA posterior (noise-fitted components look like signal)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(3, 40, 48, generator=torch.Generator().manual_seed(99))
    signal = torch.einsum("nr,rhw->nhw", torch.randn(n, 3, generator=g), basis)
    noise = torch.randn(n, 1, 40, 48, generator=g)
    noise = torch.nn.functional.conv2d(noise, torch.ones(1, 1, 7, 7) / 7, padding=3)[:, 0]
    return (signal + 2.0 * noise) * torch.from_numpy(_big_mask())


def test_calibrated_prior_predicts_new_maps_better_than_the_plain_posterior():
    train = _maps_with_correlated_noise(240, seed=0)  # 240 maps, 864 pixels
    test = _maps_with_correlated_noise(64, seed=1)
    pca = MaskedPCA(_big_mask(), n_components=60).fit(train)
    beta = float(pca.prior_scale)
    patchify = MaskedPatchify(_big_mask(), 4, ordering="random")
    weight = patchify.patch_mask.float()

    def error() -> float:
        pred = pca.next_patch_predictions(test, patchify)
        return float(((pred - patchify(test)).square() * weight).sum())

    calibrated = error()
    pca.prior_scale.fill_(1.0)
    assert beta > 1.0 and calibrated < 0.95 * error()
    # the scale travels with the weights
    pca.prior_scale.fill_(beta)
    loaded = MaskedPCA(_big_mask(), 60)
    loaded.load_state_dict(pca.state_dict())
    assert float(loaded.prior_scale) == beta
