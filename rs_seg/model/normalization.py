"""Per-band normalization: what a model's inputs are divided into, in training and inference alike.

It lives with the model contract, not with training, because a bundle carries it and every
predictor applies it; inference must not load the training stack to read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """Per-band mean and standard deviation of the training chips, in model band order."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(
        self, image: np.ndarray, valid: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """(bands, H, W) raw values -> float32 z-scores; invalid and non-finite pixels become 0.

        ``out`` (float32, bands x H x W, any strides) receives the result: scene inference
        normalizes each window (or the rows of it one chunk holds) straight into its batch.
        Two shortcuts keep the one code path cheap: integer images
        cannot hold NaN or infinity (no scan for them), and a window with every pixel valid
        needs no masking.
        """
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        scale = (1 / np.asarray(self.std, dtype=np.float32))[:, None, None]
        if out is None:
            out = np.empty(image.shape, dtype=np.float32)
        # a plain cast copy, then in place: faster than subtract(dtype=), which casts in
        # buffered pieces
        out[...] = image
        out -= mean
        out *= scale
        if not np.issubdtype(image.dtype, np.integer):
            np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if not valid.all():
            out[:, ~valid] = 0.0
        return out

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists for the model bundle and JSON reports."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, stats: dict[str, Any]) -> Normalization:
        """The inverse of :meth:`to_dict` (extra keys, such as the bands read, are ignored)."""
        return cls(tuple(stats["mean"]), tuple(stats["std"]))
