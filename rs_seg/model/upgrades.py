"""Bundle metadata of older format versions brought up to the current one, in one place.

Each function turns the metadata of version N into version N + 1; :func:`upgrade` applies them
in order on load, before the metadata is validated, so the rest of rs_seg reads one format.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rs_seg.errors import RsSegError
from rs_seg.field_rule import GROW
from rs_seg.model.fields import DEFAULT_MIN_AREA

FORMAT_VERSION = 2
Meta = dict[str, Any]


def _fields_in_one_place(meta: Meta) -> Meta:
    """Version 1 -> 2: the field settings live in ``fields`` alone, for every task.

    Version 1 stored a fields model's boundary threshold twice (top level and in ``fields``),
    kept the tuning rule and score beside the settings, and stored nothing for a cropland model
    or an untuned fields model, whose defaults inference then chose.
    """
    meta = dict(meta)
    boundary = meta.pop("boundary_threshold", None)
    model = meta.get("model")
    fields_task = isinstance(model, dict) and model.get("task") == "fields"
    tuned = meta.get("fields")
    if isinstance(tuned, dict):
        settings = {k: tuned[k] for k in ("threshold", "boundary_threshold", "min_area", "grow")
                    if k in tuned}  # fmt: skip
        metrics = meta.get("metrics")
        if isinstance(metrics, dict) and "rule" in tuned:
            meta["metrics"] = {**metrics, "fields_rule": tuned["rule"]}
    else:
        default_boundary = boundary if boundary is not None else 0.5
        settings = {
            "threshold": meta.get("threshold"),
            "boundary_threshold": default_boundary if fields_task else None,
            "min_area": DEFAULT_MIN_AREA,
            "grow": GROW,
        }
    meta["fields"] = settings
    return meta


UPGRADES: dict[int, Callable[[Meta], Meta]] = {1: _fields_in_one_place}


def upgrade(meta: Meta, version: int, path: Path) -> Meta:
    """Bring an older bundle's metadata up to :data:`FORMAT_VERSION`; refuse newer ones."""
    if version > FORMAT_VERSION:
        raise RsSegError(
            f"bundle format version {version} is newer than this rs_seg reads "
            f"(up to {FORMAT_VERSION}); upgrade rs_seg",
            path,
        )
    while version < FORMAT_VERSION:
        if version not in UPGRADES:
            raise RsSegError(
                f"bundle format version {version} is no longer supported (this rs_seg reads "
                f"version {FORMAT_VERSION}); retrain or convert it with an older rs_seg",
                path,
            )
        meta = UPGRADES[version](meta)
        version += 1
    return meta
