"""Noise: stable 64-bit hashes of integer coordinates, and smooth value noise built on them.

Every decision that must not depend on the order of work (cell corners and kinds, rivers, crowns,
haze, sensor grain) is a hash of (seed, purpose, coordinates) rather than a draw from a shared
RNG. That is what lets any cell or pixel be rebuilt anywhere, in any window, with the same value.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, cast, overload

import numpy as np
import numpy.typing as npt

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def seed_key(seed: int, salt: str) -> int:
    """A 64-bit key per (seed, purpose); blake2b rather than hash() so it is stable across runs."""
    digest = hashlib.blake2b(f"{seed}/{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _mix64(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64 finaliser: cheap, vectorised, and good enough to look like white noise."""
    h = h ^ (h >> np.uint64(30))
    h = h * _MIX1
    h = h ^ (h >> np.uint64(27))
    h = h * _MIX2
    return h ^ (h >> np.uint64(31))


def hash_coords(key: int, *coords: Any) -> npt.NDArray[np.uint64]:
    """Hash integer coordinates (broadcast together) with a key into uint64 values."""
    arrays = [np.asarray(c, dtype=np.int64).astype(np.uint64) for c in coords]
    h = np.full(np.broadcast_shapes(*(a.shape for a in arrays)), key, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a in arrays:
            h = _mix64(h ^ (a * _GOLDEN + _GOLDEN))
    return h


def unit_floats(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """Uniform floats in [0, 1) from hash values."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@overload
def _smoothstep(t: float) -> float: ...
@overload
def _smoothstep(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
def _smoothstep(t: float | npt.NDArray[np.float64]) -> float | npt.NDArray[np.float64]:
    return t * t * (3.0 - 2.0 * t)


def value_noise_at(key: int, x: float, y: float) -> float:
    """Value noise at one point (lattice spacing 1); used for cell-level decisions."""
    ix, iy = math.floor(x), math.floor(y)
    tx, ty = _smoothstep(x - ix), _smoothstep(y - iy)
    v = unit_floats(hash_coords(key, [iy, iy, iy + 1, iy + 1], [ix, ix + 1, ix, ix + 1]))
    top = v[0] * (1 - tx) + v[1] * tx
    bottom = v[2] * (1 - tx) + v[3] * tx
    return float(top * (1 - ty) + bottom * ty)


def value_noise(
    key: int, x0: int, y0: int, w: int, h: int, spacing: int
) -> npt.NDArray[np.float32]:
    """Smooth value noise over a window, separably interpolated (cheap: ~4 passes per pixel).

    The lattice and the interpolation weights depend on global coordinates only, so every pixel
    gets the same value whatever window it is rendered in.
    """
    xs = np.arange(x0, x0 + w, dtype=np.int64)
    ys = np.arange(y0, y0 + h, dtype=np.int64)
    ix, iy = xs // spacing, ys // spacing
    tx = _smoothstep((xs - ix * spacing) / spacing).astype(np.float32)
    ty = _smoothstep((ys - iy * spacing) / spacing).astype(np.float32)[:, None]
    lx = np.arange(ix[0], ix[-1] + 2)
    ly = np.arange(iy[0], iy[-1] + 2)
    lattice = unit_floats(hash_coords(key, ly[:, None], lx[None, :])).astype(np.float32)
    cx, cy = ix - ix[0], iy - iy[0]
    along_x = lattice[:, cx] * (1 - tx) + lattice[:, cx + 1] * tx
    # numpy's stubs type integer-array indexing as Any; the result is float32 throughout.
    return cast("npt.NDArray[np.float32]", along_x[cy] * (1 - ty) + along_x[cy + 1] * ty)
