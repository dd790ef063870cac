"""Output safety: never overwrite without consent, never leave anything half-written.

Every stage writes into a hidden staging folder (or file) next to the final path and renames it into
place only when the work has finished. An error or an interrupt removes the staging copy, so the
user finds either the complete new output, the untouched old one, or nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rs_seg.errors import RsSegError


def check_output_free(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless the user asked for it."""
    if path.exists() and not overwrite:
        raise RsSegError("output already exists; pass --overwrite to replace it", path)


def _staging_name(path: Path) -> Path:
    """A hidden sibling that keeps the suffix, so GDAL still picks the driver by extension."""
    return path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _check_writable_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RsSegError(f"cannot create the output folder ({exc.strerror})", parent) from None
    if not os.access(parent, os.W_OK):
        raise RsSegError("output folder is not writable", parent)


def _publish(staging: Path, final: Path) -> None:
    """Move the finished staging copy into place, replacing an old output only at the very end."""
    if final.exists():
        backup = _staging_name(final)
        final.rename(backup)
        try:
            staging.rename(final)
        except BaseException:
            backup.rename(final)
            raise
        _remove(backup)
    else:
        staging.rename(final)


@contextlib.contextmanager
def _staged(final: Path, overwrite: bool, folder: bool) -> Iterator[Path]:
    final = Path(final)
    check_output_free(final, overwrite)
    _check_writable_parent(final)
    staging = _staging_name(final)
    if folder:
        staging.mkdir()
    try:
        yield staging
    except BaseException:
        _remove(staging)
        raise
    if not staging.exists():
        raise RuntimeError(f"{staging}: nothing was written")
    _publish(staging, final)


def staged_dir(final: Path, overwrite: bool = False) -> contextlib.AbstractContextManager[Path]:
    """An empty staging folder that becomes ``final`` when the ``with`` block completes."""
    return _staged(final, overwrite, folder=True)


def staged_file(final: Path, overwrite: bool = False) -> contextlib.AbstractContextManager[Path]:
    """A temporary path (same folder and suffix) that becomes ``final`` on success."""
    return _staged(final, overwrite, folder=False)


def write_json(path: Path, data: Any) -> None:
    """Write JSON to a temporary sibling, then rename: readers never see half a file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)
