"""Hostile model bundles and registry files: nothing read from them becomes a path, and edited
metadata is one line, never a traceback or a huge allocation (issue 27, items 2 and 9).

A user's files lie beside and above the models folder; every attack checks that they, and the
registry itself where the attack is refused, are byte for byte what they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rs_seg.errors import RsSegError
from rs_seg.model.bundle import BUNDLE_FILE, ModelBundle
from rs_seg.model.latest import LATEST_FILE, latest_bundle
from rs_seg.ops.registry import list_models, register
from tests.helpers import assert_one_line_error, digest, make_bundle, rs_seg, write_scene


def user_files(root: Path) -> None:
    """What a user keeps beside and above the models folder."""
    (root / "thesis").mkdir(parents=True)
    (root / "thesis" / "chapter1.md").write_text("years of work\n")
    (root / "notes.txt").write_text("keep me\n")
    (root / "work" / "runs").mkdir(parents=True)
    (root / "work" / "runs" / "keep.txt").write_text("a run's notes\n")


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[str, int, int] | None]:
    """Every entry under ``root`` (outside ``skip``): None for a folder, else a hash of its bytes
    (of files under 1 MB; bundles are never written in place, size and mtime tell), size, mtime.
    """
    found: dict[str, tuple[str, int, int] | None] = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_dir() and not path.is_symlink():
            found[str(path.relative_to(root))] = None
            continue
        info = path.lstat()
        small = info.st_size < 1 << 20 and not path.is_symlink()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if small else ""
        found[str(path.relative_to(root))] = (content, info.st_size, info.st_mtime_ns)
    return found


def rewritten(source: Path, target: Path, **meta: Any) -> Path:
    """``source`` with metadata keys replaced, saved as bundle.py stores a bundle."""
    payload = torch.load(source, weights_only=True)
    for key, value in meta.items():
        *parents, leaf = key.split("__")
        where = payload["meta"]
        for parent in parents:
            where = where[parent]
        where[leaf] = value
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, target)
    return target


# --- the real commands -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's files, a registry with one model, a scene and a bundle to edit (made once)."""
    root = tmp_path_factory.mktemp("site")
    user_files(root)
    good = make_bundle(root / "incoming" / "good.pt", chip=64)
    payload = torch.load(good, weights_only=True)
    payload["meta"]["metrics"] = {"test": {"mean_iou": 0.5}}
    torch.save(payload, good)
    register(good, root / "work" / "models")
    write_scene(root / "work" / "scene.tif", 80, 80)
    return root


@pytest.fixture
def work(tmp_path: Path, site: Path) -> Path:
    return Path(shutil.copytree(site, tmp_path / "site", symlinks=True))


def test_register_never_uses_a_bundles_model_id_as_a_path(work: Path) -> None:
    """The id named ``models/<id>``: an absolute path replaced a user's folder with the model
    (``..`` and ``.``, which replaced the registry, are tests/ops/test_registry.py's)."""
    evil = rewritten(work / "incoming" / "good.pt", work / "evil" / "m.pt",
                     provenance__model_id=str(work / "thesis"))  # fmt: skip
    before = digest(work)
    result = rs_seg("model", "register", evil, "--models-dir", "work/models", cwd=work)
    assert_one_line_error(result, str(evil), "provenance.model_id")
    assert digest(work) == before


def test_infer_refuses_a_huge_chip_size_before_writing_anything(work: Path) -> None:
    """A chip size of 10^12 once asked for 7.28 TiB when the windows were allocated (``model
    info`` and ``model register`` read bundles through the same check)."""
    evil = rewritten(work / "incoming" / "good.pt", work / "evil" / "m.pt", chip_size=10**12)
    before = digest(work)
    result = rs_seg("infer", "work/scene.tif", "-o", "work/f.gpkg", "--model", evil, cwd=work)
    assert_one_line_error(result, str(evil), "chip_size: Input should be less than or equal to")
    assert digest(work) == before and result.stdout == ""


def test_infer_refuses_a_latest_json_that_points_outside(work: Path) -> None:
    """Without --model, infer reads the bundle latest.json names: it must be in the registry."""
    models = work / "work" / "models"
    pointer = json.loads((models / LATEST_FILE).read_text())
    pointer["bundle"] = "../../incoming/good.pt"
    (models / LATEST_FILE).write_text(json.dumps(pointer))
    before = digest(work)
    result = rs_seg("infer", "work/scene.tif", "-o", "work/f.gpkg", "--models-dir", models,
                    cwd=work)  # fmt: skip
    assert_one_line_error(result, str(models / LATEST_FILE), "not inside the models folder")
    assert digest(work) == before


# --- random metadata, in process ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_payload(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A valid fields bundle with every key filled in, as the file holds it."""
    path = make_bundle(tmp_path_factory.mktemp("small") / BUNDLE_FILE, task="fields")
    payload = torch.load(path, weights_only=True)
    payload["meta"].update(
        fields={"threshold": 0.5, "boundary_threshold": 0.5, "min_area": 500.0, "grow": 3},
        metrics={"test": {"mean_iou": 0.5}, "validation": {"mean_iou": 0.5}},
    )  # fmt: skip
    payload["meta"]["provenance"]["chip_index_fingerprint"] = "fp"
    return payload


@pytest.fixture(scope="module")
def registry_site(tmp_path_factory: pytest.TempPathFactory, small_payload: dict) -> Path:
    """User files and a registry holding one model (copied for every example)."""
    root = tmp_path_factory.mktemp("registry")
    user_files(root)
    torch.save(small_payload, root / "incoming.pt")
    register(root / "incoming.pt", root / "work" / "models")
    return root


# Paths a hostile file may name; USER becomes a user's folder of the example.
PATHS = [
    "..", ".", "/", "../..", "../../thesis", "USER", "USER/notes.txt", "a/../../b", "",
    "model-bundle.pt", "0123456789ab", "0123456789ab/../..", "\x00", "é/ü", "a" * 300,
]  # fmt: skip
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 8, 64, 8192, 8193, 65535, 65536, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.0001, float("nan"), float("inf"), -float("inf")]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.sampled_from(PATHS), st.text(max_size=8))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(PATHS), inner, max_size=3)
    ),
    max_leaves=6,
)
# Where edits land: the keys inference and the registry read, nested ones as dotted paths. Keys
# the registry uses but no range limits come twice as often, so that about a third of the
# examples load and go on into a registration (a model id, a score, a fingerprint of any kind).
KEYS = [
    "model", "model.arch", "model.encoder", "model.bands", "model.task", "bands", "bands.0",
    "band_names", "band_names.1", "normalization", "normalization.mean", "normalization.std",
    "normalization.std.2", "chip_size", "threshold", "pixel_size", "pixel_size.0",
    "fields", "fields.threshold", "fields.boundary_threshold", "fields.grow", "fields.min_area",
    "band_count", "classes", "metrics", "metrics.test", "provenance", "provenance.versions",
    *["crs", "dtype", "nodata", "metrics.test.mean_iou", "metrics.validation",
      "provenance.model_id", "provenance.chip_index_fingerprint", "provenance.chips_dir",
      "provenance.created"] * 2,
]  # fmt: skip
EDITS = st.lists(
    st.tuples(st.sampled_from(KEYS), st.one_of(st.just("DELETE"), VALUES)), min_size=1, max_size=4
)


def _apply(meta: Any, key: str, value: Any, user: Path) -> None:
    """Replace (or delete) ``meta[key]``; a path through something that is not a container is
    skipped (an earlier edit replaced it)."""
    *parents, leaf = key.split(".")
    where = meta
    for parent in parents:
        where = where.get(parent) if isinstance(where, dict) else None
        if not isinstance(where, dict | list):
            return
    value = json.loads(json.dumps(value).replace("USER", str(user)), parse_constant=float)
    if isinstance(where, list):
        if leaf.isdigit() and int(leaf) < len(where):
            where[int(leaf)] = value if value != "DELETE" else None
    elif value == "DELETE":
        where.pop(leaf, None)
    else:
        where[leaf] = value


def _use(bundle_path: Path, models: Path) -> None:
    """What a user does with a bundle: look at it, register it, find the latest model.

    Registering reads the bundle first (:meth:`ModelBundle.load`), so a bundle that cannot be
    loaded is not registered again: it would end in the same error before anything is written.
    """
    loaded = False
    with refused_or_done():
        bundle = ModelBundle.load(bundle_path)
        bundle.describe()
        json.dumps(bundle.meta())
        _ = (bundle.band_index, bundle.in_channels, bundle.field_settings, bundle.model_id)
        loaded = True
    if loaded:
        with refused_or_done():
            register(bundle_path, models, promote="always")
    with refused_or_done():
        assert models.resolve() in latest_bundle(models).resolve().parents
    with refused_or_done():
        list_models(models)


@contextlib.contextmanager
def refused_or_done() -> Iterator[None]:
    """Success, or a one-line RsSegError; any other exception is a bug the fuzzing found."""
    try:
        yield
    except RsSegError as exc:
        assert "\n" not in str(exc)


@contextlib.contextmanager
def example_site(registry_site: Path) -> Iterator[Path]:
    """A fresh copy of the registry site for one example, removed afterwards.

    Bundles are hard links (a bundle is never written in place, only replaced): copying them for
    each example would cost more than the example. Small files, the registry's log among them
    (appended to), are copied.
    """
    with tempfile.TemporaryDirectory(dir=registry_site.parent) as folder:
        copy = Path(folder) / "site"
        yield Path(shutil.copytree(registry_site, copy, symlinks=True, copy_function=_link_large))


def _link_large(source: str, target: str) -> None:
    if Path(source).stat().st_size >= 1 << 20:
        os.link(source, target)
    else:
        shutil.copy2(source, target)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(edits=EDITS)
def test_random_metadata_is_loaded_or_refused_and_touches_nothing_outside(
    registry_site: Path, small_payload: dict, edits: list[tuple[str, Any]]
) -> None:
    """Random keys removed or replaced (NaN, infinities, huge and negative numbers, path-like
    strings, wrong types): loading, registering and mapping with the latest model succeed or
    end in one RsSegError, and no file outside the models folder changes."""
    with example_site(registry_site) as root:
        models = root / "work" / "models"
        meta = json.loads(json.dumps(small_payload["meta"]))
        for key, value in edits:
            _apply(meta, key, value, root / "thesis")
        evil = root / "incoming" / "evil.pt"
        evil.parent.mkdir(exist_ok=True)
        torch.save({**small_payload, "meta": meta}, evil)
        before = snapshot(root, skip=models)
        _use(evil, models)
        assert snapshot(root, skip=models) == before


LATEST = st.fixed_dictionaries(
    {},
    optional={
        "model_id": VALUES, "bundle": st.one_of(st.sampled_from(PATHS), VALUES),
        "metric": st.one_of(st.just("mean_iou"), VALUES), "score": VALUES,
        "chip_index_fingerprint": VALUES, "promoted_at": st.one_of(st.just("2026"), VALUES),
    },
)  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(pointer=st.one_of(LATEST, VALUES), raw=st.sampled_from([None, b"{", b"\xff", b""]))
def test_random_latest_json_is_used_or_refused_and_touches_nothing_outside(
    registry_site: Path, pointer: Any, raw: bytes | None
) -> None:
    """Whatever latest.json holds, the registry and infer's model lookup read only inside."""
    with example_site(registry_site) as root:
        models = root / "work" / "models"
        text = json.dumps(pointer).replace("USER", str(root / "thesis")).encode()
        (models / LATEST_FILE).write_bytes(raw if raw is not None else text)
        before = snapshot(root, skip=models)
        _use(root / "incoming.pt", models)
        assert snapshot(root, skip=models) == before
