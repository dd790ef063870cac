"""Reading the config schema (:mod:`rs_seg.config`) from YAML files and command-line overrides.

The schema says what a valid config is; this module says where one comes from: a YAML file with
one section per stage (or a flat file that is one section), flags that override single fields
(and their help texts, whose ranges and defaults come from the schema), and the sections one
training run reads together. Errors stay one line naming the file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from rs_seg.config import PrepareConfig, RsSegConfig, SynthConfig, TrainConfig
from rs_seg.errors import RsSegError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error for a missing or malformed file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise RsSegError("config file not found", path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise RsSegError(f"not valid YAML{where}", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RsSegError("a config file must be a mapping of sections", path)
    return data


def format_validation_error(exc: ValidationError) -> str:
    """Condense pydantic's multi-line report into one line a user can act on."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def _section(raw: dict[str, Any], section: str | None, path: Path) -> dict[str, Any]:
    """A file with stage sections yields the requested one; a flat file is the section itself."""
    if section is None or not (raw.keys() & RsSegConfig.model_fields.keys()):
        return dict(raw)
    value = raw.get(section) or {}
    if not isinstance(value, dict):
        raise RsSegError(f"section {section!r} must be a mapping", path)
    return dict(value)


def build_config(
    model: type[M],
    section: str | None,
    config_file: Path | None,
    overrides: dict[str, Any],
) -> M:
    """Build a stage config from an optional YAML section plus explicit overrides.

    ``overrides`` holds only the options the user actually gave (None means "not given"); nested
    keys use dots, e.g. ``{"split.seed": 3}``.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        data = _section(read_yaml(config_file), section, config_file)
    for key, value in overrides.items():
        if value is None:
            continue
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RsSegError(format_validation_error(exc), config_file) from None


@functools.cache
def _properties(model: type[BaseModel]) -> dict[str, Any]:
    return dict(model.model_json_schema()["properties"])


def _range(spec: dict[str, Any]) -> str:
    """A JSON-schema number's bounds in words: ``0-0.9``, ``between 0 and 1``, ``at least 1``."""
    spec = next((s for s in spec.get("anyOf", [spec]) if s.get("type") != "null"), spec)
    low, above = spec.get("minimum", spec.get("exclusiveMinimum")), "exclusiveMinimum" in spec
    high, below = spec.get("maximum", spec.get("exclusiveMaximum")), "exclusiveMaximum" in spec
    if low is not None and high is not None:
        if not (above or below):
            return f"{low:g}-{high:g}"
        if above and below:
            return f"between {low:g} and {high:g}"
        return f"{'above ' if above else ''}{low:g} to {'below ' if below else ''}{high:g}"
    if low is not None:
        return f"above {low:g}" if above else f"at least {low:g}"
    return "" if high is None else (f"below {high:g}" if below else f"at most {high:g}")


def _default_words(stated: Any) -> str | None:
    """A JSON-schema default as a flag would take it: ``0.25``, ``zstd``, ``0.8 0.1 0.1``."""
    if isinstance(stated, bool) or stated is None:
        return None  # a switch, or a default the caller words
    if isinstance(stated, int | float):
        return f"{stated:g}"
    if isinstance(stated, str):
        return stated or None
    if isinstance(stated, list) and stated and all(isinstance(v, int | float) for v in stated):
        return " ".join(f"{v:g}" for v in stated)
    return None


def _field_model(model: type[BaseModel], name: str) -> tuple[type[BaseModel], str]:
    """The model holding a dotted field (``split.seed``: :class:`SplitConfig`) and its own name."""
    *sections, leaf = name.split(".")
    for section in sections:
        nested = model.model_fields[section].annotation
        assert isinstance(nested, type) and issubclass(nested, BaseModel), name
        model = nested
    return model, leaf


def schema_help(model: type[BaseModel], name: str, text: str, default: str | None = None) -> str:
    """``text``, the range the schema accepts and its default (``Window overlap, 0-0.9 [0.25].``).

    Help and validation then cannot disagree (``--overlap 0.99`` was once accepted under a help
    text that said 0-0.9). ``name`` may be dotted (``split.seed``, a field of a section);
    ``default``: the words for a default the schema leaves as None.
    """
    owner, leaf = _field_model(model, name)
    spec = _properties(owner)[leaf]
    bounds = _range(spec)
    shown = _default_words(spec.get("default")) or default
    return text + (f", {bounds}" if bounds else "") + (f" [{shown}]" if shown else "") + "."


class TrainingConfigs(NamedTuple):
    """The sections a training run reads from one YAML file (the train-cropland flow's inputs)."""

    train: TrainConfig
    prepare: PrepareConfig | None
    synth: SynthConfig | None


def load_training_configs(config_file: Path) -> TrainingConfigs:
    """The ``train:``, ``prepare:`` and ``synth:`` sections of a YAML file.

    A ``prepare:`` section that names no scenes but comes with ``synth:`` (``configs/demo.yaml``)
    reads the generated scenes, so a deployment runs on a fresh machine without data; ``synth``
    is returned only in that case.
    """
    raw = read_yaml(config_file)
    train = build_config(TrainConfig, "train", config_file, {})
    section = raw.get("prepare")
    if section is None:
        return TrainingConfigs(train, None, None)
    no_inputs = isinstance(section, dict) and not (
        section.get("scenes") or section.get("chips_dir")
    )
    if not (no_inputs and "synth" in raw):
        return TrainingConfigs(train, build_config(PrepareConfig, "prepare", config_file, {}), None)
    synth = build_config(SynthConfig, "synth", config_file, {})
    prepare = build_config(PrepareConfig, "prepare", config_file, synth.prepare_inputs())
    return TrainingConfigs(train, prepare, synth)
