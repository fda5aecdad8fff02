"""Sliding-window prediction and export of segmentations in the input's geometry."""

from scnas.inference.sliding_window import sliding_window

__all__ = ["sliding_window"]
