"""Seeing a study: cell diagrams, search dynamics, training curves, overlays, summaries and its status.

Everything here reads only the files the stages write (scnas.layout), so any results folder can be drawn
again later; the plotting modules import matplotlib, `status` imports neither it nor torch.
"""
