"""Invertible transforms of weight matrices (the Fourier domain of LLaVA-FA)."""

from llava_fa.transforms.fourier import (
    MODES,
    column_weights,
    dof,
    entry_weights,
    fill,
    forward,
    gather,
    inverse,
    project,
    row_counts,
    self_conjugate_columns,
    spectrum_shape,
    stored_masks,
    weighted_norm_sq,
)

__all__ = ["MODES", "column_weights", "dof", "entry_weights", "fill", "forward", "gather", "inverse", "project",
           "row_counts", "self_conjugate_columns", "spectrum_shape", "stored_masks", "weighted_norm_sq"]
