import numpy as np
import pytest
import torch

from boldgpt.patching import (
    MaskedPatchify,
    infer_padding,
    mixed_orders,
    num_patches,
    permute,
    random_order,
    unpermute,
)


def test_padding_splits_evenly_with_extra_pixel_at_end():
    # 215 rows -> 220: 2 on top, 3 at the bottom; 200 columns need none.
    assert infer_padding(215, 200, 10) == (0, 0, 2, 3)
    assert infer_padding(215, 200, 16) == (4, 4, 4, 5)


def test_real_mask_patch_counts(nsd_mask):
    assert num_patches(nsd_mask, 10) == (253, 126)
    assert num_patches(nsd_mask, 16)[0] == 114


@pytest.mark.parametrize("ordering", ["raster", "radial", "reverse_radial", "random"])
def test_real_mask_roundtrip_exact_inside_mask(nsd_mask, ordering):
    patchify = MaskedPatchify(nsd_mask, 10, ordering=ordering)
    x = torch.randn(3, 215, 200)
    maps = patchify.inverse(patchify(x))
    m = torch.from_numpy(nsd_mask)
    assert torch.equal(maps[:, m], x[:, m])
    assert torch.all(maps[:, ~m] == 0)


def test_patches_are_zero_outside_mask_and_cover_every_mask_pixel(nsd_mask):
    patchify = MaskedPatchify(nsd_mask, 16, ordering="raster")
    x = torch.randn(2, 215, 200) + 10.0  # no zeros inside the mask
    patches = patchify(x)
    assert torch.all(patches[:, ~patchify.patch_mask] == 0)
    assert int(patchify.patch_mask.sum()) == int(nsd_mask.sum())
    assert torch.all(patches[:, patchify.patch_mask] != 0)


def _toy_mask():
    mask = np.zeros((23, 31), dtype=bool)
    mask[3:20, 5:12] = True
    mask[8:15, 18:29] = True
    return mask


def test_orderings_are_permutations_of_the_same_patches():
    mask = _toy_mask()
    sets = {
        o: MaskedPatchify(mask, 4, ordering=o).patch_indices
        for o in ["raster", "radial", "reverse_radial", "random"]
    }
    raster = sets["raster"]
    assert torch.all(raster[1:] > raster[:-1])
    for idx in sets.values():
        assert sorted(idx.tolist()) == raster.tolist()
    assert torch.equal(sets["reverse_radial"], sets["radial"].flip(0)) or not torch.equal(
        sets["radial"], raster
    )


def test_radial_order_starts_near_centroid_and_ends_far():
    mask = _toy_mask()
    p = MaskedPatchify(mask, 4, ordering="radial")
    ys, xs = np.nonzero(mask)
    centroid = np.array([ys.mean(), xs.mean()])
    order_map = p.inverse_values(torch.arange(p.num_patches, dtype=torch.float32)[None])[0]
    first = np.argwhere((order_map == 0).numpy() & mask).mean(0)
    last = np.argwhere((order_map == p.num_patches - 1).numpy() & mask).mean(0)
    assert np.linalg.norm(first - centroid) < np.linalg.norm(last - centroid)


def test_priority_map_orders_patches():
    mask = _toy_mask()
    cols = np.tile(np.arange(31, dtype=np.float32), (23, 1))
    p = MaskedPatchify(mask, 4, ordering=-cols)  # right-most first
    order_map = p.inverse_values(torch.arange(p.num_patches, dtype=torch.float32)[None])[0]
    first_cols = np.nonzero((order_map == 0).numpy() & mask)[1]
    assert first_cols.min() >= 24


def test_stored_patch_indices_are_honoured_and_checked():
    mask = _toy_mask()
    p = MaskedPatchify(mask, 4, ordering="random")
    q = MaskedPatchify(mask, 4, patch_indices=p.patch_indices)
    x = torch.randn(2, 23, 31)
    assert torch.equal(p(x), q(x))
    with pytest.raises(ValueError, match="permutation"):
        MaskedPatchify(mask, 4, patch_indices=p.patch_indices[:-1])


def test_multichannel_roundtrip_and_conv_layout():
    mask = np.ones((32, 32), dtype=bool)
    p = MaskedPatchify(mask, 16, channels=3, ordering="raster")
    x = torch.randn(2, 3, 32, 32)
    patches = p(x)
    assert patches.shape == (2, 4, 3 * 256)
    assert torch.equal(p.inverse(patches), x)
    # (c, p, p) layout: a linear layer on patches equals a strided conv
    conv = torch.nn.Conv2d(3, 5, 16, stride=16, bias=False)
    lin = patches @ conv.weight.reshape(5, -1).T
    ref = conv(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(lin, ref, rtol=1e-4, atol=1e-4)


def test_bad_shapes_are_named():
    p = MaskedPatchify(_toy_mask(), 4)
    with pytest.raises(ValueError, match=r"\(B, 23, 31\)"):
        p(torch.zeros(2, 22, 31))
    with pytest.raises(ValueError, match="patches of shape"):
        p.inverse(torch.zeros(2, 3, 16))


def test_permute_unpermute_roundtrip():
    g = torch.Generator().manual_seed(0)
    order, ranking = random_order(4, 9, generator=g)
    x = torch.randn(4, 9, 3)
    y = permute(x, order)
    assert torch.equal(y[2, 5], x[2, order[2, 5]])
    assert torch.equal(unpermute(y, order), x)
    assert torch.equal(permute(y, ranking), x)
    tokens = torch.randint(0, 10, (4, 9))
    assert torch.equal(unpermute(permute(tokens, order), order), tokens)


def grid_centres(rows: int = 6, cols: int = 10) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], 1).double() * 10 + 4.5


def test_mixed_orders_are_permutations_with_the_stated_structure():
    centres = grid_centres()
    N = len(centres)
    g = torch.Generator().manual_seed(0)
    out = mixed_orders(64, centres, {"outward": 1.0}, generator=g)
    assert torch.equal(out.sort(1).values, torch.arange(N).expand(64, N))
    # outward: distances from the first slot never decrease along the order
    dist = (centres[out] - centres[out[:, :1]]).square().sum(-1)
    assert (dist[:, 1:] >= dist[:, :-1]).all()
    assert len(set(out[:, 0].tolist())) > 20  # random centres
    # hemisphere: one side of the midline first, then the other
    out = mixed_orders(64, centres, {"hemisphere": 1.0}, midline=50.0, generator=g)
    assert torch.equal(out.sort(1).values, torch.arange(N).expand(64, N))
    left = centres[out][..., 1] < 50.0  # (B, N)
    assert (left[:, :30] == left[:, :1]).all() and (left[:, 30:] != left[:, :1]).all()
    assert 10 < int(left[:, 0].sum()) < 54  # both sides come first sometimes
    # the natural prompt of a hemisphere order is its first side (30 of the 60 slots
    # here); orders of the other kinds have none (0)
    g = torch.Generator().manual_seed(2)
    mix = {"hemisphere": 1.0, "outward": 1.0, "random": 1.0}
    out, cuts = mixed_orders(300, centres, mix, midline=35.0, generator=g, return_cuts=True)
    left = centres[out][..., 1] < 35.0
    first_side = (left == left[:, :1]).long().cumprod(1).sum(1)
    dist = (centres[out] - centres[out[:, :1]]).square().sum(-1)
    outward = (dist[:, 1:] >= dist[:, :-1]).all(1)  # from a side's edge it may look split
    hemi = (left[:, :24] == left[:, :1]).all(1) & (left[:, 36:] != left[:, :1]).all(1)
    hemi &= ~outward
    assert set(first_side[hemi].tolist()) == {24, 36}  # 4 or 6 columns left of 35
    assert torch.equal(cuts[hemi], first_side[hemi]) and (cuts[~hemi] == 0).all()
    assert 70 < int(hemi.sum()) < 130


def test_region_orders_show_the_nearest_slots_first_then_the_rest_at_random():
    centres = grid_centres()
    N = len(centres)
    g = torch.Generator().manual_seed(3)
    out, cuts = mixed_orders(400, centres, {"region": 1.0}, generator=g, return_cuts=True)
    assert torch.equal(out.sort(1).values, torch.arange(N).expand(400, N))
    assert int(cuts.min()) >= int(0.1 * N) and int(cuts.max()) < int(0.7 * N) + 1
    assert len(set(cuts.tolist())) > 20 and len(set(out[:, 0].tolist())) > 30
    dist = (centres[out] - centres[out[:, :1]]).square().sum(-1)  # from the region's centre
    step = torch.arange(N)
    before = step[None] < cuts[:, None]
    # the region is the cut nearest slots, outward from its centre
    inside = torch.where(before, dist, torch.full_like(dist, -1.0)).amax(1)
    outside = torch.where(before, torch.full_like(dist, 1e9), dist).amin(1)
    assert (inside <= outside).all()
    assert (torch.where(before[:, 1:], dist[:, 1:] - dist[:, :-1], 0.0) >= 0).all()

    # after the cut: random order (within each order, the distance to the centre is
    # uncorrelated with the step)
    def centred(x):
        return x - x.mean()

    rest_d = torch.cat([centred(dist[b, cuts[b] :]) for b in range(400)])
    rest_t = torch.cat([centred(step[cuts[b] :].double()) for b in range(400)])
    assert abs(torch.corrcoef(torch.stack([rest_d, rest_t]))[0, 1].item()) < 0.05


def test_mixed_orders_draw_each_kind_with_its_weight():
    centres = grid_centres()
    g = torch.Generator().manual_seed(1)
    out = mixed_orders(4000, centres, {"random": 1.0, "outward": 3.0}, generator=g)
    dist = (centres[out] - centres[out[:, :1]]).square().sum(-1)
    outward = (dist[:, 1:] >= dist[:, :-1]).all(1).float().mean().item()
    assert abs(outward - 0.75) < 0.03  # a random permutation is (almost) never sorted
    random_only = mixed_orders(4000, centres, {"random": 1.0}, generator=g)
    first_pos = (random_only == 0).float().argmax(1).float()  # where slot 0 lands
    assert abs(first_pos.mean().item() - (len(centres) - 1) / 2) < 1.0
    with pytest.raises(ValueError, match="mix must weigh"):
        mixed_orders(2, centres, {"spiral": 1.0})
