"""Scene names: the one folder name and field-id prefix of every scene a new-imagery run maps.

A run maps each scene into ``<out_dir>/<name>/<model id>/`` and numbers its fields
``<name>/<n>``, so two scenes that share a name lose a map (both recorded done, one folder) and
break every merged layer (a field id twice). Names therefore come from the scene's full key (its
path relative to the inbox, or its STAC item id), never from the file stem alone, and are

* unique: a key that is already a plain name is kept as it is; any other key is written as
  ``<readable part>-<12 hex digits of a SHA-256 of the key>``, a form no plain name has, so
  no two keys share a name (up to a 48-bit hash collision), also where a file system ignores case;
* stable: a name depends on its own key only, never on what else is in the inbox or catalog;
* safe: one path component of ASCII letters, digits, ``_`` and ``-``, starting with a letter or a
  digit (no separator, no ``..``, no leading dot or dash), at most 77 characters.

A plain name is lowercase (on a case-insensitive file system ``A`` and ``a`` are one folder) and
no Windows device name (``con``, ``nul``...); an inbox key is plain only as a ``.tif`` file at
the inbox's top level (``x.tif`` -> ``x``; ``a/x.tif``, ``x.tiff`` and ``X.tif`` get the hash).
Names are unique within one source (an inbox or a catalog); two sources need two out_dirs.
"""

from __future__ import annotations

import glob
import hashlib
import re
from pathlib import Path, PurePosixPath

READABLE_LENGTH = 64  # characters of a plain name or of a hashed name's readable part
HASH_DIGITS = 12
_PLAIN = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{READABLE_LENGTH - 1}}}")
_HASHED = re.compile(rf"-[0-9a-f]{{{HASH_DIGITS}}}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_DEVICES = {"con", "prn", "aux", "nul", *(f"{p}{n}" for p in ("com", "lpt") for n in range(10))}


def inbox_name(relative: str | PurePosixPath) -> str:
    """The name of an inbox scene at ``relative`` (its path below the inbox root, ``/``-separated).

    ``x.tif`` at the top level is ``x``; anything else keeps its folders and stem as the
    readable part (``a/x.tif`` -> ``a_x-<hash>``).
    """
    path = PurePosixPath(relative)
    plain = path.stem if len(path.parts) == 1 and path.suffix == ".tif" else None
    readable = path.with_suffix("").as_posix() if path.suffix else path.as_posix()
    return _name(f"file:{path.as_posix()}", plain, readable[-READABLE_LENGTH:])


def item_name(item_id: str) -> str:
    """The name of a STAC item's scene: its id when plain (``s2-a``), else ``<id>-<hash>``."""
    return _name(f"item:{item_id}", item_id, item_id[:READABLE_LENGTH])


def _name(key: str, plain: str | None, readable: str) -> str:
    if plain is not None and is_plain(plain):
        return plain
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_DIGITS]
    return f"{_UNSAFE.sub('_', readable).strip('_-') or 'scene'}-{digest}"


def is_plain(text: str) -> bool:
    """True when ``text`` can be a name as it is: a lowercase safe name without a hash's form."""
    return (
        _PLAIN.fullmatch(text) is not None and _HASHED.search(text) is None and text not in _DEVICES
    )


def inbox_root(incoming: str) -> Path:
    """The folder an inbox's scene keys are relative to: the folder, or a glob's fixed part.

    ``inbox`` and ``inbox/**/*.tif`` both give ``inbox``, so a scene keeps its name when the
    inbox is given the other way; a glob without wildcards (one file) gives its folder.
    """
    path = Path(incoming)
    if path.is_dir():
        return path
    parts = path.parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts) - 1)
    return Path(*parts[:fixed]) if fixed else Path()


def inbox_key(scene: Path, root: Path) -> PurePosixPath:
    """``scene``'s path below ``root`` (as listed from the inbox), ``/``-separated."""
    try:
        return PurePosixPath(scene.relative_to(root).as_posix())
    except ValueError:  # not listed from below root (cannot happen for a glob's matches)
        return PurePosixPath(scene.as_posix().lstrip("/"))
