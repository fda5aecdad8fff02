"""Metrics, per-fold summaries and cross-validation tables."""

from scnas.evaluation.metrics import dice, hausdorff

__all__ = ["dice", "hausdorff"]
