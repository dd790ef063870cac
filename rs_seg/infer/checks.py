"""Is this scene fit for this model? CRS and band count (errors), pixel size and drift (warnings).

Run before the first window is predicted (:func:`check_scene` before any output is staged), so a
wrong scene fails in one line naming it and a suspicious one is flagged in the log, the raster
tags and the fields' metadata.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from rs_seg.errors import RsSegError
from rs_seg.rasters import open_raster
from rs_seg.remote import display, file_name, is_remote
from rs_seg.windows import read_padded

if TYPE_CHECKING:  # annotations only: `rs-seg vectorize` checks rasters without loading torch
    from rs_seg.model.bundle import ModelBundle

DRIFT_Z = 1.0  # warn when a band's scene mean is more than this many training stds away
DRIFT_STD_RATIO = 2.0  # ... or its spread differs by more than this factor
DRIFT_SAMPLE_LATTICE = 4  # drift statistics from a 4 x 4 lattice of windows


@dataclass
class Compatibility:
    """What the scene looks like next to the training data, and what to warn about."""

    warnings: list[str] = field(default_factory=list)
    band_mean: list[float] = field(default_factory=list)
    band_std: list[float] = field(default_factory=list)
    drift_z: list[float] = field(default_factory=list)

    def metadata(self) -> dict[str, str]:
        """Flat strings for GeoTIFF tags and GeoPackage metadata."""
        return {
            "input_band_mean": ",".join(f"{v:.2f}" for v in self.band_mean),
            "input_band_std": ",".join(f"{v:.2f}" for v in self.band_std),
            "input_drift_z": ",".join(f"{v:.2f}" for v in self.drift_z),
            "input_warnings": " | ".join(self.warnings) or "none",
        }


def check_scene(scene: Path, bundle: ModelBundle, geojson: bool = False) -> None:
    """Refuse, before any output is staged, a scene the run would fail on after predicting it.

    The scene needs a projected CRS (areas, the m² settings) and the model's band count;
    ``geojson``: the fields go to GeoJSON, which stores WGS 84, so the scene must lie where its
    CRS can be turned into longitudes and latitudes.
    """
    with open_raster(scene, "scene") as src:
        metres_per_unit(src, scene, "scene")
        check_bands(src, bundle, scene)
        if geojson:
            check_wgs84_extent(src, scene)


def metres_per_unit(src: rasterio.io.DatasetReader, path: Path, role: str) -> float:
    """Metres per unit of the raster's projected CRS (feet: 0.3048); a geographic one is refused.

    Field areas, perimeters and the m² settings need a CRS whose axes are lengths; the message
    says how to reproject, with the UTM zone of the raster's centre where it can be found.
    """
    if src.crs is None:
        raise RsSegError(f"{role} has no CRS; field polygons need a georeferenced {role}", path)
    factor = linear_unit_factor(src.crs)
    if factor is not None:
        return factor
    kind = "a geographic" if src.crs.is_geographic else "an unprojected"
    target = _utm_zone(src) or "EPSG:326xx"
    source, reprojected = _warp_names(path)
    raise RsSegError(
        f"{role} is in {kind} CRS ({_crs_name(src.crs)}); field areas need a projected CRS in "
        f"metres or feet: reproject it first, e.g. to its UTM zone: gdalwarp -t_srs {target} "
        f"{shlex.quote(source)} {shlex.quote(reprojected)}",
        path,
    )


def _warp_names(path: Path) -> tuple[str, str]:
    """The raster and a reprojected copy beside it (a URL's copy: in the working folder)."""
    if is_remote(path):
        return display(path), f"{Path(file_name(path)).stem}_utm.tif"
    return str(path), str(path.with_name(f"{path.stem}_utm.tif"))


def linear_unit_factor(crs: CRS) -> float | None:
    """Metres per unit of a projected CRS's axes; None for a geographic or unitless one."""
    if crs.is_geographic:
        return None
    try:
        _, factor = crs.linear_units_factor
    except CRSError:
        return None
    return float(factor) if math.isfinite(factor) and factor > 0 else None


def _crs_name(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:80]


def _utm_zone(src: rasterio.io.DatasetReader) -> str | None:
    """``EPSG:326nn`` / ``EPSG:327nn``: the UTM zone of the raster's centre, if it can be found."""
    try:
        lon, lat = src.lnglat()
    except Exception:  # a CRS that cannot be transformed: the message offers a placeholder
        return None
    if not (math.isfinite(lon) and -180 <= lon <= 180 and -80 <= lat <= 84):
        return None
    zone = min(int((lon + 180) // 6) + 1, 60)
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"


def check_wgs84_extent(src: rasterio.io.DatasetReader, path: Path) -> None:
    """GeoJSON stores WGS 84: refuse a raster whose corners do not map to longitudes and latitudes.

    Such coordinates (a wrong transform, a CRS that does not cover the place) made GDAL refuse
    the first field only after the whole raster was polygonized.
    """
    try:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    except Exception:
        west = math.nan
    if all(map(math.isfinite, (west, south, east, north))) and -90 <= south <= north <= 90:
        return
    raise RsSegError(
        f"its extent lies outside what its CRS ({_crs_name(src.crs)}) can give as longitudes and "
        "latitudes, so it cannot be written as GeoJSON (WGS 84); check its georeferencing, or "
        "write .gpkg, .fgb or .parquet, which keep the CRS",
        path,
    )


def check_bands(src: rasterio.io.DatasetReader, bundle: ModelBundle, path: Path) -> None:
    """The scene must have the band count the model was trained on."""
    expected = bundle.band_count or max(bundle.bands)
    if src.count != expected:
        raise RsSegError(
            f"scene has {src.count} bands, the model was trained on {expected}-band imagery "
            f"(it reads bands {bundle.bands}: {', '.join(bundle.band_names)})",
            path,
        )


def _trained_metres(bundle: ModelBundle) -> float:
    """Metres per unit of the training pixel size: its CRS's unit, metres where none is known."""
    try:
        factor = linear_unit_factor(CRS.from_user_input(bundle.crs)) if bundle.crs else None
    except CRSError:
        factor = None
    return factor or 1.0


def _pixel_size_warning(src: rasterio.io.DatasetReader, bundle: ModelBundle) -> str | None:
    """Scene and training pixel sizes compared in metres (a CRS in feet is no 3x difference)."""
    if not bundle.pixel_size:
        return None
    trained = float(np.mean(bundle.pixel_size)) * _trained_metres(bundle)
    if src.crs is not None and src.crs.is_geographic:
        return f"scene CRS {src.crs} is geographic; the model was trained on {trained:g} m pixels"
    factor = linear_unit_factor(src.crs) if src.crs is not None else None
    scene = float(np.mean(np.abs(src.res))) * (factor or 1.0)
    if max(scene / trained, trained / scene) > 1.5:
        return (
            f"pixel size {scene:g} m differs from the training pixel size {trained:g} m; "
            "fields will look larger or smaller to the model than in training"
        )
    return None


def _sample_windows(height: int, width: int, size: int, block: tuple[int, int]) -> list[Window]:
    """Up to 16 windows spread evenly over the scene (a 4 x 4 lattice of window centres).

    Their corners snap to the scene's ``block`` grid (rows, cols) where a block is no larger
    than a window: a window of a block's size that straddles four blocks decodes all four, one
    on the grid decodes one. Along an axis of larger blocks (strips) nothing snaps.
    """

    def offsets(length: int, block_length: int) -> list[int]:
        step = block_length if block_length <= size else 1
        spread = np.linspace(0, max(0, length - size), DRIFT_SAMPLE_LATTICE)
        return sorted({int(v) // step * step for v in spread})

    rows, cols = offsets(height, block[0]), offsets(width, block[1])
    return [Window(c, r, min(size, width), min(size, height)) for r in rows for c in cols]


def _valid_pixels_float(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(bands, pixels) float64 values of the valid pixels of a (bands, H, W) window.

    A window with every pixel valid (most of them) is reshaped, not masked: indexing with an
    all-true mask gathers every pixel one by one, many times slower than a reshape's view.
    """
    flat = image.reshape(len(image), -1) if valid.all() else image[:, valid]
    return flat.astype(np.float64)


def check_compatibility(
    src: rasterio.io.DatasetReader, bundle: ModelBundle, path: Path, size: int
) -> Compatibility:
    """Band count (error), pixel size and radiometric drift from the training data (warnings).

    New imagery whose values drift (a new processing baseline, another sensor, haze) silently
    ruins predictions, so the band means and spreads of a sample of windows are compared with the
    normalization the model was trained with, in units of the training standard deviation.
    """
    check_bands(src, bundle, path)
    result = Compatibility()
    warning = _pixel_size_warning(src, bundle)
    if warning:
        result.warnings.append(warning)
    total = np.zeros(len(bundle.bands))
    squares = np.zeros(len(bundle.bands))
    count = 0
    band_index = bundle.band_index
    for window in _sample_windows(src.height, src.width, size, src.block_shapes[0]):
        image, valid, _ = read_padded(src, window)
        pixels = _valid_pixels_float(image[band_index], valid)
        total += pixels.sum(axis=1)
        squares += np.einsum("ij,ij->i", pixels, pixels)  # no squared copy
        count += pixels.shape[1]
    if count == 0:
        return result
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0))
    train_mean = np.asarray(bundle.normalization.mean)
    train_std = np.asarray(bundle.normalization.std)
    z = np.abs(mean - train_mean) / train_std
    ratio = np.maximum(std / train_std, train_std / np.maximum(std, 1e-12))
    result.band_mean, result.band_std, result.drift_z = list(mean), list(std), list(z)
    drifted = [
        f"{name} (mean {m:.1f} vs {tm:.1f} in training = {d:.1f} std; spread x{r:.1f})"
        for name, m, tm, d, r in zip(bundle.band_names, mean, train_mean, z, ratio, strict=True)
        if d > DRIFT_Z or r > DRIFT_STD_RATIO
    ]
    if drifted:
        result.warnings.append(
            "input values differ from the training data in " + "; ".join(drifted)
            + ": check the processing baseline, scaling and band order"
        )  # fmt: skip
    return result
