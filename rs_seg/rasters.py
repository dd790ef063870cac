"""Opening input rasters with errors a user can act on, and the header facts later stages need."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError

from rs_seg.errors import RsSegError
from rs_seg.remote import RedactingFilter, display, file_name, gdal_name, is_remote, redact_text
from rs_seg.staging import check_not_interrupted

# GDAL settings for window-by-window work. The block cache defaults to 5 % of RAM; streaming needs
# only a strip, and a bounded cache keeps peak memory independent of scene size. Multi-threaded
# (de)compression does not pay off on chip-sized files: one thread is faster and keeps peak RSS
# flat, where ALL_CPUS grows it (per-thread malloc arenas fragmented by zstd buffers).
GDAL_ENV = {"GDAL_CACHEMAX": 128, "GDAL_NUM_THREADS": 1, "CPL_LOG_ERRORS": "OFF"}

# GDAL settings for scenes read over the network (/vsicurl/, /vsis3/: rs_seg.remote), applied
# while such a scene is opened (:func:`open_raster`; GDAL keeps them with the open file). A
# failed or dropped range request is retried (HTTP 429/5xx and connection errors; the delay
# doubles each time) before the read fails. A server that accepts the connection and then
# stops sending is given up on once LOW_SPEED_LIMIT bytes/s (1: nothing at all) have not come
# for LOW_SPEED_TIME seconds, and GDAL retries that request too; without these, GDAL 3.10's
# curl waited for each request's whole TIMEOUT, retried, and a scheduled run hung without a
# word. EMPTY_DIR: GDAL would otherwise list the scene's "folder" (one more request, refused by
# most object stores) to look for sidecar files; a COG has none.
# CPL_VSIL_CURL_ALLOWED_EXTENSIONS is left unset: EMPTY_DIR already stops the sidecar probes,
# and an extension list would refuse scene URLs that end in a query string or have no
# extension. A variable set in the environment wins.
REMOTE_ENV: dict[str, str | int | float] = {
    "GDAL_HTTP_MAX_RETRY": 4,
    "GDAL_HTTP_RETRY_DELAY": 1.0,
    "GDAL_HTTP_TIMEOUT": 60,
    "GDAL_HTTP_CONNECTTIMEOUT": 15,
    "GDAL_HTTP_LOW_SPEED_TIME": 20,
    "GDAL_HTTP_LOW_SPEED_LIMIT": 1,
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}


# A remote read that still fails after GDAL's retries of its requests is read again this many
# times (see _retrying_reads), after the GDAL retry delay, doubled each time.
READ_RETRIES = 2
_READS = ("read", "read_masks", "dataset_mask")  # the dataset methods that fetch pixels
log = logging.getLogger(__name__)
# rasterio's loggers of GDAL's messages, which quote the URL a request went to
for _logger in ("rasterio._env", "rasterio._err", "rasterio._base", "rasterio._io"):
    logging.getLogger(_logger).addFilter(RedactingFilter())


def remote_env() -> dict[str, str | int | float]:
    """:data:`REMOTE_ENV` less the settings the user exported (GDAL reads those itself)."""
    return {key: value for key, value in REMOTE_ENV.items() if key not in os.environ}


def _remote_setting(key: str) -> float:
    """A network setting as GDAL uses it: the environment's, else :data:`REMOTE_ENV`'s."""
    try:
        return float(os.environ.get(key, REMOTE_ENV[key]))
    except ValueError:  # GDAL reads a malformed number as its default; so do the messages
        return float(REMOTE_ENV[key])


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
    creeps up on long scenes, differently on every run. Fixing the threshold at glibc's default
    (128 KiB) keeps such blocks mmapped and returned on free, so peak RSS is the same on every run
    at the same speed.

    The setting is process-wide and costly for model code (every large tensor would be mmapped
    and unmapped again, which slows torch inference), so it is lifted on exit, to the
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
    """The first line of the most specific GDAL/rasterio message in the exception chain.

    Without a URL's secrets: GDAL names the file it failed on, query string and all.
    """
    while exc.__cause__ is not None and str(exc.__cause__).strip():
        exc = exc.__cause__
    text = str(exc).strip()
    return redact_text(text.splitlines()[0]) if text else type(exc).__name__


@contextlib.contextmanager
def open_raster(path: Path, role: str = "raster") -> Iterator[rasterio.io.DatasetReader]:
    """Open ``path`` for reading, turning GDAL failures into one-line :class:`RsSegError`.

    A remote scene (a URL as :func:`rs_seg.remote.scene_path` keeps it) is opened with
    :data:`REMOTE_ENV`, and a read of it that still fails after GDAL's retries, anywhere in the
    ``with`` block (the reads happen there, window by window), is re-raised as one line naming
    the URL; the caller's staged outputs are then removed as for any other error. Its GDAL
    calls are waited for in Python (:class:`RemoteCalls`), so SIGINT, SIGTERM and the scene's
    deadline (:func:`scene_deadline`) end a read the server stalls.
    """
    path = Path(path)
    if not is_remote(path):
        _check_local(path, role)
        with _opened(path, role, path) as src:
            yield src
        return
    calls = RemoteCalls(path, role)
    with (
        rasterio.Env(**remote_env()),
        _opened(path, role, None, calls) as src,
        _remote_reads(path, role),
    ):
        _retrying_reads(src, path, calls)
        yield src


def _check_local(path: Path, role: str) -> None:
    if not path.exists():
        raise RsSegError(f"{role} not found", path)
    if path.is_dir() and path.suffix.lower() not in {".zarr", ".gdb"}:
        raise RsSegError(f"{role} is a folder, not a raster file", path)


@contextlib.contextmanager
def _opened(
    path: Path, role: str, named: Path | None, calls: RemoteCalls | None = None
) -> Iterator[rasterio.io.DatasetReader]:
    """The open dataset; ``named``: the path errors name (None: the URL, in the message)."""
    where = "" if named is not None else f"{display(path)}: "
    started = time.monotonic()
    try:
        src = _open(path) if calls is None else calls.open(functools.partial(_open, path))
    except RasterioError as exc:
        if calls is not None and (stalled := _stalled(path, role, started)) is not None:
            raise stalled from None
        raise RsSegError(where + _open_problem(gdal_message(exc), role, named is None),
                         named) from None  # fmt: skip
    try:
        if src.count < 1 or src.width < 1 or src.height < 1:
            raise RsSegError(f"{where}{role} has no pixels or no bands", named)
        yield src
    finally:
        if calls is None:
            src.close()
        else:
            calls.close(src)


def _open(path: Path) -> rasterio.io.DatasetReader:
    with warnings.catch_warnings():  # chips without a CRS are legitimate input
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(gdal_name(path))


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


def _stalled(path: Path, role: str, started: float) -> RsSegError | None:
    """The error for a request GDAL gave up on because the server sent nothing, else None.

    GDAL's message is the same for every failed request ("got 0 bytes"), so a stall is told by
    time: each of its tries waited the whole GDAL_HTTP_LOW_SPEED_TIME (a refused or failed
    request ends at once, and GDAL's waits between tries add up to less).
    """
    window = _remote_setting("GDAL_HTTP_LOW_SPEED_TIME")
    tries = int(_remote_setting("GDAL_HTTP_MAX_RETRY")) + 1
    if window <= 0 or time.monotonic() - started < 0.9 * tries * window:
        return None
    return RsSegError(
        f"{display(path)}: no data from the server for {window:g} s on each of {tries} tries; "
        f"stopped reading the {role}"
    )


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
    if isinstance(exc, RsSegError) and exc.path is not None:
        # "<path>: cannot read pixels, ... (<GDAL's reason>)"
        cause = cause.removeprefix(f"{display(exc.path)}: ")
        cause = cause[cause.find("(") + 1 : -1] if cause.endswith(")") else cause
    return RsSegError(
        f"{display(path)}: reading the {role} failed after {retries} retries per request and "
        f"{READ_RETRIES} per read ({cause})"
    )


def _retrying_reads(src: rasterio.io.DatasetReader, path: Path, calls: RemoteCalls) -> None:
    """Make the pixel reads of the remote ``src`` read again when they fail.

    GDAL retries a request answered with an HTTP error or not at all, but not one whose
    connection breaks mid-transfer: it keeps the truncated bytes in its cache of the URL, and
    every later read of those blocks fails, in this dataset and in any other of the same URL,
    for the life of the process (a flow worker's too). So a failed read clears GDAL's cache of
    this URL (:func:`clear_remote_cache`) and is tried again, :data:`READ_RETRIES` times; one
    that failed because the server sent nothing (:func:`_stalled`) is not: GDAL has already
    waited for it on every try. The methods are replaced on this one dataset only; every caller
    reads it as before, through ``calls``.
    """
    for name in _READS:
        setattr(src, name, _retrying(getattr(src, name), path, calls))


def _retrying(read: Callable[..., Any], path: Path, calls: RemoteCalls) -> Callable[..., Any]:
    @functools.wraps(read)
    def read_again(*args: Any, **kwargs: Any) -> Any:
        delay = _remote_setting("GDAL_HTTP_RETRY_DELAY")
        for attempt in range(READ_RETRIES):
            try:
                return _read_once(read, path, calls, args, kwargs)
            except RasterioIOError as exc:
                if not _names(exc, file_name(path)):
                    raise
                log.warning("%s: a read failed (%s); reading again", display(path),
                            gdal_message(exc))  # fmt: skip
            clear_remote_cache(path)
            calls.wait(delay * 2**attempt)
        return _read_once(read, path, calls, args, kwargs)

    return read_again


def _read_once(
    read: Callable[..., Any], path: Path, calls: RemoteCalls, args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:  # fmt: skip
    """One read; a failure because the server sent nothing (:func:`_stalled`) is final."""
    started = time.monotonic()
    try:
        return calls.call(read, *args, **kwargs)
    except RasterioIOError as exc:
        if _names(exc, file_name(path)) and (stalled := _stalled(path, calls.role, started)):
            raise stalled from None
        raise


# How often a thread waiting for a remote GDAL call looks at interrupts and the deadline (s).
_POLL = 0.1
_DEADLINES: dict[str, list[tuple[float, float]]] = {}  # GDAL name -> [(monotonic end, seconds)]
_DEADLINES_LOCK = threading.Lock()


@contextlib.contextmanager
def scene_deadline(scene: Path, seconds: float | None) -> Iterator[None]:
    """Reads of the remote ``scene`` stop ``seconds`` from now (None: no deadline; local: none).

    Every dataset of the scene, open already or opened later, on any thread, checks it while
    it waits for GDAL (:class:`RemoteCalls`): the reading threads of a pipeline need no
    argument passed down. A read still running then raises one line naming the URL.
    """
    if seconds is None or not is_remote(scene):
        yield
        return
    name, entry = gdal_name(scene), (time.monotonic() + seconds, seconds)
    with _DEADLINES_LOCK:
        _DEADLINES.setdefault(name, []).append(entry)
    try:
        yield
    finally:
        with _DEADLINES_LOCK:
            _DEADLINES[name].remove(entry)
            if not _DEADLINES[name]:
                del _DEADLINES[name]


def _deadline(name: str) -> tuple[float, float] | None:
    with _DEADLINES_LOCK:
        entries = _DEADLINES.get(name)
        return min(entries) if entries else None


class RemoteCalls:
    """The GDAL calls of one remote dataset, each made on a thread of its own and waited for.

    Why: a call blocked in GDAL (a server that accepted the connection and sends nothing)
    cannot be interrupted. The thread that made it waits until GDAL's timeouts end it, and so
    does a Ctrl-C: Python runs signal handlers on the main thread between its own
    instructions, and a thread joining a blocked reader blocks too. Waiting here instead, a
    tenth of a second at a time, SIGINT/SIGTERM (:func:`rs_seg.staging.check_not_interrupted`)
    and the scene's deadline (:func:`scene_deadline`) end the wait at once. The call given up
    on finishes on its daemon thread later, and closes the dataset if its owner closed it in
    the meantime: GDAL must not free a dataset under a running read.
    """

    def __init__(self, path: Path, role: str) -> None:
        self.path = path
        self.role = role
        self._name = gdal_name(path)
        self._lock = threading.Lock()
        self._running = False
        self._then: Callable[[bool, Any], None] | None = None  # for a call given up on

    def open(self, opener: Callable[[], rasterio.io.DatasetReader]) -> rasterio.io.DatasetReader:
        """``opener()``; a dataset it opens after the wait was given up on is closed."""
        return cast(rasterio.io.DatasetReader, self._call(opener, (), {}, opening=True))

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` on a thread of its own, waited for interruptibly."""
        return self._call(function, args, kwargs, opening=False)

    def _call(
        self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        opening: bool,
    ) -> Any:  # fmt: skip
        self.check()
        with self._lock:
            if self._running:  # an earlier call given up on has not returned: not free
                raise RsSegError(f"{display(self.path)}: an earlier read of the {self.role} "
                                 "has not returned")  # fmt: skip
            self._running = True
        outcome: list[tuple[bool, Any]] = []
        done = threading.Event()
        worker = threading.Thread(
            target=self._run, args=(function, args, kwargs, outcome, done), daemon=True,
            name="rs-seg-gdal",
        )  # fmt: skip
        worker.start()
        started = time.monotonic()
        try:
            while not done.wait(_POLL):
                self.check(started)
        except BaseException:
            with self._lock:
                if self._running and opening:
                    self._then = _close_opened
            raise
        succeeded, value = outcome[0]
        if not succeeded:
            raise value
        return value

    def _run(
        self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        outcome: list[tuple[bool, Any]], done: threading.Event,
    ) -> None:  # fmt: skip
        try:
            outcome.append((True, function(*args, **kwargs)))
        except BaseException as exc:  # handed to the waiting thread, which raises it
            outcome.append((False, exc))
        with self._lock:
            self._running = False
            then, self._then = self._then, None
        done.set()
        if then is not None:
            then(*outcome[0])

    def close(self, src: rasterio.io.DatasetReader) -> None:
        """Close ``src`` now, or once a call given up on has returned."""
        with self._lock:
            if self._running:
                self._then = lambda succeeded, value: src.close()
                return
        src.close()

    def check(self, started: float | None = None) -> None:
        """Raise if this process was interrupted or the scene's deadline has passed."""
        check_not_interrupted()
        deadline = _deadline(self._name)
        if deadline is None or time.monotonic() < deadline[0]:
            return
        waited = 0.0 if started is None else time.monotonic() - started
        stalled = f"no data from the server for {waited:.0f} s: " if waited >= 1 else ""
        raise RsSegError(
            f"{display(self.path)}: {stalled}the {self.role} did not finish within its "
            f"deadline (timeout {deadline[1]:g} s)"
        )

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` (between retries), ending early as :meth:`check` does."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.check()
            time.sleep(min(_POLL, left))


def _close_opened(succeeded: bool, value: Any) -> None:
    if succeeded:
        value.close()


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
