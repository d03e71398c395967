import numpy as np
import pytest
import torch
import torch.nn.functional as F

from boldgpt.generate import complete, inpaint, likelihood, sample
from boldgpt.models.beit import BEiT
from boldgpt.models.config import BEiTConfig, IGPTConfig
from boldgpt.models.igpt import IGPT
from boldgpt.patching import permute


def small_mask(h: int = 40, w: int = 50) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) / (h / 2.3)) ** 2 + ((xx - w / 2) / (w / 2.2)) ** 2 < 1


def make_igpt(**kw) -> IGPT:
    args = dict(patch_size=10, embed_dim=32, depth=2, num_heads=4, num_subjects=4)
    args.update(kw)
    torch.manual_seed(0)
    model = IGPT(IGPTConfig(**args), small_mask()).eval()
    if model.tokenizer is not None:
        model.tokenizer.vocab.copy_(torch.randn(model.tokenizer.vocab_size, model.patchify.dim))
    return model


def make_maps(model, B: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, *model.patchify.mask.shape, generator=g) * model.patchify.mask


def random_observed(B: int, N: int, seed: int = 0) -> torch.Tensor:
    """Observed sets of different sizes per sample (one empty)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [0, N // 3, N // 2][:B]
    return torch.stack([torch.randperm(N, generator=g) < k for k in sizes])


@pytest.mark.parametrize("num_registers", [0, 2])
def test_cached_decoding_equals_full_forward(num_registers):
    model = make_igpt(num_registers=num_registers)
    maps = make_maps(model)
    sid = torch.tensor([0, 1, 2])
    B, N = 3, model.num_patches
    order = torch.stack(
        [torch.randperm(N, generator=torch.Generator().manual_seed(i)) for i in range(B)]
    )
    full = model({"activity": maps, "subject_id": sid}, order=order).output
    seq = permute(model.patchify(maps), order)
    next_slots = torch.cat([order, torch.full((B, 1), N)], 1)
    cache = model.init_cache()
    k = 5
    with torch.no_grad():
        outs = [model.decode(seq[:, :k], order[:, :k], next_slots[:, : k + 1], sid, cache=cache)]
        for t in range(k, N - 1):
            outs.append(
                model.decode(
                    seq[:, t : t + 1],
                    order[:, t : t + 1],
                    next_slots[:, t + 1 : t + 2],
                    cache=cache,
                )
            )
    cached = torch.cat(outs, 1)
    assert cached.shape == full.shape
    assert (cached - full).abs().max() <= 1e-5


@pytest.mark.parametrize("categorical", [False, True])
def test_sampling_with_and_without_cache_agree(categorical):
    model = make_igpt(categorical=categorical, vocab_size=16, num_registers=1)
    kw = dict(subject_id=torch.tensor([0, 3]), order="random", top_k=5)
    a = sample(model, 2, use_cache=True, generator=torch.Generator().manual_seed(4), **kw)
    b = sample(model, 2, use_cache=False, generator=torch.Generator().manual_seed(4), **kw)
    assert (a - b).abs().max() <= 1e-5
    inside = torch.from_numpy(small_mask())
    assert (a[:, ~inside] == 0).all() and (a[:, inside] != 0).any()


def test_continuous_sampling_is_deterministic_and_conditioned_on_subject():
    model = make_igpt()
    a = sample(model, 2, subject_id=torch.tensor([0, 1]))
    b = sample(model, 2, subject_id=torch.tensor([0, 1]))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1], atol=1e-4)
    noisy = sample(model, 2, subject_id=torch.tensor([0, 1]), noise="white", noise_scale=0.5)
    assert not torch.allclose(a, noisy, atol=1e-3)
    with pytest.raises(ValueError, match="no fitted residual covariance"):
        sample(model, 1, noise="residual")
    prior = sample(model, 1)  # group prior, no subject
    assert prior.shape == (1, 40, 50)


def test_sampling_restores_training_mode():
    model = make_igpt().train()
    sample(model, 1)
    assert model.training


@pytest.mark.parametrize(
    "order, use_cache, method",
    [
        ("fixed", True, "autoregressive"),
        ("random", True, "autoregressive"),
        ("given", True, "autoregressive"),
        ("fixed", False, "autoregressive"),
        ("random", False, "autoregressive"),
        ("given", False, "autoregressive"),
        ("fixed", True, "query"),
    ],
)
def test_prompt_patches_are_never_changed(order, use_cache, method):
    model = make_igpt(categorical=True, vocab_size=8)
    maps = make_maps(model)
    patches = model.patchify(maps)
    N = model.num_patches
    observed = random_observed(3, N)
    if order == "given":
        order = torch.randperm(N, generator=torch.Generator().manual_seed(9))
    out = complete(
        model,
        patches,
        observed,
        order=order,
        use_cache=use_cache,
        temperature=2.0,
        method=method,
    )
    assert torch.equal(out[observed], patches[observed])
    # generated patches are vocabulary entries (here never equal to the random maps)
    vocab = model.tokenizer.vocab * model.patchify.patch_mask[:, None]  # (N, V, P)
    gen = ~observed
    slot = torch.nonzero(gen)[:, 1]
    dist = (out[gen][:, None] - vocab[slot]).abs().amax(-1).min(-1).values
    assert (dist < 1e-6).all()


def test_given_order_decides_what_is_generated_first():
    model = make_igpt()
    maps = make_maps(model, B=1)
    patches = model.patchify(maps)
    N = model.num_patches
    observed = torch.zeros(1, N, dtype=torch.bool)
    observed[0, :3] = True
    order = torch.randperm(N, generator=torch.Generator().manual_seed(2))
    out = complete(model, patches, observed, order=order, method="autoregressive")
    first = [s for s in order.tolist() if s >= 3][0]
    with torch.no_grad():
        pred = model.decode(
            patches[:, :3], torch.arange(3), torch.tensor([[0, 1, 2, first]]), torch.tensor([0])
        )[:, -1]
    # subject 0 was not passed to complete: group prior instead
    assert not torch.allclose(out[0, first], pred[0] * model.patchify.patch_mask[first], atol=1e-4)
    out = complete(model, patches, observed, order=order, subject_id=0, method="autoregressive")
    assert torch.allclose(out[0, first], pred[0] * model.patchify.patch_mask[first], atol=1e-5)


def test_fixed_order_model_completes_scattered_prompts():
    model = make_igpt(shuffle=False)
    patches = model.patchify(make_maps(model))
    observed = random_observed(3, model.num_patches)
    a = complete(model, patches, observed, use_cache=True)
    b = complete(model, patches, observed, use_cache=False)
    assert torch.equal(a[observed], patches[observed])
    assert (a - b).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="shuffle=False"):
        complete(model, patches, observed, order="random")


def test_context_conditioning_with_cache():
    model = make_igpt(context_dim=12)
    g = torch.Generator().manual_seed(0)
    context = torch.randn(2, 5, 12, generator=g)
    a = sample(model, 2, context=context, use_cache=True)
    b = sample(model, 2, context=context, use_cache=False)
    assert (a - b).abs().max() <= 1e-5
    c = sample(model, 2, context=torch.randn(2, 5, 12, generator=g))
    assert not torch.allclose(a, c, atol=1e-4)
    with pytest.raises(ValueError, match="context"):
        sample(model, 2)


def test_top_k_one_is_greedy():
    model = make_igpt(categorical=True, vocab_size=16)
    a = sample(model, 2, top_k=1, temperature=1.5, generator=torch.Generator().manual_seed(0))
    b = sample(model, 2, temperature=0.0)
    assert torch.equal(a, b)


def test_inpaint_keeps_known_pixels_and_fills_the_rest():
    model = make_igpt()
    maps = make_maps(model, B=2)
    inside = torch.from_numpy(small_mask())
    known = torch.zeros(40, 50, dtype=torch.bool)
    known[:, :27] = True  # cuts through a column of patches: some partly known
    holes = maps.clone()
    holes[:, ~known] = float("nan")
    sid = torch.tensor([0, 1])
    for method in ("query", "autoregressive"):
        out = inpaint(model, holes, known, subject_id=sid, order="random", method=method)
        assert torch.equal(out[:, known], maps[:, known])
        unknown_inside = ~known & inside
        assert torch.isfinite(out).all()
        assert (out[:, unknown_inside] != 0).any()
        assert (out[:, ~known & ~inside] == 0).all()
    # the default for a shuffled model is the one-pass query
    patches = model.patchify(torch.where(known, maps, torch.zeros(())))
    observed = model.patchify(known.float().expand(2, -1, -1)) > 0
    observed = (observed | ~model.patchify.patch_mask).all(-1)
    by_query = complete(model, patches, observed, subject_id=sid, method="query")
    expected = torch.where(known, maps, model.patchify.inverse(by_query))
    assert torch.equal(inpaint(model, holes, known, subject_id=sid), expected)


def test_likelihood_matches_per_patch_errors_of_the_forward_pass():
    model = make_igpt()
    maps = make_maps(model)
    sid = torch.tensor([0, 1, 2])
    scores = likelihood(model, maps, subject_id=sid)
    out = model({"activity": maps, "subject_id": sid}, order="fixed")
    m = model.patchify.patch_mask.float()
    expected = ((out.output - out.target).square() * m).sum(-1) / m.sum(-1)
    assert torch.allclose(scores, expected, atol=1e-5)


def test_token_likelihood_averages_over_random_orders():
    model = make_igpt(categorical=True, vocab_size=16)
    maps = make_maps(model)
    sid = torch.tensor([0, 1, 2])
    scores = likelihood(
        model, maps, subject_id=sid, order="random", num_orders=3,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    g = torch.Generator().manual_seed(5)
    per_order = []
    for _ in range(3):
        out = model(
            {"activity": maps, "subject_id": sid}, order=model.resolve_order("random", 3, g)
        )
        nll = F.cross_entropy(out.output.transpose(1, 2), out.target, reduction="none")
        per_order.append(torch.empty_like(nll).scatter_(1, out.order, nll))
    assert torch.allclose(scores, torch.stack(per_order).mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="random"):
        likelihood(model, maps, num_orders=2)


def test_beit_parallel_decoding_keeps_prompt_and_is_deterministic():
    torch.manual_seed(0)
    config = BEiTConfig(patch_size=10, embed_dim=32, depth=2, num_heads=4)
    model = BEiT(config, small_mask()).eval()
    patches = model.patchify(make_maps(model))
    observed = random_observed(3, model.num_patches)
    a = complete(model, patches, observed, num_steps=4)
    b = complete(model, patches, observed, num_steps=4)
    assert torch.equal(a, b)
    assert torch.equal(a[observed], patches[observed])
    m = model.patchify.patch_mask
    assert ((a[~observed].abs() * m[torch.nonzero(~observed)[:, 1]]).sum(-1) > 0).all()
    assert sample(model, 2, num_steps=3).shape == (2, 40, 50)
    with pytest.raises(ValueError, match="autoregressive"):
        likelihood(model, make_maps(model))


def test_bad_arguments_raise():
    model = make_igpt()
    patches = model.patchify(make_maps(model))
    with pytest.raises(ValueError, match="observed must be bool"):
        complete(model, patches, torch.zeros(3, model.num_patches))
    with pytest.raises(ValueError, match="patches must have shape"):
        complete(model, patches[:, :-1], torch.zeros(3, model.num_patches - 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        sample(model, 1, temperature=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        sample(model, 0)


def test_residual_covariance_is_the_covariance_of_prediction_errors():
    from boldgpt.generate import fit_residual_covariance

    model = make_igpt()
    maps = make_maps(model, 6)
    batch = {"activity": maps, "subject_id": torch.tensor([0, 1, 2, 3, 0, 1])}
    order = torch.stack([torch.randperm(model.num_patches) for _ in range(6)])
    cov = fit_residual_covariance(model, [batch], order=order)
    # by hand: residuals of the interior patches in that order
    with torch.no_grad():
        out = model(batch, order=order)
    r = (out.target - out.output)[model.patchify.interior[order]]
    torch.testing.assert_close(cov, r.T @ r / len(r), rtol=1e-4, atol=1e-5)
    assert torch.equal(model.residual_cov, cov)


def test_residual_noise_draws_patches_with_the_stored_covariance():
    model = make_igpt()
    P = model.patchify.dim
    g = torch.Generator().manual_seed(0)
    a = torch.randn(P, P, generator=g) / P**0.5
    target_cov = a @ a.T + 0.1 * torch.eye(P)
    model.residual_cov.copy_(target_cov)
    n = 3000
    mean = sample(model, 1, subject_id=0)
    draws = sample(model, n, subject_id=0, noise="residual", generator=g)
    # the first patch of the fixed order has no prompt: draw - mean is pure noise
    inside = model.patchify.patch_mask[0]
    noise = (model.patchify(draws)[:, 0] - model.patchify(mean)[:, 0])[:, inside]
    emp = noise.T @ noise / n
    want = target_cov[inside][:, inside]
    assert (emp - want).abs().max() < 0.15 * want.diagonal().mean()
    # independent noise would miss the off-diagonal structure
    off = ~torch.eye(len(want), dtype=torch.bool)
    assert torch.corrcoef(torch.stack([emp[off], want[off]]))[0, 1] > 0.9


def first_hidden_predictions(
    model, patches, observed, sid, context=None, prompt_order=None
) -> torch.Tensor:
    """Reference for one-pass completion: for every sample b and hidden slot j, run the
    full uncached model with order = (observed slots in fixed order, or in the order
    they take in ``prompt_order[b]``, j, the rest) and take its prediction for j (the
    output right after the observed patches)."""
    B, N, P = patches.shape
    out = patches.clone()
    for b in range(B):
        obs = torch.nonzero(observed[b])[:, 0].tolist()
        if prompt_order is not None:
            obs = [s for s in prompt_order[b].tolist() if observed[b, s]]
        for j in torch.nonzero(~observed[b])[:, 0].tolist():
            rest = [s for s in range(N) if s != j and s not in obs]
            order = torch.tensor([obs + [j] + rest])
            seq = patches[b : b + 1, order[0]]
            seq = torch.where(observed[b, order[0]][None, :, None], seq, torch.zeros_like(seq))
            next_slots = torch.cat([order, torch.tensor([[N]])], dim=1)
            ctx = None if context is None else context[b : b + 1]
            with torch.no_grad():
                pred = model.decode(seq, order, next_slots, sid[b : b + 1], ctx)
            out[b, j] = pred[0, len(obs)] * model.patchify.patch_mask[j]
    return out


@pytest.mark.parametrize("extra", [dict(num_registers=2), dict(context_dim=6)])
def test_one_pass_completion_equals_the_first_hidden_prediction_for_every_slot(extra):
    model = make_igpt(**extra)
    with torch.no_grad():  # move the zero-initialised tokens (registers, group) off zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    patches = model.patchify(make_maps(model))
    N = model.num_patches
    observed = random_observed(3, N)  # 0, N/3 and N/2 observed patches
    sid = torch.tensor([0, 1, 3])
    context = torch.randn(3, 4, 6) if "context_dim" in extra else None
    out = complete(model, patches, observed, subject_id=sid, context=context, method="query")
    expected = first_hidden_predictions(model, patches, observed, sid, context)
    assert (out - expected).abs().max() <= 1e-5
    assert torch.equal(out[observed], patches[observed])
    # the default method of a shuffled model
    default = complete(model, patches, observed, subject_id=sid, context=context)
    assert torch.equal(default, out)


def test_one_pass_completion_feeds_the_prompt_in_the_given_order_and_averages_orders():
    model = make_igpt(num_registers=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    patches = model.patchify(make_maps(model))
    N = model.num_patches
    observed = random_observed(3, N, seed=2)
    sid = torch.tensor([0, 1, 3])
    g = torch.Generator().manual_seed(3)
    perm = torch.stack([torch.randperm(N, generator=g) for _ in range(3)])
    out = complete(model, patches, observed, subject_id=sid, prompt_order=perm)
    expected = first_hidden_predictions(model, patches, observed, sid, prompt_order=perm)
    assert (out - expected).abs().max() <= 1e-5
    fixed = complete(model, patches, observed, subject_id=sid)
    assert not torch.allclose(out[~observed], fixed[~observed], atol=1e-4)  # order matters

    # num_orders: the mean of single passes over the random prompt orders it drew
    prompts = []
    real_decode = model.decode

    def spy(patches_, slots, *args, **kwargs):
        prompts.append(slots.clone())  # (B, K): the prompt's slots, in the order fed
        return real_decode(patches_, slots, *args, **kwargs)

    model.decode = spy
    avg = complete(
        model,
        patches,
        observed,
        subject_id=sid,
        prompt_order="random",
        num_orders=3,
        generator=torch.Generator().manual_seed(0),
    )
    del model.decode
    assert len(prompts) == 3 and not torch.equal(prompts[0], prompts[1])
    singles = []
    for slots in prompts:  # a permutation that puts each row's prompt first, in that order
        rest = [torch.tensor([s for s in range(N) if s not in row.tolist()]) for row in slots]
        order = torch.stack([torch.cat([row, r]) for row, r in zip(slots, rest)])
        singles.append(first_hidden_predictions(model, patches, observed, sid, prompt_order=order))
    assert (avg - torch.stack(singles).mean(0)).abs().max() <= 1e-5
    assert torch.equal(avg[observed], patches[observed])
    with pytest.raises(ValueError, match="num_orders > 1"):
        complete(model, patches, observed, num_orders=2)  # needs prompt_order='random'
    with pytest.raises(ValueError, match="num_orders > 1"):
        complete(
            model, patches, observed, method="autoregressive", prompt_order="random", num_orders=2
        )


def test_one_pass_completion_ignores_hidden_values():
    model = make_igpt(num_registers=1)
    patches = model.patchify(make_maps(model))
    observed = random_observed(3, model.num_patches, seed=4)
    sid = torch.tensor([0, 1, 2])
    a = complete(model, patches, observed, subject_id=sid)
    changed = torch.where(observed[..., None], patches, torch.full_like(patches, float("nan")))
    b = complete(model, changed, observed, subject_id=sid)
    assert torch.equal(a[~observed], b[~observed]) and torch.isfinite(b[~observed]).all()
    shifted = torch.where(observed[..., None], patches, patches + 5.0)
    c = complete(model, shifted, observed, subject_id=sid)
    assert torch.equal(a[~observed], c[~observed])
    # (hidden predictions differ from the autoregressive ones, which feed guesses back)
    d = complete(model, patches, observed, subject_id=sid, method="autoregressive")
    assert not torch.allclose(a[~observed], d[~observed], atol=1e-4)


def test_one_pass_completion_needs_queries_and_is_not_for_beit():
    fixed = make_igpt(shuffle=False)
    patches = fixed.patchify(make_maps(fixed))
    observed = random_observed(3, fixed.num_patches)
    with pytest.raises(ValueError, match="shuffle=False or legacy registers"):
        complete(fixed, patches, observed, method="query")
    by_default = complete(fixed, patches, observed)  # falls back to autoregressive
    assert torch.equal(by_default, complete(fixed, patches, observed, method="autoregressive"))
    legacy = make_igpt(num_registers=2, legacy_registers=True)
    with pytest.raises(ValueError, match="legacy registers"):
        complete(legacy, patches, observed, method="query")
    with pytest.raises(ValueError, match="method must be one of"):
        complete(make_igpt(), patches, observed, method="parallel")
    beit = BEiT(BEiTConfig(patch_size=10, embed_dim=32, depth=2, num_heads=4), small_mask())
    with pytest.raises(ValueError, match="decodes in parallel"):
        complete(beit.eval(), patches, observed, method="query")


def test_cli_generate_decodes_on_the_threads_asked_for(monkeypatch):
    # one thread by default (robust when the cores are shared), --threads N on request,
    # and the process's own setting restored afterwards
    import boldgpt.cli.generate as cli_generate
    from boldgpt.cli import main

    seen = []

    def record(args, device):
        seen.append(torch.get_num_threads())

    monkeypatch.setattr(cli_generate, "_generate", record)
    before = torch.get_num_threads()
    for extra in ([], ["--threads", "3"]):
        assert main(["generate", "MODEL", "--device", "cpu", *extra]) == 0
    assert seen == [1, 3] and torch.get_num_threads() == before
