import numpy as np
import pytest
import torch
import torch.nn.functional as F

from boldgpt.errors import ConfigError, DataError
from boldgpt.models.config import IGPTConfig
from boldgpt.models.igpt import IGPT
from boldgpt.models.layers import param_groups


def small_mask(h: int = 40, w: int = 50) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) / (h / 2.3)) ** 2 + ((xx - w / 2) / (w / 2.2)) ** 2 < 1


def make_model(**kw) -> IGPT:
    args = dict(patch_size=10, embed_dim=32, depth=2, num_heads=4, num_subjects=4)
    args.update(kw)
    torch.manual_seed(0)
    return IGPT(IGPTConfig(**args), small_mask()).eval()


def make_batch(model: IGPT, B: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = model.patchify.mask
    activity = torch.randn(B, *mask.shape, generator=g) * mask
    return {"activity": activity, "subject_id": torch.arange(B) % max(model.num_subjects, 1)}


def perturb_slots(model: IGPT, activity: torch.Tensor, slots_per_sample) -> torch.Tensor:
    """Change the pixels of the given slots (per sample), leave the rest."""
    p = model.patchify
    patches = p(activity)
    for b, slots in enumerate(slots_per_sample):
        patches[b, slots] += 3.0
    return p.inverse(patches)


@pytest.mark.parametrize("num_registers", [0, 2])
def test_output_ignores_later_patches_under_random_orders(num_registers):
    model = make_model(num_registers=num_registers)
    batch = make_batch(model)
    N = model.num_patches
    torch.manual_seed(5)
    order = torch.stack([torch.randperm(N) for _ in range(3)])
    j = N // 2
    out = model(batch, order=order).output
    changed = dict(batch, activity=perturb_slots(model, batch["activity"], order[:, j:]))
    out2 = model(changed, order=order).output
    # output t predicts slot order[t] from order[:t]: positions <= j never see order[j:]
    assert torch.allclose(out[:, : j + 1], out2[:, : j + 1], atol=1e-6)
    assert not torch.allclose(out[:, j + 1 :], out2[:, j + 1 :], atol=1e-3)


def test_legacy_registers_do_leak_later_patches():
    # the seed project's layout, kept only for its checkpoints, is documented as leaking
    model = make_model(num_registers=2, legacy_registers=True)
    batch = make_batch(model)
    j = model.num_patches // 2
    order = model.fixed_order(3)
    out = model(batch, order=order).output
    changed = dict(batch, activity=perturb_slots(model, batch["activity"], order[:, j:]))
    out2 = model(changed, order=order).output
    assert not torch.allclose(out[:, :j], out2[:, :j], atol=1e-4)


def test_next_position_query_decides_the_predicted_slot():
    model = make_model()
    batch = make_batch(model, B=1)
    N = model.num_patches
    j = 4
    base = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    # same first j slots; slot at step j differs
    other = torch.cat([base[:j], base[j + 1 :], base[j : j + 1]])
    # same first j + 1 slots; the rest differs
    same_next = torch.cat([base[: j + 1], base[j + 1 :].flip(0)])
    out = model(batch, order=base[None]).output
    out_other = model(batch, order=other[None]).output
    out_same = model(batch, order=same_next[None]).output
    assert torch.allclose(out[:, :j], out_other[:, :j], atol=1e-6)
    assert not torch.allclose(out[:, j], out_other[:, j], atol=1e-3)
    assert torch.allclose(out[:, : j + 1], out_same[:, : j + 1], atol=1e-6)


def test_fixed_order_model_has_no_queries_and_refuses_other_orders():
    model = make_model(shuffle=False)
    assert model.backbone.next_pos_query is None
    batch = make_batch(model)
    model.train()
    out = model(batch)
    assert torch.equal(out.order, model.fixed_order(3))
    with pytest.raises(ValueError, match="shuffle=False"):
        model(batch, order="random")


def test_training_draws_orders_from_the_global_rng():
    model = make_model().train()
    batch = make_batch(model)
    torch.manual_seed(123)
    a = model(batch).order
    torch.manual_seed(123)
    b = model(batch).order
    assert torch.equal(a, b)
    assert not torch.equal(a, model.fixed_order(3))
    assert torch.equal(a.sort(1).values, model.fixed_order(3))
    assert torch.equal(model.eval()(batch).order, model.fixed_order(3))


def test_mse_ignores_out_of_mask_pixels():
    model = make_model()
    batch = make_batch(model)
    base = model(batch, order="fixed").loss
    outside = ~model.patchify.patch_mask  # (N, P), in fixed order = sequence order
    hook = model.head.register_forward_hook(
        lambda mod, inp, out: out + 100.0 * F.pad(outside, (0, 0, 0, 1)).float()
    )
    try:
        perturbed = model(batch, order="fixed").loss
    finally:
        hook.remove()
    assert torch.allclose(base, perturbed)
    # and it is the mean over in-mask values
    out = model(batch, order="fixed")
    m = model.patchify.patch_mask.expand_as(out.output)
    expected = (out.output - out.target)[m].square().mean()
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_categorical_loss_is_cross_entropy_on_nearest_centroids():
    model = make_model(categorical=True, vocab_size=16)
    batch = make_batch(model)
    g = torch.Generator().manual_seed(3)
    model.tokenizer.vocab.copy_(torch.randn(16, model.patchify.dim, generator=g))
    out = model(batch, order="random")
    seq = out.patches.gather(1, out.order[..., None].expand_as(out.patches))
    # nearest centroid by brute force
    dists = ((seq[:, :, None, :] - model.tokenizer.vocab) ** 2).sum(-1)
    tokens = dists.argmin(-1)
    assert torch.equal(out.target, tokens)
    logp = out.output.log_softmax(-1)
    expected = -logp.gather(-1, tokens[..., None]).mean()
    assert torch.allclose(out.loss, expected, atol=1e-5)
    acc = (out.output.argmax(-1) == tokens).float().mean()
    assert torch.allclose(out.metrics["accuracy"], acc)


def test_categorical_model_needs_a_vocabulary():
    model = make_model(categorical=True, vocab_size=8)
    with pytest.raises(ConfigError, match="vocabulary"):
        model(make_batch(model))


def test_subject_dropout_gives_the_group_prior():
    model = make_model(subject_dropout=1.0).train()
    batch = make_batch(model, B=2)
    batch["activity"][1] = batch["activity"][0]
    batch["subject_id"] = torch.tensor([0, 3])
    out = model(batch, order="fixed").output
    assert torch.allclose(out[0], out[1], atol=1e-6)  # subject embeddings dropped
    out = model.eval()(batch, order="fixed").output
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_without_subject_embeddings_subject_is_ignored():
    model = make_model(subject_embed=False)
    assert model.num_subjects == 0 and model.backbone.sub_embed is None
    batch = make_batch(model, B=2)
    a = model(batch).output
    b = model(dict(batch, subject_id=torch.tensor([99, -1]))).output
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda b: b.update(activity=b["activity"][:, :-1]), r"shape \(B, 40, 50\)"),
        (lambda b: b.update(activity=(b["activity"] * 10).to(torch.uint8)), "uint8"),
        (lambda b: b["activity"].__setitem__((0, 3, 3), float("nan")), "NaN"),
        (lambda b: b.update(subject_id=torch.tensor([0, 1, 4])), r"subjects 0\.\.3"),
        (lambda b: b.update(subject_id=torch.tensor([0, 1])), r"shape \(3,\)"),
        (lambda b: b.pop("subject_id"), "subject_id"),
        (lambda b: b.pop("activity"), "activity"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, match):
    model = make_model()
    batch = make_batch(model)
    change(batch)
    with pytest.raises(DataError, match=match):
        model(batch)


def test_bad_orders_raise():
    model = make_model()
    batch = make_batch(model)
    N = model.num_patches
    with pytest.raises(ValueError, match="permutation"):
        model(batch, order=torch.zeros(N, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        model(batch, order=torch.arange(N - 1))


def test_prediction_maps_put_patches_back_in_place():
    model = make_model()
    batch = make_batch(model)
    out = model(batch, order="random")
    maps = model.prediction_maps(out)
    # each sequence step's prediction lands on its slot
    patches = model.patchify(maps)
    expected = torch.zeros_like(patches)
    expected.scatter_(1, out.order[..., None].expand_as(out.output), out.output)
    assert torch.allclose(patches, expected * model.patchify.patch_mask, atol=1e-6)


def test_estimate_flops_counts_matmuls_and_attention():
    model = make_model()
    D, N, depth, P = 32, model.num_patches, 2, model.patchify.dim
    T = N + 1
    linear = depth * 12 * D * D + P * D + D * P  # blocks, patch embed, head
    expected = 2 * linear * T + 4 * depth * T * T * D
    assert model.estimate_flops() == expected


def test_param_groups_cover_every_parameter_once():
    model = make_model(num_registers=1)
    groups = param_groups(model, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    no_decay = {id(p) for p in groups[1]["params"]}
    b = model.backbone
    for p in (b.pos_embed, b.next_pos_query, b.eos_query, b.group_token, b.sub_embed):
        assert id(p) in no_decay
    assert id(model.head.weight) not in no_decay


def test_sincos_init_makes_nearby_slots_alike():
    model = make_model()
    coords = model.slot_coords()
    pos, query = model.backbone.pos_embed.detach(), model.backbone.next_pos_query.detach()
    assert torch.equal(pos, query)
    dist = torch.cdist(coords, coords)
    sim = pos @ pos.T
    # for every slot, its grid neighbours are more alike than slots 3+ patches away
    for i in range(len(coords)):
        near, far = sim[i][dist[i] == 1], sim[i][dist[i] >= 3]
        if len(near) and len(far):
            assert near.min() > far.max()
    random = make_model(pos_init="random").backbone.pos_embed.detach()
    assert random.std() < 0.03 and not torch.allclose(random, pos)
    with pytest.raises(ConfigError, match="pos_init"):
        make_model(pos_init="learned")


def test_value_checks_skip_device_tensors_unless_debugging(monkeypatch):
    """NaN and subject-range checks read values: free on CPU, a host-device sync on
    CUDA. Pretend the tensors live on a device (no GPU needed)."""
    from boldgpt.models import checks

    model = make_model()
    batch = make_batch(model)
    batch["activity"][0, 3, 3] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        model(batch)  # host tensors: always checked
    monkeypatch.setattr(checks, "DEBUG", False)
    monkeypatch.setattr(checks, "syncs_device", lambda t: True)
    out = model(batch)  # no check, no sync: the NaN flows through
    assert torch.isnan(out.loss)
    assert model.check_subject(torch.tensor([0, 9, 1]), 3) is not None  # not range-checked
    monkeypatch.setattr(checks, "DEBUG", True)
    with pytest.raises(DataError, match="NaN"):
        model(batch)
    with pytest.raises(DataError, match=r"\[0, 9\].*subjects 0\.\.3"):
        model.check_subject(torch.tensor([0, 9, 1]), 3)


def test_check_subject_ids_on_the_host_batch():
    from boldgpt.models.checks import check_subject_ids

    check_subject_ids(torch.tensor([0, 3, 1]), 4)
    check_subject_ids([2, 2], 3)
    with pytest.raises(DataError, match=r"out of range: got values in \[-1, 2\]"):
        check_subject_ids(torch.tensor([2, -1]), 4)
    with pytest.raises(DataError, match=r"subjects 0\.\.3"):
        check_subject_ids(np.array([4]), 4)
    with pytest.raises(DataError, match="integers"):
        check_subject_ids(torch.tensor([0.0, 1.0]), 4)


def test_debug_switch_comes_from_the_environment():
    import os
    import subprocess
    import sys

    code = "from boldgpt.models import checks; print(checks.DEBUG)"
    for value, expected in (("1", "True"), ("0", "False"), ("", "False")):
        env = dict(os.environ, BOLDGPT_DEBUG=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.stdout.strip() == expected, out.stderr


def test_training_orders_follow_the_configured_mix():
    model = make_model(order_mix={"hemisphere": 2, "random": 0})
    assert model.config.order_mix == {"hemisphere": 1.0}
    model.train()
    torch.manual_seed(3)
    out = model(make_batch(model, B=8))
    # sides by patch centre in pixels against the mask's mean column
    centre_x = model.patchify.patch_centres()[:, 1].float()
    left = centre_x[out.order] < model.patchify.mask.nonzero()[:, 1].double().mean()  # (B, N)
    N, n_left = model.num_patches, left.sum(1, keepdim=True)
    starts_left = left[:, :1]
    shown_first = torch.arange(N) < torch.where(starts_left, n_left, N - n_left)
    expected = torch.where(starts_left, shown_first, ~shown_first)
    assert torch.equal(left, expected)  # one side, then the other, in every sample
    model.eval()
    assert torch.equal(model(make_batch(model)).order, model.fixed_order(3))
    with pytest.raises(ConfigError, match="order_mix"):
        make_model(order_mix={"spiral": 1.0})
    with pytest.raises(ConfigError, match="order_mix needs shuffle"):
        make_model(order_mix={"outward": 1.0}, shuffle=False)


def test_token_model_needs_a_fitted_vocabulary():
    model = make_model(categorical=True, vocab_size=8)
    batch = make_batch(model)
    with pytest.raises(ConfigError, match="no vocabulary yet"):
        model(batch)
    assert not model.tokenizer.is_fitted
    model.tokenizer.vocab.normal_()  # e.g. loaded from a vocabulary file
    assert model.tokenizer.is_fitted
    assert model(batch).target.shape == (3, model.num_patches)


@pytest.mark.parametrize("num_registers, per_sample", [(0, False), (2, False), (0, True)])
def test_query_tokens_predict_each_slot_as_if_it_came_right_after_the_cut(
    num_registers, per_sample
):
    """The one-pass training queries: slot j queried at cut k (one for the batch, or one
    per sample) is exactly the model's prediction for j when the order puts j at step
    k; the main outputs are those of the plain sequence."""
    model = make_model(num_registers=num_registers, query_tokens=4)
    batch = make_batch(model)
    p, N = model.patchify, model.num_patches
    torch.manual_seed(3)
    order = torch.stack([torch.randperm(N) for _ in range(3)])
    seq = torch.gather(p(batch["activity"]), 1, order[..., None].expand(-1, -1, p.dim))
    next_slots = torch.cat([order, order.new_full((3, 1), N)], dim=1)
    sid = batch["subject_id"]
    k = torch.tensor([5, 7, 9]) if per_sample else 7
    cut = k.tolist() if per_sample else [k] * 3
    picks = torch.tensor([[7, 9, 15, N - 1], [8, 10, 11, 12], [N - 2, 9, 13, N - 3]])
    query_slots = order.gather(1, picks)
    with torch.no_grad():
        main, queried = model.query_predictions(seq, order, next_slots, sid, None, k, query_slots)
        plain = model.decode(seq, order, next_slots, sid)
        assert torch.allclose(main, plain, atol=1e-5)
        for b in range(3):
            for m, pos in enumerate(picks[b].tolist()):
                moved = order[b].clone()
                c = cut[b]
                moved[[c, pos]] = moved[[pos, c]]  # slot pos of the order now comes at step c
                ref = model(
                    {"activity": batch["activity"][b : b + 1], "subject_id": sid[b : b + 1]},
                    order=moved[None],
                ).output[0, c]
                assert torch.allclose(queried[b, m], ref, atol=1e-5), (b, m)


def test_query_tokens_join_the_training_loss_and_never_see_hidden_patches():
    model = make_model(query_tokens=5).train()
    batch = make_batch(model)
    torch.manual_seed(11)
    loss = model(batch).loss
    torch.manual_seed(11)
    plain = make_model(query_tokens=0).train()(batch).loss
    assert not torch.isclose(loss, plain)  # the queries' errors are part of the loss
    p, N = model.patchify, model.num_patches
    order = torch.stack([torch.randperm(N) for _ in range(3)])
    seq = torch.gather(p(batch["activity"]), 1, order[..., None].expand(-1, -1, p.dim))
    next_slots = torch.cat([order, order.new_full((3, 1), N)], dim=1)
    query_slots = order[:, 10:14]
    model.eval()
    with torch.no_grad():
        _, q1 = model.query_predictions(
            seq, order, next_slots, batch["subject_id"], None, 10, query_slots
        )
        later = seq.clone()
        later[:, 10:] += 5.0  # every patch from the cut on, the queried ones included
        _, q2 = model.query_predictions(
            later, order, next_slots, batch["subject_id"], None, 10, query_slots
        )
    assert torch.equal(q1, q2)


def test_query_tokens_ask_hemisphere_orders_at_the_end_of_the_first_side(monkeypatch):
    """Training queries of a hemisphere-first order are cut where its first side ends
    (the hemisphere prompt), those of other orders anywhere."""
    model = make_model(query_tokens=3, order_mix={"hemisphere": 1.0, "random": 1.0}).train()
    seen = {}
    real = model.query_predictions

    def spy(seq, order, next_slots, subject_id, context, k, query_slots):
        seen.update(order=order, k=k, query_slots=query_slots)
        return real(seq, order, next_slots, subject_id, context, k, query_slots)

    monkeypatch.setattr(model, "query_predictions", spy)
    torch.manual_seed(0)
    model(make_batch(model, B=64))
    order, k, query_slots = seen["order"], seen["k"], seen["query_slots"]
    left = model.slot_grid[order][..., 1].double() < model.midline  # (B, N)
    hemi = (left[:, 1:] != left[:, :-1]).sum(1) == 1  # one switch of side: hemisphere first
    first_side = (left == left[:, :1]).long().cumprod(1).sum(1)
    assert 16 < int(hemi.sum()) < 48
    assert torch.equal(k[hemi], first_side[hemi])
    assert len(set(k[~hemi].tolist())) > 5  # random orders: random cuts
    # queried slots come after the cut in their order
    step_of = order.argsort(1)
    assert (step_of.gather(1, query_slots) >= k[:, None]).all()


def test_query_weight_sets_the_queries_share_of_the_loss():
    """loss = (1 - w) x next-patch MSE + w x query MSE, each a mean over in-mask
    pixels, the next-patch part recomputed here from the returned predictions."""
    batch = make_batch(model := make_model(query_tokens=5), B=4)
    losses = {}
    for w in (0.0, 0.3, 1.0):
        model = make_model(query_tokens=5, query_weight=w).train()
        torch.manual_seed(5)  # the same orders, cuts and queried slots for each w
        out = model(batch)
        m = model.patchify.patch_mask[out.order].float()
        next_mse = ((out.output - out.target) ** 2 * m).sum() / m.sum()
        losses[w] = (out.loss, next_mse, out.metrics["query_loss"])
    loss0, next0, query0 = losses[0.0]
    torch.testing.assert_close(loss0, next0)
    torch.testing.assert_close(losses[1.0][0], query0)
    torch.testing.assert_close(losses[0.3][0], 0.7 * next0 + 0.3 * query0)
    assert not torch.isclose(next0, query0)
    with pytest.raises(ConfigError, match="query_weight"):
        IGPTConfig(query_weight=0.5)  # no query tokens to weigh
    with pytest.raises(ConfigError, match="query_weight"):
        IGPTConfig(query_tokens=4, query_weight=1.5)


def test_query_tokens_need_a_shuffled_model():
    with pytest.raises(ConfigError, match="query_tokens"):
        IGPTConfig(shuffle=False, query_tokens=4)
    with pytest.raises(ConfigError, match="query_tokens"):
        IGPTConfig(query_tokens=-1)


# ---- completion head ------------------------------------------------------------------


def end_query_states(model: IGPT, patches, slots, sid, cut_steps, asked=None):
    """Backbone outputs computed the plain causal way, where the token ending each
    prompt (cut step k, k >= 1) carries the end query N (or the query of slot
    ``asked``) instead of its next slot: what a completion token (a query token)
    placed after that cut must equal. patches/slots (T, ...) of one sample; returns
    (C, D)."""
    b, N, R = model.backbone, model.num_patches, model.backbone.num_prefix
    out = []
    for k in cut_steps:
        nxt = torch.cat([slots[:k], torch.tensor([N if asked is None else asked])])
        x = torch.cat([b.prefix(sid, 1), b.embed_patches(patches[None, :k], slots[None, :k])], 1)
        x = x + F.pad(b.queries(nxt[None]), (0, 0, R - 1, 0))
        out.append(b(x)[0, -1])
    return torch.stack(out)


@pytest.mark.parametrize("num_registers", [0, 2])
def test_completion_tokens_ask_the_end_query_after_each_cut(monkeypatch, num_registers):
    """Training: at each cut k the completion token sees exactly the first k patches of
    the order (its output equals the end query asked at step k of a plain causal pass);
    the head's map is scored on the in-mask pixels of the slots the cut hid, and
    completion_weight x that loss joins the next-patch loss."""
    model = make_model(num_registers=num_registers, completion_head=8, completion_weight=0.5)
    model.train()
    with torch.no_grad():  # a head whose output moves with its input, as a trained one
        for lin in model.completion:
            lin.weight.normal_(0.0, 0.3)
    batch = make_batch(model, B=2)
    p, N = model.patchify, model.num_patches
    k = torch.tensor([[1, 5, 9, N - 1], [3, 3, 12, 20]])
    monkeypatch.setattr(model, "completion_cuts", lambda B, cuts: k)
    seen = []
    head = model.complete_from_tokens
    monkeypatch.setattr(model, "complete_from_tokens", lambda h: seen.append(head(h)) or seen[-1])
    torch.manual_seed(4)
    out = model(batch)
    order = out.order
    patches = p(batch["activity"])
    sq = err = 0.0
    with torch.no_grad():
        for b in range(2):
            seq = patches[b, order[b]]
            h = end_query_states(model, seq, order[b], batch["subject_id"][b : b + 1], k[b])
            pred = head(h[None])[0]  # (C, N, P)
            torch.testing.assert_close(seen[0][b], pred, atol=1e-5, rtol=1e-4)
            for c, cut in enumerate(k[b].tolist()):
                hid = order[b, cut:]  # slots from step cut on
                m = p.patch_mask[hid].float()
                err += float((((pred[c, hid] - patches[b, hid]) ** 2) * m).sum())
                sq += float(m.sum())
        m = p.patch_mask[order].float()
        next_mse = ((out.output - out.target) ** 2 * m).sum() / m.sum()
    torch.testing.assert_close(out.metrics["completion_loss"], torch.tensor(err / sq))
    torch.testing.assert_close(out.loss, next_mse + 0.5 * out.metrics["completion_loss"])
    torch.testing.assert_close(out.metrics["next_patch_loss"], next_mse)


def test_completion_tokens_are_cut_at_a_hemisphere_orders_first_side(monkeypatch):
    model = make_model(completion_head=4, order_mix={"hemisphere": 1.0, "random": 1.0}).train()
    seen = {}
    real = model.completion_cuts
    monkeypatch.setattr(model, "completion_cuts", lambda B, c: seen.setdefault("k", real(B, c)))
    torch.manual_seed(0)
    order = model(make_batch(model, B=64)).order
    k = seen["k"]
    left = model.slot_grid[order][..., 1].double() < model.midline
    hemi = (left[:, 1:] != left[:, :-1]).sum(1) == 1
    first_side = (left == left[:, :1]).long().cumprod(1).sum(1)
    assert 16 < int(hemi.sum()) < 48
    assert torch.equal(k[hemi, 0], first_side[hemi])
    assert ((k >= 1) & (k < model.num_patches)).all() and len(set(k[:, 1:].flatten().tolist())) > 10


def test_one_pass_completion_reads_the_completion_head(tmp_path):
    """generate.complete(method="query") of a model with a completion head: each sample's
    hidden patch is the mean of the head's map from one end query after its own prompt
    (any prompt size per sample) and of the slot's own query there; hidden inputs never
    matter, and the head survives a save/load round trip."""
    from boldgpt import generate
    from boldgpt.models.registry import load_model, save_model

    model = make_model(completion_head=8)
    with torch.no_grad():
        model.completion[1].bias.normal_()  # a trained head's bias is not zero
    batch = make_batch(model, B=2)
    p, N = model.patchify, model.num_patches
    patches = p(batch["activity"])
    observed = torch.zeros(2, N, dtype=torch.bool)
    observed[0, [0, 3, 4, 10]] = True
    observed[1, 5:20] = True
    sid = batch["subject_id"]
    done = generate.complete(model, patches, observed, subject_id=sid, method="query")
    with torch.no_grad():
        for b in range(2):
            slots = observed[b].nonzero()[:, 0]  # fixed prompt order: slot order
            h = end_query_states(model, patches[b, slots], slots, sid[b : b + 1], [len(slots)])
            ref = model.complete_from_tokens(h[None])[0, 0]
            hid = ~observed[b]
            for j in hid.nonzero()[:, 0].tolist():
                hj = end_query_states(
                    model, patches[b, slots], slots, sid[b : b + 1], [len(slots)], j
                )
                ref[j] = (ref[j] + model.predict(hj)[0]) / 2
            ref = ref * p.patch_mask  # zero off the mask
            torch.testing.assert_close(done[b, hid], ref[hid], atol=1e-5, rtol=1e-5)
            assert torch.equal(done[b, ~hid], patches[b, ~hid])
    noisy = torch.where(observed[..., None], patches, patches + 7.0)
    again = generate.complete(model, noisy, observed, subject_id=sid, method="query")
    torch.testing.assert_close(again, done)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.config.completion_head == 8
    reloaded = generate.complete(loaded, patches, observed, subject_id=sid, method="query")
    torch.testing.assert_close(reloaded, done)


def test_completion_head_needs_a_continuous_shuffled_model():
    for bad in (
        dict(completion_head=-1),
        dict(completion_head=8, shuffle=False),
        dict(completion_head=8, categorical=True, vocab_size=16),
        dict(completion_head=8, query_tokens=4),
        dict(completion_head=8, completion_weight=-0.1),
    ):
        with pytest.raises(ConfigError, match="completion_"):
            IGPTConfig(**bad)


def test_loss_curves_draw_the_next_patch_part_of_a_train_loss_with_a_head():
    """A model with a completion head logs a train loss that adds the head's; the
    training figure draws its next-patch part, which compares with validation."""
    from boldgpt.viz.train import loss_curves_figure

    records = [
        {"step": 10, "split": "train", "loss": 1.2, "next_patch_loss": 0.9},
        {"step": 20, "split": "train", "loss": 1.1},  # a model without one
        {"step": 20, "split": "val", "loss": 0.8},
    ]
    fig = loss_curves_figure(records)
    train, val = fig.axes[0].get_lines()[:2]
    assert list(train.get_ydata()) == [0.9, 1.1]
    assert list(val.get_ydata()) == [0.8]
