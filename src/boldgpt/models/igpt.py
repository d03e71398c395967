"""IGPT (boldGPT): autoregressive next-patch prediction over the patches of a map, in
the model's fixed order or in a fresh random order per sample (shuffled training).

With an order pi (B, N) of the slots, the sequence is
``[subject token (+ registers), patch pi_0, ..., patch pi_{N-1}]`` under causal
attention, and the output at step t predicts the patch at slot pi_t from the subject
and patches pi_0..pi_{t-1}; the next-position query tells each position which slot
that is (see :mod:`boldgpt.models.transformer`). Targets are the patch values (MSE on
in-mask pixels only) or their k-means token ids (cross-entropy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from boldgpt.models.config import IGPTConfig, PatchModelConfig
from boldgpt.models.layers import KVCache
from boldgpt.models.transformer import ModelOutput, PatchModel, _trunc_normal_
from boldgpt.patching import mixed_orders, permute, random_order

COMPLETION_CUTS = 4
"""Cuts per training sample at which a completion head is trained."""
COMPLETION_PROMPT_SIZES = (0.1, 0.7)
"""Shares of the slots observed before a random training cut: prompts of the sizes users
give (a region, a hemisphere, most of a map), not a few patches or all but a few."""


class IGPT(PatchModel):
    """Causal transformer over the patches of a flat map (or image).

    Built as ``IGPT(config, mask, patch_indices=None)`` from an :class:`IGPTConfig`
    (every architecture field, see there and
    :class:`~boldgpt.models.config.PatchModelConfig`), the mask of the data (None
    for an image model) and optionally a stored patch order. ``config.shuffle``:
    train in a random order per sample with next-position queries, so the model can
    decode in any order; otherwise only in its fixed order.
    """

    causal = True
    config_class = IGPTConfig
    config: IGPTConfig

    def __init__(
        self,
        config: IGPTConfig,
        mask: np.ndarray | torch.Tensor | None = None,
        patch_indices: torch.Tensor | Sequence[int] | None = None,
    ):
        super().__init__(config, mask, patch_indices)
        self.shuffle = config.shuffle
        # for spatially structured training orders (config.order_mix), in patch-grid
        # units: integers, so casting the model (bf16) leaves them exact; not saved
        # (derived from the mask and the order)
        p = self.patchify
        grid = torch.stack([p.patch_indices // p.grid[1], p.patch_indices % p.grid[1]], 1)
        self.register_buffer("slot_grid", grid, persistent=False)
        # the hemisphere midline (mask pixels' mean column) in grid units: a patch
        # centre c_px = col * size + (size - 1) / 2 - left lies left of it iff col does
        left = p.padding[0]
        self.midline = (p.midline() + left - (p.patch_size - 1) / 2) / p.patch_size
        self.completion: nn.Sequential | None = None
        if config.completion_head:
            # low rank: the completion token's output -> K coefficients -> every patch
            K = config.completion_head
            self.completion = nn.Sequential(
                nn.Linear(config.embed_dim, K, bias=False), nn.Linear(K, p.num_patches * p.dim)
            )
            for m in self.completion:
                _trunc_normal_(m.weight)
            nn.init.zeros_(self.completion[1].bias)

    @classmethod
    def backbone_options(cls, config: PatchModelConfig) -> dict[str, Any]:
        assert isinstance(config, IGPTConfig)
        return {
            "next_pos_query": config.shuffle,
            "register_layout": "legacy_global" if config.legacy_registers else "prefix",
        }

    def estimate_flops(self, context_len: int = 0) -> int:
        """As :meth:`PatchModel.estimate_flops`, plus the completion tokens and head at
        their ``COMPLETION_CUTS`` training cuts."""
        flops = super().estimate_flops(context_len)
        if self.completion is not None:
            b = self.backbone
            T = b.num_prefix + self.num_patches
            per_token = sum(m.weight.numel() for m in b.modules() if isinstance(m, nn.Linear))
            head = sum(m.weight.numel() for m in self.completion)
            attention = 4 * len(b.blocks) * T * b.embed_dim
            flops += COMPLETION_CUTS * (2 * per_token + attention + 2 * head)
        return flops

    # ---- orders --------------------------------------------------------------------

    def fixed_order(self, batch_size: int) -> torch.Tensor:
        """(B, N) the fixed order: slot t at step t."""
        return torch.arange(self.num_patches, device=self.device).expand(batch_size, -1)

    def resolve_order(
        self,
        order: str | torch.Tensor | None,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The (B, N) order of a forward pass.

        ``None``: while training a shuffled model, an order per sample drawn from
        ``config.order_mix`` (by default uniformly random; torch's global RNG, or
        ``generator``), else the fixed order; ``"fixed"``; ``"random"`` (uniform);
        or a permutation of the N slots, (N,) or (B, N).
        """
        N = self.num_patches
        if order is None:
            if not (self.shuffle and self.training):
                order = "fixed"
            elif self.config.order_mix == {"random": 1.0}:
                order = "random"
            else:
                return self._mixed_orders(batch_size, generator)[0]
        if isinstance(order, str):
            if order == "fixed":
                return self.fixed_order(batch_size)
            if order != "random":
                raise ValueError(f"order must be 'fixed', 'random' or a tensor; got {order!r}")
            self._require_shuffle("a random order")
            return random_order(batch_size, N, generator=generator, device=self.device)[0]
        order = torch.as_tensor(order, device=self.device)
        if order.ndim == 1:
            order = order.expand(batch_size, -1)
        if order.shape != (batch_size, N) or order.is_floating_point():
            raise ValueError(
                f"order must be integer slots of shape ({N},) or ({batch_size}, {N}); "
                f"got {order.dtype} {tuple(order.shape)}"
            )
        arange = torch.arange(N, device=order.device)
        if not torch.equal(order.sort(dim=1).values, arange.expand_as(order)):
            raise ValueError(f"order must be a permutation of the {N} slots in every row")
        if not self.shuffle and not torch.equal(order, arange.expand_as(order)):
            self._require_shuffle("an order other than the fixed one")
        return order.long()

    def _mixed_orders(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training orders (B, N) drawn from ``config.order_mix`` and their natural
        prompt sizes (B,) (see :func:`~boldgpt.patching.mixed_orders`)."""
        return mixed_orders(
            batch_size,
            self.slot_grid,
            self.config.order_mix,
            midline=self.midline,
            generator=generator,
            device=self.device,
            return_cuts=True,
        )

    def _require_shuffle(self, what: str) -> None:
        if not self.shuffle:
            raise ValueError(
                f"{what} needs next-position queries; this model was built with "
                "shuffle=False and only decodes in its fixed order"
            )

    # ---- the network ---------------------------------------------------------------

    def decode(
        self,
        patches: torch.Tensor,
        slots: torch.Tensor,
        next_slots: torch.Tensor | None,
        subject_id: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        cache: KVCache | None = None,
        num_outputs: int | None = None,
    ) -> torch.Tensor:
        """Predictions for a sequence (or, with a cache, its continuation).

        Args:
            patches: (B, T, P) the patches of the sequence, in sequence order.
            slots: (B, T) or (T,) their slots.
            next_slots: (B, L) the slot each output must predict, N = the end; L = T + 1
                when the sequence starts here (the last prefix token predicts the
                first slot), L = T when continuing a cache. Ignored (may be None)
                without next-position queries.
            subject_id: (B,) or None (group prior); used when the sequence starts.
            context: (B, M, context_dim) for cross-attention models.
            cache: a KV cache (:meth:`init_cache`); empty = start, else continue.
            num_outputs: return only the last this many predictions.

        Returns:
            (B, L or num_outputs, C): predictions for ``next_slots``.
        """
        b = self.backbone
        B, T = patches.shape[:2]
        x = b.embed_patches(patches, slots)
        starts = cache is None or cache.length == 0
        if starts:
            x = torch.cat([b.prefix(subject_id, B), x], dim=1)
        L = T + 1 if starts else T
        if b.has_next_pos_query:
            if next_slots is None or next_slots.shape != (B, L):
                got = None if next_slots is None else tuple(next_slots.shape)
                raise ValueError(f"next_slots must have shape ({B}, {L}); got {got}")
            # queries ride on the last L tokens: the last prefix token and the patches
            x = x + F.pad(b.queries(next_slots), (0, 0, x.shape[1] - L, 0))
        h = b(x, context, cache)
        return self.predict(h[:, -(num_outputs or L) :])

    def query_tokens(
        self, tokens: torch.Tensor, last: torch.Tensor, query_slots: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-pass query tokens: each hidden slot asked directly after a cut.

        The token at ``last`` is the one whose output predicts the step after the cut
        (the last observed patch, or the last prefix token when nothing is observed).
        A query token is that token with the next-position query of slot j instead;
        it attends to the tokens before ``last`` and to itself, which is what ``last``
        sees, so its output is the model's prediction for j placed right after the cut.
        Slot N (the end query) asks for the rest of the map: a model's completion
        token, read by its completion head.

        Args:
            tokens: (B, T, D) embedded sequence (prefix + patches, no queries added).
            last: (B,) long, index of the cut's token in ``tokens``, or (B, Q) a cut
                per query token.
            query_slots: (B, Q) the slots asked.

        Returns:
            (B, Q, D) the query tokens and (B, Q, T + Q) bool, what each may attend to
            among ``tokens`` followed by the query tokens.
        """
        B, T, D = tokens.shape
        Q = query_slots.shape[1]
        last = last.expand(Q, B).T if last.ndim == 1 else last  # (B, Q)
        x = tokens.gather(1, last[..., None].expand(B, Q, D)) + self.backbone.queries(query_slots)
        sees = torch.arange(T, device=tokens.device) < last[..., None]  # (B, Q, T)
        itself = torch.eye(Q, dtype=torch.bool, device=tokens.device).expand(B, Q, Q)
        return x, torch.cat([sees, itself], dim=2)

    def query_predictions(
        self,
        seq: torch.Tensor,
        order: torch.Tensor,
        next_slots: torch.Tensor,
        subject_id: torch.Tensor | None,
        context: torch.Tensor | None,
        k: int | torch.Tensor,
        query_slots: torch.Tensor,
        *,
        hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass giving the next-patch predictions of a whole sequence and,
        for each slot in ``query_slots`` (B, Q), its prediction from the first ``k``
        patches of the order alone (an int, (B,) a cut per sample or (B, Q) one per
        query; see :meth:`query_tokens`): the one-pass query of
        ``generate.complete(method="query")``.

        Returns:
            (B, N + 1, C) as :meth:`decode` without a cache, and (B, Q, C); with
            ``hidden``, the backbone outputs before the head instead, (B, N + 1, D) and
            (B, Q, D) (what a completion head reads).
        """
        b = self.backbone
        B, T = seq.shape[:2]
        R = b.num_prefix
        base = torch.cat([b.prefix(subject_id, B), b.embed_patches(seq, order)], dim=1)
        x = base + F.pad(b.queries(next_slots), (0, 0, R - 1, 0))
        k = torch.as_tensor(k, device=seq.device)
        last = R - 1 + (k.expand(B) if k.ndim < 2 else k)
        extra, query_mask = self.query_tokens(base, last, query_slots)
        L, Q = R + T, query_slots.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril_()
        seq_mask = F.pad(causal, (0, Q)).expand(B, L, L + Q)  # the sequence never sees queries
        attn_mask = torch.cat([seq_mask, query_mask], dim=1)
        h = b(torch.cat([x, extra], dim=1), context, attn_mask=attn_mask[:, None])
        h, hq = h[:, R - 1 : L], h[:, L:]
        return (h, hq) if hidden else (self.predict(h), self.predict(hq))

    def complete_from_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """The completion head: every patch (B, C, N, P), in slot order, from the
        outputs (B, C, D) of completion tokens (end-query tokens, see
        :meth:`query_tokens`)."""
        if self.completion is None:
            raise ValueError("this model has no completion head (config.completion_head=0)")
        B, C = hidden.shape[:2]
        return self.completion(hidden).view(B, C, self.num_patches, self.patchify.dim)

    def completion_cuts(self, batch_size: int, cuts: torch.Tensor | None) -> torch.Tensor:
        """(B, COMPLETION_CUTS) training cuts (observed patches, 1..N-1): at random
        within ``COMPLETION_PROMPT_SIZES`` of the slots, except the first of a
        structured order with a natural prompt (``cuts`` > 0, from
        :meth:`_mixed_orders`), which is cut there."""
        N = self.num_patches
        lo, hi = (max(1, min(N - 1, round(f * N))) for f in COMPLETION_PROMPT_SIZES)
        k = torch.randint(lo, hi + 1, (batch_size, COMPLETION_CUTS), device=self.device)
        if cuts is not None:
            k[:, 0] = torch.where(cuts > 0, cuts.clamp(1, N - 1), k[:, 0])
        return k

    def completion_loss(
        self, predicted: torch.Tensor, patches: torch.Tensor, order: torch.Tensor, k: torch.Tensor
    ) -> torch.Tensor:
        """MSE of completions ``predicted`` (B, C, N, P) against ``patches`` (B, N, P),
        both in slot order, over the in-mask pixels of the slots at steps >= k (B, C)
        of ``order`` (B, N): what each cut hid."""
        hidden = order.argsort(dim=1)[:, None, :] >= k[..., None]  # (B, C, N)
        pixel_mask = hidden[..., None] & self.patchify.patch_mask
        return self.masked_mse(predicted, patches[:, None].expand_as(predicted), pixel_mask)

    def init_cache(self) -> KVCache:
        """An empty KV cache for decoding full sequences (prefix + N patches); its
        buffers are allocated on first use, for that batch."""
        return self.backbone.init_cache(self.backbone.num_prefix + self.num_patches)

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        order: str | torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Next-patch prediction loss of a prepared batch.

        Args:
            batch: ``activity`` (B, H, W) float z-values (or ``image`` (B, C, H, W) for
                image models) and ``subject_id`` (B,) int64.
            order: see :meth:`resolve_order` (default: random per sample while
                training a shuffled model, else fixed).
            context: (B, M, context_dim) for cross-attention models.

        Returns:
            :class:`ModelOutput` with ``output`` (B, N, C) in sequence order,
            ``target``, ``order`` (B, N) and the loss: MSE over in-mask pixels, or
            mean cross-entropy over all B x N tokens.
        """
        maps, subject_id = self.check_inputs(batch)
        patches = self.patchify(maps)
        B, N = patches.shape[:2]
        Q = min(self.config.query_tokens, N - 1) if self.training else 0
        head = self.completion is not None and self.training
        cuts = None
        mixed = self.shuffle and self.config.order_mix != {"random": 1.0}
        if (Q or head) and order is None and mixed:
            order, cuts = self._mixed_orders(B)  # permutations by construction
        else:
            order = self.resolve_order(order, B)
        seq = permute(patches, order)
        end = order.new_full((B, 1), N)
        next_slots = torch.cat([order, end], dim=1)
        if Q:
            # the cut per sample (k observed patches): where a structured order's
            # natural prompt ends (one whole hemisphere), else anywhere
            k = torch.randint(1, N - Q + 1, (B,), device=order.device)
            if cuts is not None:
                k = torch.where(cuts > 0, cuts.clamp(1, N - Q), k)
            # Q hidden positions per sample, drawn among steps k .. N-1 of its order
            steps = torch.arange(N, device=order.device)
            keys = torch.rand(B, N, device=order.device).masked_fill(steps < k[:, None], 2.0)
            picked = keys.argsort(dim=1)[:, :Q]
            query_slots = order.gather(1, picked)
            output, queried = self.query_predictions(
                seq, order, next_slots, subject_id, context, k, query_slots
            )
            output = output[:, :N]
            predictions = torch.cat([output, queried], dim=1)
            targets = torch.cat(
                [seq, seq.gather(1, picked[..., None].expand(-1, -1, seq.shape[2]))], 1
            )
            slots = torch.cat([order, query_slots], dim=1)
        elif head:
            # completion tokens (end queries) at a few cuts, beside the sequence
            k = self.completion_cuts(B, cuts)
            end = order.new_full(k.shape, N)
            h, hc = self.query_predictions(
                seq, order, next_slots, subject_id, context, k, end, hidden=True
            )
            output = self.predict(h)[:, :N]
            completion = self.completion_loss(self.complete_from_tokens(hc), patches, order, k)
            predictions, targets, slots = output, seq, order
        else:
            output = self.decode(seq, order, next_slots, subject_id, context)[:, :N]
            predictions, targets, slots = output, seq, order  # the end query predicts nothing
        metrics: dict[str, torch.Tensor] = {}
        if self.tokenizer is not None:
            tokens = self.encode_targets(targets)  # the sequence's, then the queried ones
            target = tokens[:, :N]

            def loss_of(part: slice) -> torch.Tensor:
                return F.cross_entropy(
                    predictions[:, part].flatten(0, 1).float(), tokens[:, part].flatten()
                )

            with torch.no_grad():
                metrics["accuracy"] = (output.argmax(-1) == target).float().mean()
        else:
            target = seq
            pixel_mask = self.patchify.patch_mask[slots]

            def loss_of(part: slice) -> torch.Tensor:
                return self.masked_mse(predictions[:, part], targets[:, part], pixel_mask[:, part])

        w = self.config.query_weight
        if Q and w is not None:
            query_loss = loss_of(slice(N, None))
            metrics["query_loss"] = query_loss.detach()
            loss = (1.0 - w) * loss_of(slice(0, N)) + w * query_loss
        else:
            loss = loss_of(slice(None))
        if head:
            metrics["next_patch_loss"] = loss.detach()  # (the loss below adds the head's)
            metrics["completion_loss"] = completion.detach()
            loss = loss + self.config.completion_weight * completion
        return ModelOutput(
            loss=loss, output=output, target=target, patches=patches, order=order, metrics=metrics
        )
