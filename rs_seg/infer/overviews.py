"""COG overviews built while the rows are written, so the COG copy does not compute them.

GDAL's COG driver builds the overviews of the probability raster in its copy, which reads the
finished scratch raster again for every level, most of the copy's time. Rows are written top to
bottom, so each level can instead be averaged from the level below as the rows arrive, in the
writer thread, beside the model. Every level is a tiled scratch GeoTIFF; a VRT of the scratch
raster lists them as its overviews, and the COG driver copies them
(``OVERVIEWS=FORCE_USE_EXISTING``).

The levels are what the COG driver makes itself: factors 2, 4, 8, ... until a level fits in one
512 px block, each pixel the mean of the valid pixels (not nodata 255) of the 2 x 2 pixels below
it, rounded half up; nodata where none is valid. Memory is one row of each level.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window

BLOCK = 512  # the COG's block size: predict.COG_OPTIONS takes it from here


def overview_factors(height: int, width: int, block: int = BLOCK) -> list[int]:
    """The factors GDAL's COG driver picks with ``OVERVIEWS=AUTO``: halving until one block."""
    factors: list[int] = []
    factor = 2
    while max(height, width) > block * factor // 2:
        factors.append(factor)
        factor *= 2
    return factors


def halve(rows: np.ndarray, nodata: int) -> np.ndarray:
    """2 x 2 means of valid pixels of uint8 ``rows`` (bands x rows x cols), rows even or one.

    An odd last column (and a single last row) is averaged with what it has. The four pixels of
    each block are taken as four strided views, summed and counted elementwise, which is much
    faster than a reduction over a reshaped 5-d view; rows without nodata are only summed, and rows
    of nodata only (most of a mostly empty scene) give nodata at once.
    """
    bands, height, width = rows.shape
    pad_rows, pad_cols = height % 2 if height > 1 else 1, width % 2
    if pad_rows or pad_cols:
        padded = np.full((bands, height + pad_rows, width + pad_cols), nodata, dtype=rows.dtype)
        padded[:, :height, :width] = rows
        rows = padded
    quads = [rows[:, dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)]
    is_nodata = rows == nodata
    if is_nodata.all():
        return np.full(quads[0].shape, nodata, dtype=np.uint8)
    if not is_nodata.any():  # padding is nodata, so these rows were whole and all valid
        # every pixel valid (most rows of most scenes): a sum and a shift, a seventh of the time
        total = quads[0].astype(np.uint16)
        for quad in quads[1:]:
            total += quad
        total += 2
        return (total >> 2).astype(np.uint8)
    total = np.zeros(quads[0].shape, dtype=np.uint16)
    count = np.zeros(quads[0].shape, dtype=np.uint16)
    for quad in quads:
        valid = quad != nodata
        total += np.multiply(quad, valid, dtype=np.uint16)
        count += valid
    empty = count == 0
    np.maximum(count, 1, out=count)
    out = ((total + (count >> 1)) // count).astype(np.uint8)
    out[empty] = nodata
    return out


class _Level:
    """One overview level: its scratch GeoTIFF and the odd row waiting for its pair."""

    def __init__(self, path: Path, profile: dict[str, Any], factor: int) -> None:
        height, width = profile["height"], profile["width"]
        self.path = path
        self.shape = (-(-height // factor), -(-width // factor))
        transform = profile["transform"] * Affine.scale(
            width / self.shape[1], height / self.shape[0]
        )
        level_profile = {**profile, "height": self.shape[0], "width": self.shape[1],
                         "transform": transform}  # fmt: skip
        self.dst = rasterio.open(path, "w", **level_profile)
        self.nodata = int(profile["nodata"])
        self.carry = np.empty((profile["count"], 0, width), dtype=np.uint8)
        self.top = 0  # next row of this level to write

    def push(self, rows: np.ndarray, last: bool) -> np.ndarray:
        """Rows of the level below; returns (and writes) this level's rows they complete."""
        stacked = np.concatenate([self.carry, rows], axis=1) if self.carry.shape[1] else rows
        pairs = stacked.shape[1] if last else stacked.shape[1] // 2 * 2
        self.carry = stacked[:, pairs:].copy()
        if pairs == 0:
            return stacked[:, :0, : self.shape[1]]
        out = halve(stacked[:, :pairs], self.nodata)
        self.dst.write(out, window=Window(0, self.top, out.shape[2], out.shape[1]))
        self.top += out.shape[1]
        return out


class OverviewPyramid:
    """The overview levels of a uint8 raster written top to bottom (a context manager).

    ``add`` takes each block of finished rows (all bands) as it is written; ``write_vrt`` then
    describes the raster with its levels for the COG copy.
    """

    def __init__(self, base: Path, profile: dict[str, Any], block: int = BLOCK) -> None:
        self.base = Path(base)
        self.height = int(profile["height"])
        self._rows = 0
        self._stack = ExitStack()
        self.levels: list[_Level] = []
        try:
            for factor in overview_factors(profile["height"], profile["width"], block):
                path = self.base.with_name(f"{self.base.stem}.ovr{factor}.tif")
                level = _Level(path, {**profile, "driver": "GTiff"}, factor)
                self._stack.callback(level.dst.close)
                self.levels.append(level)
        except BaseException:
            self.remove()  # the levels created before the failure
            raise

    def __enter__(self) -> OverviewPyramid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, rows: np.ndarray) -> None:
        """The next ``rows`` (bands x n x width) of the raster, in order."""
        self._rows += rows.shape[1]
        last = self._rows >= self.height
        for level in self.levels:
            rows = level.push(rows, last)
            if rows.shape[1] == 0 and not last:
                break

    def close(self) -> None:
        """Close the level files (they stay until :meth:`remove`)."""
        self._stack.close()

    def remove(self) -> None:
        """Delete the level files and the VRT."""
        self.close()
        for level in self.levels:
            level.path.unlink(missing_ok=True)
        self.vrt_path.unlink(missing_ok=True)

    @property
    def vrt_path(self) -> Path:
        """Where :meth:`write_vrt` writes: beside the base raster."""
        return self.base.with_suffix(".vrt")

    def write_vrt(self) -> Path:
        """A VRT of the base raster listing the levels as its overviews; returns its path.

        GDAL writes the VRT of the base (nodata, descriptions, tags, scale and offset as they
        are), and each band gets one ``<Overview>`` per level. A raster too small for overviews
        needs no VRT: the base itself is returned.
        """
        if self._rows != self.height:
            raise ValueError(f"overviews got {self._rows} of {self.height} rows")
        self.close()
        if not self.levels:
            return self.base
        rasterio.shutil.copy(self.base, self.vrt_path, driver="VRT")
        tree = ET.parse(self.vrt_path)
        for band in tree.getroot().iter("VRTRasterBand"):
            for level in self.levels:
                overview = ET.SubElement(band, "Overview")
                ET.SubElement(overview, "SourceFilename", relativeToVRT="0").text = str(
                    level.path.resolve()
                )
                ET.SubElement(overview, "SourceBand").text = band.get("band", "1")
        tree.write(self.vrt_path)
        return self.vrt_path
