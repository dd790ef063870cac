"""Opening input rasters with errors a user can act on, and the header facts later stages need."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from rs_seg.errors import RsSegError

# GDAL settings for window-by-window work. The block cache defaults to 5 % of RAM; streaming needs
# only a strip, and a bounded cache keeps peak memory independent of scene size. Multi-threaded
# (de)compression does not pay off on chip-sized files: measured on a 16384 px scene, one thread
# was 1.6x faster and kept peak RSS flat, where ALL_CPUS grew it by 120 MB (per-thread malloc
# arenas fragmented by zstd buffers).
GDAL_ENV = {"GDAL_CACHEMAX": 128, "GDAL_NUM_THREADS": 1, "CPL_LOG_ERRORS": "OFF"}


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own default, kept fixed


_MMAP_THRESHOLD_RELAXED = 32 * 1024 * 1024  # glibc's largest dynamic threshold (64-bit)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


@contextlib.contextmanager
def large_blocks_off_the_heap() -> Iterator[bool]:
    """While streaming, keep glibc from moving freed large blocks (GDAL tiles, chips) onto the heap.

    Why: glibc raises its mmap threshold each time a large mmapped block is freed, after which
    blocks of that size come from the heap, where streaming leaves them fragmented: peak RSS then
    creeps up by 20-90 MB on long scenes, differently on every run. Fixing the threshold at glibc's
    default (128 KiB) keeps such blocks mmapped and returned on free; measured on a 16384 px scene,
    peak RSS became 195 MB on every run (199-287 MB before) at the same speed.

    The setting is process-wide and costly for model code (every large tensor would be mmapped
    and unmapped again: torch inference measured 20 % slower), so it is lifted on exit, to the
    largest threshold glibc itself would adapt to. Yields False where the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_RELAXED)


def gdal_message(exc: BaseException) -> str:
    """The first line of the most specific GDAL/rasterio message in the exception chain."""
    while exc.__cause__ is not None and str(exc.__cause__).strip():
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def open_raster(path: Path, role: str = "raster") -> Iterator[rasterio.io.DatasetReader]:
    """Open ``path`` for reading, turning GDAL failures into one-line :class:`RsSegError`."""
    path = Path(path)
    if not path.exists():
        raise RsSegError(f"{role} not found", path)
    if path.is_dir() and path.suffix.lower() not in {".zarr", ".gdb"}:
        raise RsSegError(f"{role} is a folder, not a raster file", path)
    try:
        with warnings.catch_warnings():  # chips without a CRS are legitimate input
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioError as exc:
        message = gdal_message(exc)
        if "not recognized as" in message or "not a supported file format" in message:
            raise RsSegError(f"not a raster GDAL can read ({role})", path) from None
        if "Permission denied" in message:
            raise RsSegError(f"cannot read {role}: permission denied", path) from None
        raise RsSegError(f"cannot open {role}: {message}", path) from None
    with src:
        if src.count < 1 or src.width < 1 or src.height < 1:
            raise RsSegError(f"{role} has no pixels or no bands", path)
        yield src


@dataclass(frozen=True)
class RasterInfo:
    """Header facts of one raster, read once and passed around instead of open datasets."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None
    descriptions: tuple[str | None, ...]

    @classmethod
    def read(cls, path: Path, role: str = "scene") -> RasterInfo:
        """Read the header of ``path`` (no pixels)."""
        with open_raster(path, role) as src:
            dtypes = set(src.dtypes)
            if len(dtypes) > 1:
                raise RsSegError(f"{role} mixes band data types {sorted(dtypes)}", path)
            return cls(
                path=Path(path),
                width=src.width,
                height=src.height,
                count=src.count,
                dtype=src.dtypes[0],
                crs=src.crs,
                transform=src.transform,
                nodata=src.nodata,
                descriptions=tuple(src.descriptions),
            )

    @property
    def is_georeferenced(self) -> bool:
        """True when the raster has a CRS and a non-identity transform."""
        return self.crs is not None and self.transform != Affine.identity()

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the raster's CRS."""
        west, south, east, north = rasterio.transform.array_bounds(
            self.height, self.width, self.transform
        )
        return west, south, east, north

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Pixel width and height in CRS units (positive)."""
        return abs(self.transform.a), abs(self.transform.e)
