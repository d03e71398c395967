"""Contrastive losses between BOLD and image embeddings (CBIP): CLIP, SigLIP, cosine.

Every loss takes a batch of BOLD embeddings ``bold`` (B, C), the image embeddings of
the same trials ``image`` (B, C) and, optionally, the stimulus of each trial
``stimulus_id`` (B,) int64 (NSD ids). Trials that share a stimulus are all positives
of each other: in NSD a picture is shown up to three times to a subject (and the
shared pictures to every subject), so a batch often holds the same picture twice,
and calling its second trial a negative would push apart embeddings that must match.
Without ``stimulus_id`` each trial is its own stimulus (the usual CLIP diagonal).

Embeddings are L2-normalised inside the losses; ``s`` below is the cosine similarity
matrix, ``s[i, j] = <bold_i, image_j> / (|bold_i| |image_j|)``, and ``pos[i, j]`` is 1
when trials i and j show the same stimulus.

- :class:`ClipLoss`: InfoNCE both ways with a learned temperature. Logits
  ``t * s``, ``t = exp(log_scale)`` (clamped to at most 100). Each row's target is
  uniform over its positives, ``pos[i] / sum_j pos[i, j]``; the loss is the mean of
  the BOLD->image (rows) and image->BOLD (columns) cross-entropies.
- :class:`SigLipLoss`: a sigmoid per pair with learned scale and bias: logits
  ``t * s + b``, labels ``z = 2 pos - 1``; loss ``-sum_ij log sigmoid(z_ij logits_ij) / B``
  (Zhai et al. 2023).
- :class:`CosineLoss`: ``mean_i (1 - s[i, i])``: each BOLD embedding regresses onto its
  own trial's image embedding (no negatives, no parameters).

Data parallel: under ``torch.distributed`` the CLIP and SigLIP losses first gather
every rank's embeddings and stimulus ids (:func:`gather_embeddings`), so the
negatives come from the global batch. The gather is
``torch.distributed.nn.functional.all_gather``, whose backward sends each rank the
gradient of every rank's loss with respect to its own embeddings: every rank
computes the same global loss, and after DDP averages the gradients they equal those
of one process holding the whole global batch. Every rank must hold the same number
of trials (train with ``drop_last``). Without an initialised process group the
gather is a no-op; ``gather=False`` skips it (CBIP evaluates per rank).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn

from boldgpt.errors import ConfigError

LOSSES = ("clip", "siglip", "cosine")
MAX_CLIP_SCALE = 100.0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_embeddings(x: torch.Tensor) -> torch.Tensor:
    """Concatenate (B, ...) tensors of every rank in rank order -> (world * B, ...);
    the gradient flows back to each rank's own part. Identity when not distributed.
    Every rank must pass the same shape."""
    if not _distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """Like :func:`gather_embeddings` for tensors that need no gradient (stimulus ids)."""
    if not _distributed():
        return ids
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts, dim=0)


def positives(
    stimulus_id: torch.Tensor | None, batch_size: int, device: torch.device
) -> torch.Tensor:
    """(B, B) float, 1 where two trials show the same stimulus (the diagonal always)."""
    if stimulus_id is None:
        return torch.eye(batch_size, device=device)
    sid = torch.as_tensor(stimulus_id, device=device)
    if sid.shape != (batch_size,) or sid.is_floating_point():
        raise ValueError(
            f"stimulus_id must be integers of shape ({batch_size},); "
            f"got {sid.dtype} {tuple(sid.shape)}"
        )
    return (sid[:, None] == sid[None, :]).float()


def _check_pair(bold: torch.Tensor, image: torch.Tensor) -> None:
    if bold.ndim != 2 or image.ndim != 2 or bold.shape != image.shape:
        raise ValueError(
            "contrastive losses take bold and image embeddings of the same shape (B, C); "
            f"got {tuple(bold.shape)} and {tuple(image.shape)}"
        )


def _similarities(
    bold: torch.Tensor, image: torch.Tensor, stimulus_id: torch.Tensor | None, gather: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities (B', B') and positives (B', B') over the global batch
    (``gather``) or the local one."""
    _check_pair(bold, image)
    if stimulus_id is not None:
        stimulus_id = torch.as_tensor(stimulus_id, device=bold.device)
        positives(stimulus_id, bold.shape[0], bold.device)  # shape check on the local part
        if gather:
            stimulus_id = gather_ids(stimulus_id)
    if gather:
        bold, image = gather_embeddings(bold.float()), gather_embeddings(image.float())
    bold, image = F.normalize(bold.float(), dim=-1), F.normalize(image.float(), dim=-1)
    return bold @ image.T, positives(stimulus_id, bold.shape[0], bold.device)


def _retrieval_top1(sim: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Share of BOLD rows whose most similar image is a positive."""
    with torch.no_grad():
        best = sim.argmax(dim=1)
        return pos.gather(1, best[:, None]).mean()


class ContrastiveLoss(nn.Module):
    """Base of the losses: ``forward(bold (B, C), image (B, C), stimulus_id (B,) | None,
    *, gather=True) -> (scalar loss, metrics)``; subclasses score the similarity matrix
    and the positives in :meth:`score`. ``gather=False``: this rank's batch only (e.g.
    evaluation, where the last batches of the ranks may differ in size)."""

    gathers = True  # whether negatives come from the global batch

    def forward(
        self,
        bold: torch.Tensor,
        image: torch.Tensor,
        stimulus_id: torch.Tensor | None = None,
        *,
        gather: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sim, pos = _similarities(bold, image, stimulus_id, gather and self.gathers)
        loss, metrics = self.score(sim, pos)
        return loss, {**metrics, "top1": _retrieval_top1(sim, pos)}

    def score(
        self, sim: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, extra metrics) from cosine similarities (B, B) and positives (B, B)."""
        raise NotImplementedError


class ClipLoss(ContrastiveLoss):
    """Symmetric InfoNCE with every trial of the same stimulus a positive.

    Args:
        init_temperature: starting temperature tau (logits = s / tau); the learned
            parameter is ``log_scale = log(1 / tau)``.
    """

    def __init__(self, init_temperature: float = 0.07):
        super().__init__()
        if not init_temperature > 1.0 / MAX_CLIP_SCALE:
            raise ConfigError(
                f"init_temperature must be > {1 / MAX_CLIP_SCALE}; got {init_temperature}"
            )
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def score(self, sim, pos):
        scale = self.log_scale.clamp(max=math.log(MAX_CLIP_SCALE)).exp()
        logits = scale * sim
        target = pos / pos.sum(dim=1, keepdim=True)  # pos is symmetric: columns alike
        bold_to_image = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
        image_to_bold = -(target.T * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
        return (bold_to_image + image_to_bold) / 2, {"scale": scale.detach()}


class SigLipLoss(ContrastiveLoss):
    """Pairwise sigmoid loss with learned scale and bias (duplicates are positives).

    Args:
        init_scale, init_bias: starting ``t`` (learned as ``log_scale``) and ``b``; the
            SigLIP paper's 10 and -10 make the many negatives start near zero loss.
    """

    def __init__(self, init_scale: float = 10.0, init_bias: float = -10.0):
        super().__init__()
        if not init_scale > 0:
            raise ConfigError(f"init_scale must be positive; got {init_scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def score(self, sim, pos):
        scale = self.log_scale.exp()
        logits = scale * sim + self.bias
        labels = 2 * pos - 1
        loss = -F.logsigmoid(labels * logits).sum() / sim.shape[0]
        return loss, {"scale": scale.detach(), "bias": self.bias.detach()}


class CosineLoss(ContrastiveLoss):
    """``mean_i (1 - cos(bold_i, image_i))``: regression onto each trial's own target.
    ``stimulus_id`` only serves the retrieval metric (the loss has no negatives, so it
    never gathers)."""

    gathers = False

    def score(self, sim, pos):
        return (1 - sim.diagonal()).mean(), {}


def make_contrastive_loss(name: str) -> nn.Module:
    """The loss module called ``name`` (one of :data:`LOSSES`), default settings."""
    if name == "clip":
        return ClipLoss()
    if name == "siglip":
        return SigLipLoss()
    if name == "cosine":
        return CosineLoss()
    raise ConfigError(f"contrastive loss must be one of {LOSSES}; got {name!r}")
