"""Generation and scoring with boldgpt models: sampling new maps, completing partial
maps, inpainting, and per-patch likelihood. Every function takes the model.

Completion with an autoregressive model (IGPT) has two methods:

- ``"query"`` (one pass; the default for shuffled models): the observed patches run
  once as a prompt (KV cache), then every hidden slot j is queried directly from that
  prompt by one extra token, the prompt's last token carrying the next-position query
  of j, which attends to the prompt and to itself only (no extra token sees
  another). Its output is exactly what the model predicts for j when j comes first
  after the observed patches: the model's estimate of E[patch j | observed patches]
  (a shuffled model is trained for any observed set). Hidden patches are estimated
  independently, never from the model's own guesses, which it never saw in training.
- ``"autoregressive"``: decode one patch at a time, feeding each prediction (or
  draw) back as input. The observed patches come first in the sequence, then the
  hidden ones in the requested order: ``"fixed"`` (the model's fixed order),
  ``"random"``, or a given permutation of the slots. Models trained without
  next-position queries (``shuffle=False``) can only walk their fixed order;
  observed patches are then fed in place as the walk reaches them. With
  ``use_cache=True`` the prompt runs once and each step feeds a single token through
  a KV cache; the result equals the uncached one to float precision. Sampling new
  maps always decodes this way (a draw must see the patches drawn before it).

Bidirectional models (BEiT) decode by iterative parallel decoding: predict all
unknown patches, commit a share of them (cosine schedule, ``num_steps`` rounds) in
the requested order, repeat.

Token models draw from ``softmax(logits / temperature)`` restricted to the ``top_k``
most likely tokens (``temperature=0``: the most likely token); continuous models feed
back their predicted mean, plus, if asked, Gaussian noise: ``noise="residual"`` draws
from the model's predictive distribution N(mean, residual covariance) fitted after
training (:func:`fit_residual_covariance`; realistic within-patch texture),
``noise="white"`` adds independent noise; ``noise_scale`` multiplies its std.
Observed (prompt) patches are never changed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from boldgpt.patching import permute, unpermute

Order = str | torch.Tensor
METHODS = ("query", "autoregressive")
"""Completion methods of autoregressive models (see the module docstring)."""


@contextlib.contextmanager
def _inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, no shuffling) and no autograd; restores the mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def sample(
    model: Any,
    batch_size: int,
    *,
    subject_id: int | torch.Tensor | None = None,
    order: Order = "fixed",
    **options: Any,
) -> torch.Tensor:
    """Draw ``batch_size`` new maps (B, H, W) (images: (B, C, H, W)).

    Args:
        model: an IGPT or BEiT model.
        subject_id: an int or (B,) ids; None samples from the group prior (the
            subject token without a subject embedding).
        order: generation order: ``"fixed"``, ``"random"`` or a permutation (N,) /
            (B, N) of the slots.
        options: ``temperature``, ``top_k``, ``noise``, ``noise_scale``, ``context``,
            ``use_cache``, ``num_steps``, ``generator``, as in :func:`complete`.
            Autoregressive models always decode patch by patch here (a draw must see
            the patches drawn before it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    if "method" in options:
        raise TypeError("sample() takes no method: new maps are decoded patch by patch")
    p = model.patchify
    patches = torch.zeros(batch_size, p.num_patches, p.dim, device=model.device)
    observed = torch.zeros(batch_size, p.num_patches, dtype=torch.bool, device=model.device)
    method = "autoregressive" if model.causal else None
    out = complete(
        model, patches, observed, subject_id=subject_id, order=order, method=method, **options
    )
    return p.inverse(out)


def complete(
    model: Any,
    patches: torch.Tensor,
    observed: torch.Tensor,
    *,
    subject_id: int | torch.Tensor | None = None,
    order: Order = "fixed",
    temperature: float = 1.0,
    top_k: int | None = None,
    noise: str | None = None,
    noise_scale: float = 1.0,
    context: torch.Tensor | None = None,
    use_cache: bool = True,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
    method: str | None = None,
    prompt_order: Order = "fixed",
    num_orders: int = 1,
) -> torch.Tensor:
    """Fill in the unobserved patches of partially observed maps.

    Args:
        patches: (B, N, P) in the model's slot order (values of unobserved patches
            are ignored).
        observed: (B, N) bool, True for patches given as the prompt; any set, any
            size per sample.
        subject_id: an int or (B,) ids; None for the group prior.
        order: order of the generated patches (``method="autoregressive"`` and BEiT):
            ``"fixed"``, ``"random"`` or a permutation (N,) / (B, N) of the slots.
        temperature, top_k: token sampling (categorical models).
        noise: continuous models: None (feed back the predicted mean: deterministic),
            ``"residual"`` (draw each patch from N(mean, model.residual_cov), the
            predictive distribution fitted after training) or ``"white"``
            (independent noise per value).
        noise_scale: multiplies the noise's standard deviation (``"white"``: it is
            the std).
        context: (B, M, C) for cross-attention models.
        use_cache: KV-cache decoding (autoregressive models).
        num_steps: rounds of parallel decoding (BEiT; default min(N, 16)).
        generator: RNG for orders, tokens and noise (default: torch's global RNG).
        method: autoregressive models: ``"query"`` (one pass: each hidden patch
            predicted from the observed ones only, by its own query and, in a model
            with a completion head, averaged with the head's map; the default for
            shuffled models)
            or ``"autoregressive"`` (one patch at a time in ``order``; the default for
            fixed-order models and models with legacy registers, which cannot be
            queried). BEiT models decode in parallel and take None. With
            ``"query"``, ``order`` and ``use_cache`` do not apply, and a draw
            (``noise``, ``temperature`` > 0) draws each hidden patch from its own
            conditional given the observed ones.
        prompt_order: the order the observed patches are fed in (autoregressive
            models): ``"fixed"``, ``"random"`` or a permutation (N,) / (B, N) of the
            slots, of which the observed ones are taken in turn. A shuffled model was
            trained on (mostly) random orders, so a random prompt order is the
            condition it knows best.
        num_orders: ``method="query"`` only: average the one-pass predictions (the
            means of a continuous model, the token probabilities of a categorical one)
            over this many random prompt orders (``prompt_order="random"``) before any
            draw; each order is the same question asked of the same observed set, so
            the average is an ensemble at the cost of ``num_orders`` passes.

    Returns:
        (B, N, P) patches, equal to ``patches`` where ``observed``.
    """
    p = model.patchify
    B = patches.shape[0]
    if patches.ndim != 3 or patches.shape[1:] != (p.num_patches, p.dim):
        raise ValueError(
            f"patches must have shape (B, {p.num_patches}, {p.dim}); got {tuple(patches.shape)}"
        )
    if observed.shape != (B, p.num_patches) or observed.dtype != torch.bool:
        raise ValueError(
            f"observed must be bool of shape ({B}, {p.num_patches}); "
            f"got {observed.dtype} {tuple(observed.shape)}"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0; got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None; got {top_k}")
    if num_orders < 1:
        raise ValueError(f"num_orders must be >= 1; got {num_orders}")
    patches = patches.to(model.device)
    observed = observed.to(model.device)
    if not torch.isfinite(patches[observed]).all():
        raise ValueError("observed patches contain NaN or Inf")
    draw = dict(
        temperature=temperature,
        top_k=top_k,
        noise=_noise_factor(model, noise, noise_scale),
        generator=generator,
    )
    method = _check_method(model, method)
    if num_orders > 1 and not (method == "query" and _is_named(prompt_order, "random")):
        raise ValueError(
            "num_orders > 1 averages one-pass predictions over random prompt orders: "
            f"pass method='query' and prompt_order='random' (got method={method!r}, "
            f"prompt_order={prompt_order!r})"
        )
    if not model.causal and not _is_named(prompt_order, "fixed"):
        raise ValueError(
            "prompt_order applies to autoregressive models; BEiT sees the prompt at once"
        )
    with _inference(model):
        sid = model.check_subject(subject_id, B, require=False)
        if method == "query":
            return _complete_query(
                model, patches, observed, sid, context, draw, prompt_order, num_orders
            )
        if method == "autoregressive":
            return _complete_autoregressive(
                model, patches, observed, sid, order, context, use_cache, draw, prompt_order
            )
        return _complete_parallel(model, patches, observed, sid, order, context, num_steps, draw)


def supports_query(model: Any) -> bool:
    """Whether ``model`` can complete in one pass (``method="query"``): a causal model
    with next-position queries and a KV cache (not legacy global registers)."""
    return bool(
        model.causal and model.backbone.has_next_pos_query and model.backbone.supports_cache
    )


def _is_named(order: Order, name: str) -> bool:
    """Whether ``order`` is the named order ``name`` (an order may also be a tensor,
    whose ``==`` compares elementwise)."""
    return isinstance(order, str) and order == name


def _check_method(model: Any, method: str | None) -> str | None:
    """The completion method to use: ``method``, or the model's default."""
    if not model.causal:
        if method is not None:
            raise ValueError(
                f"method={method!r} applies to autoregressive models; a bidirectional "
                "(BEiT) model decodes in parallel: pass method=None"
            )
        return None
    if method is None:
        return "query" if supports_query(model) else "autoregressive"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or None; got {method!r}")
    if method == "query" and not supports_query(model):
        raise ValueError(
            "method='query' needs next-position queries and a KV cache: this model was "
            "built with shuffle=False or legacy registers; use method='autoregressive'"
        )
    return method


def inpaint(
    model: Any,
    maps: torch.Tensor,
    known: torch.Tensor,
    *,
    subject_id: int | torch.Tensor | None = None,
    order: Order = "fixed",
    **kwargs: Any,
) -> torch.Tensor:
    """Complete maps of which only the ``known`` pixels are given.

    Args:
        maps: (B, H, W) (images: (B, C, H, W)); unknown pixels may hold anything,
            NaN included.
        known: bool, (H, W) or the shape of ``maps`` (or (B, H, W) for images): the
            pixels to keep.
        subject_id, order, **kwargs: as in :func:`complete` (e.g. ``method``,
            ``noise``).

    A patch whose in-mask pixels are all known is part of the prompt; the others are
    generated (by default in one pass for shuffled models, see :func:`complete`),
    then their known pixels are pasted back.

    Returns:
        Maps of the input's shape: the known pixels unchanged, the model's completion
        elsewhere inside the mask, zero outside it.
    """
    p = model.patchify
    maps = maps.to(model.device)
    known = torch.as_tensor(known, device=model.device).bool()
    if known.ndim == maps.ndim - 1 and p.channels > 1:
        known = known.unsqueeze(-3)  # one pixel mask for every channel
    try:
        known = known.expand_as(maps)
    except RuntimeError:
        raise ValueError(
            f"known must be (H, W) or match maps {tuple(maps.shape)}; got {tuple(known.shape)}"
        ) from None
    clean = torch.where(known, maps, torch.zeros((), dtype=maps.dtype, device=maps.device))
    model.check_maps(clean)
    known_patches = p(known.to(maps.dtype)) > 0
    observed = (known_patches | ~p.patch_mask).all(dim=-1)
    completed = complete(model, p(clean), observed, subject_id=subject_id, order=order, **kwargs)
    return torch.where(known, clean, p.inverse(completed))


def likelihood(
    model: Any,
    maps: torch.Tensor,
    *,
    subject_id: int | torch.Tensor | None = None,
    order: Order = "fixed",
    num_orders: int = 1,
    context: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-patch score of maps under an autoregressive model, (B, N) in slot order.

    Token models: negative log-likelihood (nats) of each patch's token given the
    patches before it in the order. Continuous models: squared error of the predicted
    patch, averaged over its in-mask pixels. With ``order="random"`` and
    ``num_orders`` > 1 the scores are averaged over that many random orders.
    """
    if not model.causal:
        raise ValueError("likelihood needs an autoregressive (IGPT) model")
    if num_orders < 1:
        raise ValueError(f"num_orders must be >= 1; got {num_orders}")
    if num_orders > 1 and not _is_named(order, "random"):
        raise ValueError("num_orders > 1 averages over random orders: pass order='random'")
    p = model.patchify
    maps = maps.to(model.device)
    with _inference(model):
        B = model.check_maps(maps)
        sid = model.check_subject(subject_id, B, require=False)
        patches = p(maps)
        N = p.num_patches
        total = torch.zeros(B, N, device=model.device)
        for _ in range(num_orders):
            seq_order = model.resolve_order(order, B, generator)
            seq = permute(patches, seq_order)
            end = seq_order.new_full((B, 1), N)
            out = model.decode(seq, seq_order, torch.cat([seq_order, end], 1), sid, context)
            out = out[:, :N].float()
            if model.tokenizer is not None:
                tokens = model.encode_targets(seq)
                score = F.cross_entropy(out.transpose(1, 2), tokens, reduction="none")
            else:
                m = p.patch_mask[seq_order].float()
                score = ((out - seq).square() * m).sum(-1) / m.sum(-1).clamp_min(1.0)
            total += unpermute(score, seq_order)
        return total / num_orders


def _noise_factor(model: Any, noise: str | None, scale: float) -> torch.Tensor | float | None:
    """What :func:`_draw` multiplies standard normal noise by: a (P, P) Cholesky factor
    of the residual covariance, a scalar std, or None (no noise)."""
    if noise is None:
        return None
    if noise not in ("white", "residual"):
        raise ValueError(f"noise must be None, 'white' or 'residual'; got {noise!r}")
    if scale < 0:
        raise ValueError(f"noise_scale must be >= 0; got {scale}")
    if model.tokenizer is not None:
        raise ValueError("noise applies to continuous models; token models sample tokens")
    if noise == "white":
        return float(scale)
    cov = model.residual_cov.float()
    if not bool(cov.diagonal().gt(0).any()):
        raise ValueError(
            "this model has no fitted residual covariance (model.residual_cov is zero): "
            "run boldgpt.generate.fit_residual_covariance(model, batches) first, or use "
            "noise='white'"
        )
    # a little jitter: pixels outside the mask have zero variance (their values are
    # zeroed anyway)
    jitter = 1e-5 * cov.diagonal().mean() * torch.eye(len(cov), device=cov.device)
    return scale * torch.linalg.cholesky(cov + jitter)


@torch.no_grad()
def fit_residual_covariance(
    model: Any,
    batches: Iterable[Mapping[str, torch.Tensor]],
    order: Order | None = None,
) -> torch.Tensor:
    """Estimate and store ``model.residual_cov`` (P, P): the covariance of the
    residual ``target - prediction`` of next-patch predictions over the patches that
    lie fully inside the mask, in ``order`` (default: random orders for a shuffled
    model, else its fixed order), on prepared ``batches`` (e.g. a few
    hundred training maps).

    MSE training fits the mean of a Gaussian predictive distribution; its maximum
    likelihood covariance is this one. Sampling with ``noise="residual"`` draws from
    it, which gives samples the spatial texture of real maps (the mean alone is
    smooth and flat). Returns the covariance.
    """
    if model.tokenizer is not None or not model.causal:
        raise ValueError("fit_residual_covariance needs a continuous autoregressive model")
    if order is None:
        order = "random" if model.shuffle else "fixed"
    interior = model.patchify.interior
    total = torch.zeros(model.patchify.dim, model.patchify.dim, dtype=torch.float64)
    count = 0
    with _inference(model):
        for batch in batches:
            out = model(batch, order=order)
            keep = interior[out.order]
            r = (out.target - out.output)[keep].double().cpu()  # (M, P)
            total += r.T @ r
            count += len(r)
    if count == 0:
        raise ValueError("no interior patches in the batches: cannot fit the covariance")
    cov = (total / count).float()
    model.residual_cov.copy_(cov.to(model.residual_cov.device))
    return cov


# ---- one-pass completion -----------------------------------------------------------


def _complete_query(
    model: Any,
    patches: torch.Tensor,
    observed: torch.Tensor,
    subject_id: torch.Tensor | None,
    context: torch.Tensor | None,
    draw: dict[str, Any],
    prompt_order: Order = "fixed",
    num_orders: int = 1,
) -> torch.Tensor:
    """Every hidden slot predicted from the observed patches alone, in one pass (per
    prompt order; ``num_orders`` passes are averaged before the draw).

    Sequence per sample b with k_b observed patches (observed slots first, in
    ``prompt_order``; prefix length R = num_prefix)::

        prompt:  [prefix_0 .. prefix_{R-1}, obs_1 .. obs_{k_b}, (padding to K)]
        queries: one token per slot j: (prompt token at R + k_b - 1, i.e. the last
                 observed patch or the last prefix token) + next_pos_query[j]

    A query token attends to the prompt positions before R + k_b - 1 and to itself,
    which is exactly what that token sees when the order puts j right after the
    observed patches; so its output is the model's prediction for j first. Each row
    queries its last Q = N - min_b k_b slots in sequence order (all its hidden ones,
    plus observed ones in rows with more observed patches, whose results are
    discarded): no per-sample loop.
    """
    B, N, P = patches.shape
    b = model.backbone
    R = b.num_prefix
    # hidden values are zeroed so that nothing can depend on them, even through
    # masked attention (0 x NaN would still be NaN)
    clean = torch.where(observed[..., None], patches, torch.zeros_like(patches))
    count = observed.sum(dim=1)  # (B,)
    K, Q = int(count.max()), N - int(count.min())
    if Q == 0:
        return patches.clone()
    total = None
    for _ in range(num_orders):
        seq_order = _sequence_order(model, observed, "fixed", draw["generator"], prompt_order)
        seq = permute(clean, seq_order)
        next_slots = torch.cat([seq_order, seq_order.new_full((B, 1), N)], dim=1)
        cache = b.init_cache(R + K + Q + 1)  # (+1: a completion token)
        prompt = (seq[:, :K], seq_order[:, :K], next_slots[:, : K + 1])
        model.decode(*prompt, subject_id, context, cache, num_outputs=1)
        tokens = torch.cat([b.prefix(subject_id, B), b.embed_patches(*prompt[:2])], dim=1)
        query_slots = seq_order[:, N - Q :]  # (B, Q): every hidden slot is among them
        head = model.completion is not None
        if head:  # and one completion token (the end query) for the whole map
            asked = torch.cat([query_slots, query_slots.new_full((B, 1), N)], dim=1)
        else:
            asked = query_slots
        x, attn_mask = model.query_tokens(tokens, R + count - 1, asked)
        h = b(x, context, cache, attn_mask=attn_mask[:, None])
        pred = model.predict(h[:, :Q]).float()
        if head:  # two answers to the same question, from one pass: their mean
            full = model.complete_from_tokens(h[:, Q:])[:, 0]
            pred = (pred + full.gather(1, query_slots[..., None].expand(B, Q, P)).float()) / 2
        if model.tokenizer is not None and num_orders > 1:
            pred = pred.softmax(dim=-1)  # average probabilities, not logits
        if total is None:
            total = pred.new_zeros(B, N, pred.shape[-1])
        total.scatter_add_(1, query_slots[..., None].expand_as(pred), pred)
    # per slot: the mean over the orders (observed slots may be asked in some, ignored)
    pred = total.gather(1, query_slots[..., None].expand(-1, -1, total.shape[-1])) / num_orders
    if model.tokenizer is not None and num_orders > 1:
        pred = pred.clamp_min(1e-30).log()
    values = _draw(model, pred.flatten(0, 1), query_slots.flatten(), **draw).view(B, Q, P)
    out = clean.scatter(1, query_slots[..., None].expand(B, Q, P), values.to(clean.dtype))
    return torch.where(observed[..., None], patches, out)


# ---- autoregressive decoding -------------------------------------------------------


def _sequence_order(
    model: Any,
    observed: torch.Tensor,
    order: Order,
    generator: torch.Generator | None,
    prompt_order: Order = "fixed",
) -> torch.Tensor:
    """(B, N) decoding order: observed slots first (in ``prompt_order``), then the
    rest in ``order``; for a model without queries, always the fixed order."""
    B, N = observed.shape
    if not model.shuffle:
        model.resolve_order(prompt_order, B)  # raises unless it is the fixed order
        return model.resolve_order(order, B)

    def rank(how: Order) -> torch.Tensor:  # (B, N) float: the step of each slot
        if _is_named(how, "random"):
            return torch.rand(B, N, generator=generator, device=observed.device)
        return model.resolve_order(how, B).argsort(dim=1).float()

    key = torch.where(observed, rank(prompt_order) - 2 * N, rank(order))
    return key.argsort(dim=1, stable=True)


def _complete_autoregressive(
    model: Any,
    patches: torch.Tensor,
    observed: torch.Tensor,
    subject_id: torch.Tensor | None,
    order: Order,
    context: torch.Tensor | None,
    use_cache: bool,
    draw: dict[str, Any],
    prompt_order: Order = "fixed",
) -> torch.Tensor:
    B, N, _ = patches.shape
    seq_order = _sequence_order(model, observed, order, draw["generator"], prompt_order)
    seq = permute(patches, seq_order)
    seq_observed = permute(observed, seq_order)
    next_slots = torch.cat([seq_order, seq_order.new_full((B, 1), N)], dim=1)
    # steps observed in every sample form a shared prompt, run in one pass
    k = int(seq_observed.long().cumprod(dim=1).sum(dim=1).min())
    out = seq.clone()
    if k == N:
        return patches.clone()
    # (legacy global registers see the whole sequence: nothing can be cached)
    use_cache = use_cache and model.backbone.supports_cache
    cache = model.init_cache() if use_cache else None
    pred = None
    for t in range(k, N):
        if cache is None:
            prefix = (out[:, :t], seq_order[:, :t], next_slots[:, : t + 1])
            pred = model.decode(*prefix, subject_id, context, num_outputs=1)
        elif t == k:
            prompt = (out[:, :k], seq_order[:, :k], next_slots[:, : k + 1])
            pred = model.decode(*prompt, subject_id, context, cache, num_outputs=1)
        new = _draw(model, pred[:, -1], seq_order[:, t], **draw)
        out[:, t] = torch.where(seq_observed[:, t, None], seq[:, t], new)
        if cache is not None and t < N - 1:
            step = (out[:, t : t + 1], seq_order[:, t : t + 1], next_slots[:, t + 1 : t + 2])
            pred = model.decode(*step, None, context, cache, num_outputs=1)
    return unpermute(out, seq_order)


def _draw(
    model: Any,
    pred: torch.Tensor,
    slots: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None,
    noise: torch.Tensor | float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Patches (M, P) from predictions (M, C) for slots (M,), zero outside the mask."""
    if model.tokenizer is not None:
        logits = pred.float()
        if temperature == 0:
            tokens = logits.argmax(dim=-1)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = logits.topk(top_k, dim=-1).values[..., -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = logits.softmax(dim=-1)
            tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
        values = model.tokenizer.decode(tokens)
    else:
        values = pred.float()
        if noise is not None:
            eps = torch.randn(values.shape, generator=generator, device=values.device)
            values = values + (eps @ noise.T if torch.is_tensor(noise) else noise * eps)
    return values * model.patchify.patch_mask[slots]


# ---- parallel decoding (BEiT) ------------------------------------------------------


def _complete_parallel(
    model: Any,
    patches: torch.Tensor,
    observed: torch.Tensor,
    subject_id: torch.Tensor | None,
    order: Order,
    context: torch.Tensor | None,
    num_steps: int | None,
    draw: dict[str, Any],
) -> torch.Tensor:
    B, N, _ = patches.shape
    num_steps = num_steps or min(N, 16)
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive; got {num_steps}")
    if _is_named(order, "random"):
        rank = torch.rand(B, N, generator=draw["generator"], device=patches.device)
    elif _is_named(order, "fixed"):
        rank = torch.arange(N, device=patches.device).float().expand(B, N)
    else:
        rank = _check_permutation(order, B, N, patches.device).argsort(dim=1).float()
    # position of each unknown slot in the commit sequence (observed ones last)
    position = torch.where(observed, torch.inf, rank).argsort(dim=1).argsort(dim=1)
    unknown = (~observed).sum(dim=1, keepdim=True)
    out = torch.where(observed[..., None], patches, torch.zeros_like(patches))
    known = observed.clone()
    for step in range(num_steps):
        # cosine schedule: the share still unknown after this step (MaskGIT)
        still = math.cos(math.pi / 2 * (step + 1) / num_steps)
        done = unknown - torch.floor(unknown * still).long()
        commit = ~known & (position < done)
        if not commit.any():
            continue
        pred = model.predict_masked(out, ~known, subject_id, context)
        slots = torch.nonzero(commit)[:, 1]
        out[commit] = _draw(model, pred[commit], slots, **draw).to(out.dtype)
        known |= commit
    return out


def _check_permutation(order: torch.Tensor, B: int, N: int, device: torch.device) -> torch.Tensor:
    order = torch.as_tensor(order, device=device)
    if order.ndim == 1:
        order = order.expand(B, -1)
    if order.shape != (B, N) or order.is_floating_point():
        raise ValueError(f"order must be integer slots of shape ({N},) or ({B}, {N})")
    if not torch.equal(order.sort(dim=1).values, torch.arange(N, device=device).expand(B, N)):
        raise ValueError(f"order must be a permutation of the {N} slots in every row")
    return order.long()
