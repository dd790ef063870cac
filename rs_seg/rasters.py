"""Opening input rasters with errors a user can act on, and the header facts later stages need."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError

from rs_seg.errors import RsSegError
from rs_seg.remote import display, file_name, gdal_name, is_remote

# GDAL settings for window-by-window work. The block cache defaults to 5 % of RAM; streaming needs
# only a strip, and a bounded cache keeps peak memory independent of scene size. Multi-threaded
# (de)compression does not pay off on chip-sized files: measured on a 16384 px scene, one thread
# was 1.6x faster and kept peak RSS flat, where ALL_CPUS grew it by 120 MB (per-thread malloc
# arenas fragmented by zstd buffers).
GDAL_ENV = {"GDAL_CACHEMAX": 128, "GDAL_NUM_THREADS": 1, "CPL_LOG_ERRORS": "OFF"}

# GDAL settings for scenes read over the network (/vsicurl/, /vsis3/: rs_seg.remote), applied
# while such a scene is open (:func:`open_raster`). A failed or dropped range request is retried
# (HTTP 429/5xx and connection errors; the delay doubles each time) before the read fails; a
# stalled connection fails after the timeout instead of hanging a scheduled run. EMPTY_DIR:
# GDAL would otherwise list the scene's "folder" (one more request, refused by most object
# stores) to look for sidecar files; a COG has none. CPL_VSIL_CURL_ALLOWED_EXTENSIONS is left
# unset: EMPTY_DIR already stops the sidecar probes, and an extension list would refuse scene
# URLs that end in a query string or have no extension. A variable set in the environment wins.
REMOTE_ENV: dict[str, str | int | float] = {
    "GDAL_HTTP_MAX_RETRY": 4,
    "GDAL_HTTP_RETRY_DELAY": 1.0,
    "GDAL_HTTP_TIMEOUT": 60,
    "GDAL_HTTP_CONNECTTIMEOUT": 20,
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}


# A remote read that still fails after GDAL's retries of its requests is read again this many
# times (see _retrying_reads), after the GDAL retry delay, doubled each time.
READ_RETRIES = 2
_READS = ("read", "read_masks", "dataset_mask")  # the dataset methods that fetch pixels
log = logging.getLogger(__name__)


def remote_env() -> dict[str, str | int | float]:
    """:data:`REMOTE_ENV` less the settings the user exported (GDAL reads those itself)."""
    return {key: value for key, value in REMOTE_ENV.items() if key not in os.environ}


def _remote_setting(key: str) -> float:
    return float(os.environ.get(key, REMOTE_ENV[key]))


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
    """Open ``path`` for reading, turning GDAL failures into one-line :class:`RsSegError`.

    A remote scene (a URL as :func:`rs_seg.remote.scene_path` keeps it) is opened with
    :data:`REMOTE_ENV`, and a read of it that still fails after GDAL's retries, anywhere in the
    ``with`` block (the reads happen there, window by window), is re-raised as one line naming
    the URL; the caller's staged outputs are then removed as for any other error.
    """
    path = Path(path)
    if not is_remote(path):
        _check_local(path, role)
        with _opened(path, role, path) as src:
            yield src
        return
    with rasterio.Env(**remote_env()), _opened(path, role, None) as src, _remote_reads(path, role):
        _retrying_reads(src, path)
        yield src


def _check_local(path: Path, role: str) -> None:
    if not path.exists():
        raise RsSegError(f"{role} not found", path)
    if path.is_dir() and path.suffix.lower() not in {".zarr", ".gdb"}:
        raise RsSegError(f"{role} is a folder, not a raster file", path)


@contextlib.contextmanager
def _opened(path: Path, role: str, named: Path | None) -> Iterator[rasterio.io.DatasetReader]:
    """The open dataset; ``named``: the path errors name (None: the URL, in the message)."""
    where = "" if named is not None else f"{display(path)}: "
    try:
        with warnings.catch_warnings():  # chips without a CRS are legitimate input
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(gdal_name(path))
    except RasterioError as exc:
        raise RsSegError(where + _open_problem(gdal_message(exc), role, named is None),
                         named) from None  # fmt: skip
    with src:
        if src.count < 1 or src.width < 1 or src.height < 1:
            raise RsSegError(f"{where}{role} has no pixels or no bands", named)
        yield src


def _open_problem(message: str, role: str, remote: bool) -> str:
    """Why a raster did not open, in words a user can act on."""
    if "not recognized as" in message or "not a supported file format" in message:
        if remote:  # GDAL says so too when the server answered every try with an error
            retries = int(_remote_setting("GDAL_HTTP_MAX_RETRY"))
            return (
                f"not a raster GDAL can read ({role}), or the server failed to send it "
                f"(after {retries} retries)"
            )
        return f"not a raster GDAL can read ({role})"
    if "Permission denied" in message:
        return f"cannot read {role}: permission denied"
    if remote and "404" in message:
        return f"{role} not found (HTTP 404)"
    return f"cannot open {role}: {message}"


@contextlib.contextmanager
def _remote_reads(path: Path, role: str) -> Iterator[None]:
    """A failed read of the remote ``path`` becomes one line naming its URL.

    GDAL's messages name the file (``scene.tif?sig=..., band 1: IReadBlock failed``), so an
    error of another file written in the same block (a scratch raster, a full disk) passes
    through unchanged; so does an RsSegError about another file. One that a reader raised about
    this scene (:func:`rs_seg.windows.read_padded` calls unreadable pixels a truncated file,
    which over a network they rarely are) is said again as a read failure.
    """
    try:
        yield
    except RsSegError as exc:
        if exc.path is None or display(exc.path) != display(path):
            raise
        raise _read_failure(path, role, exc) from None
    except (RasterioError, OSError) as exc:
        if not _names(exc, file_name(path)):
            raise
        raise _read_failure(path, role, exc) from None


def _read_failure(path: Path, role: str, exc: BaseException) -> RsSegError:
    """One line: the URL, that reading it failed although retried, and GDAL's reason."""
    retries = int(_remote_setting("GDAL_HTTP_MAX_RETRY"))
    cause = gdal_message(exc)
    if isinstance(exc, RsSegError):  # "<path>: cannot read pixels, ... (<GDAL's reason>)"
        cause = cause.removeprefix(f"{exc.path}: ")
        cause = cause[cause.find("(") + 1 : -1] if cause.endswith(")") else cause
    return RsSegError(
        f"{display(path)}: reading the {role} failed after {retries} retries per request and "
        f"{READ_RETRIES} per read ({cause})"
    )


def _retrying_reads(src: rasterio.io.DatasetReader, path: Path) -> None:
    """Make the pixel reads of the remote ``src`` read again when they fail.

    GDAL retries a request answered with an HTTP error or not at all, but not one whose
    connection breaks mid-transfer: it keeps the truncated bytes in its cache of the URL, and
    every later read of those blocks fails, in this dataset and in any other of the same URL,
    for the life of the process (a flow worker's too). So a failed read clears GDAL's cache of
    this URL (:func:`clear_remote_cache`) and is tried again, :data:`READ_RETRIES` times.
    The methods are replaced on this one dataset only; every caller reads it as before.
    """
    for name in _READS:
        setattr(src, name, _retrying(getattr(src, name), path))


def _retrying(read: Callable[..., Any], path: Path) -> Callable[..., Any]:
    @functools.wraps(read)
    def read_again(*args: Any, **kwargs: Any) -> Any:
        delay = _remote_setting("GDAL_HTTP_RETRY_DELAY")
        for attempt in range(READ_RETRIES):
            try:
                return read(*args, **kwargs)
            except RasterioIOError as exc:
                if not _names(exc, file_name(path)):
                    raise
                log.warning("%s: a read failed (%s); reading again", display(path),
                            gdal_message(exc))  # fmt: skip
            clear_remote_cache(path)
            time.sleep(delay * 2**attempt)
        return read(*args, **kwargs)

    return read_again


def clear_remote_cache(path: Path) -> bool:
    """Forget what GDAL cached of the remote ``path`` (False where GDAL cannot be reached).

    ``VSICurlPartialClearCache`` is one C call rasterio does not wrap, so it is made on the
    GDAL library rasterio has loaded.
    """
    library = _gdal_library()
    if library is None:
        return False
    library.VSICurlPartialClearCache(gdal_name(path).encode())
    return True


@functools.cache
def _gdal_library() -> ctypes.CDLL | None:
    """The GDAL library this process runs (rasterio's own copy in a wheel), or None."""
    loaded: list[str] = []
    with contextlib.suppress(OSError):  # Linux: the libraries loaded, wherever they are
        maps = Path("/proc/self/maps").read_text().splitlines()
        loaded = [line.split()[-1] for line in maps if "/libgdal" in line]
    # pyogrio's wheel brings a GDAL of its own; the cache to clear is rasterio's
    ours = [name for name in loaded if "rasterio" in name] or loaded
    found = ours[0] if ours else ctypes.util.find_library("gdal")
    if found is None:
        return None
    try:
        library = ctypes.CDLL(found)
        library.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
        library.VSICurlPartialClearCache.restype = None
    except (OSError, AttributeError):
        return None
    return library


def _names(exc: BaseException, name: str) -> bool:
    """True when ``exc`` or an exception it came from mentions the file ``name``."""
    seen: BaseException | None = exc
    while seen is not None:
        if name in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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
