"""The command line follows the config schema (``rs_seg/config.py``), read from the typer app.

Each command's flags are found by giving them one at a time and catching what the command hands to
``build_config``, so the test learns the flag -> field mapping from the command and needs no copy
of it. Then: (a) every field of a command's config is a flag or declared config-only
(``rs_seg.cli.CONFIG_ONLY``); (b) every flag's help states the range of its field (ge/gt/le/lt, read
from the field's metadata) and its default, so a bound or default changed in the schema but not in
a hand-written help fails here; (c) ``label_map`` takes the flag's text in YAML and flow
parameters too.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest
import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from typer.testing import CliRunner

import rs_seg.cli as cli
from rs_seg.config import LabelMap, PrepareConfig
from rs_seg.config_files import build_config
from rs_seg.errors import RsSegError

COMMANDS = typer.main.get_command(cli.app).commands  # type: ignore[attr-defined]
# Commands that map flags onto a config model: those with a YAML section (CONFIG_ONLY's keys)
# and vectorize, whose threshold and polygon flags are InferOptions fields.
SCHEMA_COMMANDS = [*cli.CONFIG_ONLY, "vectorize"]
# Parameters that are no field of the command's config.
NOT_FIELDS = {
    "train": {"resume"},  # how to run, not what: a resumed run keeps its config
    "vectorize": {"prob", "out", "grow", "split", "overwrite"},  # not infer settings
}
# What the commands import once their flags are read, stood in for: no GDAL, torch or data needed
# (a name no command imports any more costs nothing; a module missing here is imported for real).
DEFERRED = (
    "rs_seg.synthetic",
    "rs_seg.prepare.run",
    "rs_seg.train.fit",
    "rs_seg.train.evaluation",
    "rs_seg.evaluate.evaluation",
    "rs_seg.evaluate.run",
    "rs_seg.infer.run",
    "rs_seg.infer.vectorize",
    "rs_seg.rasters",
)
# A value every flag takes ("2": a number, a name, a band list) but --label-map.
SAMPLES = {"label_map": "1=cropland,5=ignore"}


class Built(Exception):  # noqa: N818 - not an error: the command's config, caught
    """What a command handed to ``build_config``: its model, section and the flags given."""

    def __init__(self, model: type[BaseModel], section: str | None, given: dict[str, Any]) -> None:
        super().__init__(model.__name__)
        self.model, self.section, self.given = model, section, given


def _stand_in(name: str) -> types.ModuleType:
    """A module whose every public name is a function doing nothing (dunders stay unset)."""

    def attribute(attr: str) -> Callable[..., None]:
        if attr.startswith("__"):
            raise AttributeError(attr)  # __file__, __path__, ...: what importers probe
        return lambda *args, **kwargs: None

    module = types.ModuleType(name)
    module.__getattr__ = attribute  # type: ignore[method-assign]
    return module


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Built]:
    """``built(command, *args)``: what ``rs-seg command *args`` builds its config from."""

    def fake_build_config(
        model: type[BaseModel], section: str | None, config: Path | None, given: dict[str, Any]
    ) -> Any:
        raise Built(model, section, {k: v for k, v in given.items() if v is not None})

    monkeypatch.setattr(cli, "build_config", fake_build_config)
    for name in DEFERRED:
        monkeypatch.setitem(sys.modules, name, _stand_in(name))

    def run(command: str, *args: str) -> Built:
        result = CliRunner().invoke(cli.app, [command, *_required(command), *args])
        assert isinstance(result.exception, Built), result.output
        return result.exception

    return run


def _required(command: str) -> list[str]:
    """Values for a command's required arguments and options."""
    values = []
    for param in COMMANDS[command].params:
        if param.required:
            values += [*param.opts[:1]] if param.param_type_name == "option" else []
            values.append(f"{param.name}.tif")
    return values


def _sample(param: Any) -> list[str]:
    """The command-line words that give ``param`` a value."""
    flag = param.opts[0]
    if param.is_flag:
        return [param.secondary_opts[0] if param.default is True else flag]
    return [flag, *[SAMPLES.get(param.name, "2")] * param.nargs]


def _flag_fields(
    built: Callable[..., Built], command: str
) -> tuple[type[BaseModel], dict[str, str]]:
    """The command's config model and the field each of its flags sets."""
    baseline = built(command)
    fields = {}
    for param in COMMANDS[command].params:
        if param.name == "config" or param.required:
            continue
        given = built(command, *_sample(param)).given
        new = sorted(given.keys() - baseline.given.keys())
        assert len(new) <= 1, f"{command} --{param.name} sets {new}"
        if new:
            fields[param.name] = new[0]
    for param in COMMANDS[command].params:  # required ones: the value given in the baseline
        if param.required and param.name in baseline.given:
            fields[param.name] = param.name
    return baseline.model, fields


def _field(model: type[BaseModel], dotted: str) -> FieldInfo:
    *sections, leaf = dotted.split(".")
    for section in sections:
        model = model.model_fields[section].annotation  # type: ignore[assignment]
    return model.model_fields[leaf]


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field, sections (a nested model, not optional) by their fields: ``split.seed``."""
    names = []
    for name, info in model.model_fields.items():
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            names += _leaf_fields(nested, f"{prefix}{name}.")
        else:
            names.append(f"{prefix}{name}")
    return names


def _bounds(info: FieldInfo) -> dict[str, float]:
    """ge/gt/le/lt of a field, also where they sit inside ``X | None`` or ``int | Literal``."""
    items = list(info.metadata)
    for member in get_args(info.annotation):
        items += getattr(member, "__metadata__", ())
    found = {}
    while items:
        item = items.pop()
        if isinstance(item, FieldInfo):
            items += item.metadata
        for kind in ("ge", "gt", "le", "lt"):
            if getattr(item, kind, None) is not None:
                found[kind] = getattr(item, kind)
    return found


def _default_words(info: FieldInfo) -> str | None:
    """The default as the help shows it (``[0.25]``, ``[zstd]``, ``[0.8 0.1 0.1]``); None: none."""
    value = info.default
    if value is PydanticUndefined or value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return " ".join(f"{v:g}" for v in value) or None
    return str(value)


def test_the_commands_that_read_a_config_section_are_all_checked() -> None:
    with_config = {
        name for name, cmd in COMMANDS.items() if "config" in [p.name for p in cmd.params]
    }
    assert with_config - {"demo"} == set(cli.CONFIG_ONLY), "demo reads whole files, no flags"


@pytest.mark.parametrize("command", list(cli.CONFIG_ONLY))
def test_every_field_is_a_flag_or_declared_config_only(
    command: str, built: Callable[..., Built]
) -> None:
    model, flags = _flag_fields(built, command)
    fields = _leaf_fields(model)
    config_only = cli.CONFIG_ONLY[command]
    for name in config_only:  # a field, or a section whose fields without a flag are config-only
        assert name in fields or any(f.startswith(f"{name}.") for f in fields), name
        assert name not in flags.values(), f"{name} is a flag and declared config-only"
    missing = [
        field
        for field in fields
        if field not in flags.values()
        and not any(field == c or field.startswith(f"{c}.") for c in config_only)
    ]
    assert not missing, f"{command}: neither a flag nor in CONFIG_ONLY: {missing}"
    unmapped = {p.name for p in COMMANDS[command].params} - {"config"} - flags.keys()
    assert unmapped == NOT_FIELDS.get(command, set()), f"{command}: flags that set nothing"
    epilog = " ".join((COMMANDS[command].epilog or "").split())
    assert all(name in epilog for name in config_only), "config-only fields shown in --help"


@pytest.mark.parametrize("command", SCHEMA_COMMANDS)
def test_flag_help_states_the_range_and_default_of_its_field(
    command: str, built: Callable[..., Built]
) -> None:
    model, flags = _flag_fields(built, command)
    assert flags, command
    params = {p.name: p for p in COMMANDS[command].params}
    for name, dotted in flags.items():
        info = _field(model, dotted)
        text = " ".join((params[name].help or "").split())
        where = f"{command} {params[name].opts[0]} ({dotted}): {text!r}"
        for kind, bound in _bounds(info).items():
            assert f"{bound:g}" in text, f"{where} lacks its bound {kind}={bound:g}"
            exclusive = {"gt": ("above", "between"), "lt": ("below", "between")}.get(kind, ())
            assert not exclusive or any(w in text for w in exclusive), f"{where}: {kind} unsaid"
        default = _default_words(info)
        assert default is None or f"[{default}]" in text, f"{where} lacks its default [{default}]"


def test_yaml_label_map_takes_the_text_of_the_flag(
    tmp_path: Path, built: Callable[..., Built]
) -> None:
    text = "1=cropland,5=ignore"
    flag = built("prepare", "--chips-dir", "chips", "--label-map", text)
    from_flag = build_config(PrepareConfig, "prepare", None, flag.given)
    as_text, as_mapping, bad = (tmp_path / f"{n}.yaml" for n in ("text", "mapping", "bad"))
    as_text.write_text(f"prepare:\n  chips_dir: chips\n  label_map: '{text}'\n")
    as_mapping.write_text(
        "prepare:\n  chips_dir: chips\n  label_map: {cropland: [1], ignore: [5]}\n"
    )
    bad.write_text("prepare:\n  chips_dir: chips\n  label_map: '1:cropland'\n")
    for path in (as_text, as_mapping):
        assert build_config(PrepareConfig, "prepare", path, {}) == from_flag
    assert from_flag.label_map == LabelMap(cropland=[1], ignore=[5])
    with pytest.raises(RsSegError) as error:
        build_config(PrepareConfig, "prepare", bad, {})
    assert "\n" not in str(error.value)
    assert "label_map: label map entry '1:cropland' is not of the form VALUES=TARGET" in str(
        error.value
    )


def test_flow_parameters_take_the_label_map_text_and_mapping() -> None:
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from flows.prepare_chips import prepare_chips

    schema = parameter_schema(prepare_chips.fn).model_dump_for_openapi()
    for label_map in ("1=cropland,5=ignore", {"cropland": [1], "ignore": [5]}):
        parameters = {"config": {"chips_dir": "chips", "label_map": label_map}}
        validate(parameters, schema, raise_on_error=True)  # what the server checks a run against
        config = prepare_chips.validate_parameters(parameters)["config"]
        assert config.label_map == LabelMap(cropland=[1], ignore=[5])
