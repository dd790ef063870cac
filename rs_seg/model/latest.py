"""The read side of a models folder: which bundle ``latest.json`` names, checked.

Inference asks for the latest model when none is named; the registry (:mod:`rs_seg.ops.registry`)
writes the folder. Reading sits with the model contract so inference never imports ``ops``, and
every value read from the folder is checked before it names a file: a model id must be a weight
hash, and the bundle path must stay inside the models folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic validates only this TypedDict before 3.12

from rs_seg.config_files import format_validation_error
from rs_seg.errors import RsSegError
from rs_seg.model.bundle import MODEL_ID

LATEST_FILE = "latest.json"
NO_MODEL_HINT = "no registered model; train one with rs-seg train / the train-cropland flow"


@with_config(ConfigDict(strict=True))  # read back with strict JSON types, all keys (LATEST_ENTRY)
class LatestEntry(TypedDict):
    """``latest.json``: the model inference uses, and the test score that earned it the place."""

    model_id: str
    bundle: str  # relative to the models directory
    metric: str
    score: float | None  # null when undefined (NaN)
    chip_index_fingerprint: str | None
    promoted_at: str


LATEST_ENTRY = TypeAdapter(LatestEntry)


def short_repr(value: object) -> str:
    """A value from a file, quoted for a message and cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def model_folder(models_dir: Path, model_id: object, where: Path) -> Path:
    """``<models_dir>/<model_id>``; an id that is not a weight hash is refused, naming ``where``.

    Ids come from files (bundles, ``latest.json``); only 12 hex digits can never be an absolute
    path, ``..`` or ``.``.
    """
    if not isinstance(model_id, str) or not MODEL_ID.fullmatch(model_id):
        raise RsSegError(
            f"model id {short_repr(model_id)} is not a weight hash (12 hex digits); the file was "
            "edited or damaged",
            where,
        )
    return Path(models_dir) / model_id


def read_json(path: Path) -> Any:
    """A JSON document of the registry (or a run), with one-line errors naming the file."""
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise RsSegError(f"cannot be read ({exc.strerror})", path) from None
    except ValueError:  # JSON syntax and undecodable bytes
        raise RsSegError("not valid JSON; fix or remove it", path) from None


def read_latest(models_dir: Path) -> LatestEntry | None:
    """``latest.json`` checked: its keys and types, an id that is a weight hash, a bundle inside.

    None when there is none yet; anything else that is not such a pointer is one line naming it.
    """
    path = models_dir / LATEST_FILE
    if not os.path.lexists(path):
        return None
    check_plain_file(path)
    try:
        document = read_json(path)
        LATEST_ENTRY.validate_python(document)
    except ValidationError as exc:
        detail = format_validation_error(exc)[:300]
        raise RsSegError(
            f"is not a latest-model pointer ({detail}); fix or remove it", path
        ) from None
    latest = cast(LatestEntry, document)
    model_folder(models_dir, latest["model_id"], path)
    inside_models(models_dir, latest["bundle"], path)
    return latest


def check_plain_file(path: Path) -> None:
    """The registry's own files are plain files: a link or folder in their place is refused."""
    if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
        raise RsSegError(
            "is not a plain file; the registry writes it itself, so move it out of the models "
            "folder",
            path,
        )


def inside_models(models_dir: Path, relative: str, where: Path) -> Path:
    """``models_dir / relative`` when it resolves to a file path inside the models folder."""
    candidate = models_dir / relative
    try:
        root, resolved = models_dir.resolve(), candidate.resolve()
    except (OSError, ValueError):  # a link loop, a NUL byte
        resolved = root = Path("/")
    if Path(relative).is_absolute() or resolved == root or not resolved.is_relative_to(root):
        raise RsSegError(
            f"names the bundle {short_repr(relative)}, which is not inside the models folder; fix "
            "or remove it",
            where,
        )
    return candidate


def latest_path(models_dir: Path, latest: LatestEntry) -> Path:
    """The bundle file ``latest.json`` names (checked by :func:`read_latest`)."""
    return inside_models(models_dir, latest["bundle"], models_dir / LATEST_FILE)


def latest_bundle(models_dir: Path) -> Path:
    """The bundle ``latest.json`` points to; what inference uses when no model is named."""
    models_dir = Path(models_dir)
    latest = read_latest(models_dir)
    if latest is None:
        raise RsSegError(NO_MODEL_HINT, models_dir)
    bundle = latest_path(models_dir, latest)
    if not bundle.is_file():
        raise RsSegError(f"latest.json points to a missing bundle ({latest['bundle']})", models_dir)
    return bundle
