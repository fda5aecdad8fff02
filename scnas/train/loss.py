"""The Jaccard distance loss the paper trains every network with (after Kayalibay et al. 2017)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def jaccard_loss(
    logits: Tensor,
    target: Tensor,
    smooth: float = 1e-5,
    from_probabilities: bool = False,
    reduce_sums: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """1 - soft IoU, averaged over the foreground classes 1..K-1, computed in float32.

    logits (B, K, ...) are turned into softmax probabilities (or are probabilities already when
    `from_probabilities`); target (B, ...) holds class indices. Each class's IoU pools all voxels of the
    whole batch (sum p*t / (sum p + sum t - sum p*t), smoothed), so a class absent from one sample does
    not count as a failure there; the per-class IoUs are then averaged with equal weight.
    `reduce_sums` (e.g. a differentiable all-reduce) pools the per-class sums over processes, so a
    multi-process batch gives exactly the loss of one process holding the whole batch.
    """
    if logits.ndim < 2 or logits.shape[1] < 2:
        raise ValueError(f"jaccard_loss needs logits (B, K, ...) with K >= 2 classes, got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"jaccard_loss: target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        scores = logits.float()
        probs = scores if from_probabilities else torch.softmax(scores, dim=1)
        foreground = torch.arange(1, logits.shape[1], device=logits.device).view(1, -1, *([1] * (target.ndim - 1)))
        onehot = (target.unsqueeze(1) == foreground).float()
        reduce = [0, *range(2, probs.ndim)]
        sums = torch.stack([(probs[:, 1:] * onehot).sum(reduce), probs[:, 1:].sum(reduce), onehot.sum(reduce)])
        if reduce_sums is not None:
            sums = reduce_sums(sums)
        intersection, prob_sum, target_sum = sums
        union = prob_sum + target_sum - intersection
        iou = (intersection + smooth) / (union + smooth)
        return 1.0 - iou.mean()
