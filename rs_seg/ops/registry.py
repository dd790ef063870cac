"""A models directory: registered bundles, a ``latest`` pointer and a log of every decision.

Layout::

    models/
      <model_id>/model-bundle.pt   the bundle (model ids are weight hashes, so never reused)
      <model_id>/metrics.json      validation and test metrics of the run
      <model_id>/report/           the run's evaluation report
      latest.json                  which model inference should use, and why it is trusted
      registry.jsonl               one line per registration: promoted or not, and the reason

``latest`` moves only when a new model is at least as good on the *same* test split as the
incumbent, because test scores on different chip sets cannot be compared: when the chip index
changed, the incumbent is re-scored on the new model's test split first. ``promote="always"``
moves it regardless, ``"never"`` only stores the model. Every file appears atomically (staging
folder or temporary file, then a rename), and a lock serialises concurrent registrations, so a
scheduled flow and a person registering by hand cannot interleave.

Nothing read from a file becomes a path unchecked: a model's folder is named after the hash of
its weights (a bundle claiming another id is refused), only an incomplete model folder is ever
replaced (:data:`MODEL_FOLDER`), and every path ``latest.json`` names must lie inside the models
folder. A malformed ``latest.json``, ``metrics.json`` or log line is one error naming the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, cast

from typing_extensions import TypedDict  # pydantic validates only this TypedDict before 3.12

from rs_seg.errors import RsSegError
from rs_seg.model.bundle import BUNDLE_FILE, ModelBundle, now_iso, weights_id
from rs_seg.model.latest import (
    LATEST_FILE,
    LatestEntry,
    check_plain_file,
    latest_path,
    model_folder,
    read_json,
    read_latest,
    short_repr,
)
from rs_seg.records import BundleMetrics, SplitMetrics
from rs_seg.run_folder import RunFolder
from rs_seg.staging import FolderKind, staged_dir, write_json

fcntl: ModuleType | None
try:  # POSIX only; elsewhere registrations are not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

LOG_FILE = "registry.jsonl"
_LOCK_FILE = ".registry.lock"
_METRICS_FILE = RunFolder(Path()).metrics.name

MODEL_FOLDER = FolderKind(
    "rs-seg model register",
    _METRICS_FILE,
    (BUNDLE_FILE, _METRICS_FILE, RunFolder(Path()).report.name),
)
"""A registered model's folder. One holding its metrics but no bundle (a copy cut short, a bundle
deleted by hand) is stored again; anything else found under a model's name is left alone."""

Promote = Literal["if_better", "always", "never"]


class StoredMetrics(BundleMetrics, total=False):
    """What the registry reads from ``<model_id>/metrics.json``.

    The run's whole ``metrics.json`` (:class:`rs_seg.records.RunMetrics`) when the run folder was
    registered; for a bundle registered on its own, the bundle's metrics plus these three keys.
    """

    model_id: str
    chip_index_fingerprint: str | None
    threshold: float


class LogEntry(TypedDict):
    """One line of ``registry.jsonl``: a registration and the decision about ``latest``."""

    date: str
    model_id: str
    promoted: bool
    reason: str
    promote: Promote
    metric: str
    score: float | None
    incumbent: str | None
    incumbent_score: float | None
    chip_index_fingerprint: str | None


class ModelRow(TypedDict):
    """One registered model as :func:`list_models` reports it."""

    model_id: str
    bundle: Path
    latest: bool
    registered: str | None  # first registration date, from the log
    chip_index_fingerprint: str | None
    threshold: float | None
    test: SplitMetrics | dict[str, float]  # {} for a model stored without test metrics


@dataclass(frozen=True)
class Registration:
    """The outcome of :func:`register`: where the model is stored and whether it became latest."""

    model_id: str
    bundle: Path
    promoted: bool
    reason: str
    incumbent: str | None
    new_score: float
    incumbent_score: float | None


@dataclass(frozen=True)
class _Decision:
    promoted: bool
    reason: str
    incumbent: str | None = None
    incumbent_score: float | None = None


def _json_number(value: float | None) -> float | None:
    """NaN and infinity are not JSON; an undefined score is written as null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _read_metrics(path: Path) -> StoredMetrics:
    """A ``metrics.json``; it must be a JSON object (keys are read with ``.get``)."""
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise RsSegError("is not a metrics file (not a JSON object); fix or remove it", path)
    return cast(StoredMetrics, metrics)


@contextlib.contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the models directory for one registration."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    handle = _open_in_registry(models_dir / _LOCK_FILE, os.O_WRONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def _open_in_registry(path: Path, flags: int) -> int:
    """Open (create) a file of the registry itself, never through a link planted in its place.

    Neither truncated nor followed: a link there would make the lock or the log write into a
    file outside the models folder.
    """
    try:
        return os.open(path, flags | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise RsSegError(
            f"cannot be opened ({exc.strerror}); the registry's own files must be plain files "
            "in the models folder",
            path,
        ) from None


def _source_bundle(run_or_bundle: Path) -> tuple[Path, Path | None]:
    """The bundle file and, when registering a run folder, the run folder it came from."""
    path = Path(run_or_bundle)
    if path.is_dir():
        bundle = path / BUNDLE_FILE
        if not bundle.is_file():
            raise RsSegError(f"no {BUNDLE_FILE} in the run folder; evaluate the run first", path)
        return bundle, path
    if not path.is_file():
        raise RsSegError("model bundle or run folder not found", path)
    return path, path.parent if RunFolder(path.parent).metrics.is_file() else None


def _score(scores: Mapping[str, object], metric: str, where: Path) -> float:
    """``metric`` by name (chosen at run time, hence a mapping); a clear error if not recorded."""
    value = scores.get(metric)
    if not isinstance(value, int | float):
        known = ", ".join(k for k, v in scores.items() if isinstance(v, float)) or "none"
        raise RsSegError(f"no test metric {metric!r} recorded (known: {known})", where)
    return float(value)


def _test_score(metrics: BundleMetrics, metric: str, where: Path) -> float:
    """A test metric from a bundle's or run's metrics; a clear error if it was never recorded."""
    return _score(metrics.get("test") or {}, metric, where)


def _at_least_as_good(new: float, old: float) -> bool:
    """``new >= old``; an undefined (NaN) new score never wins, an undefined old one loses."""
    if math.isnan(new):
        return False
    return math.isnan(old) or new >= old


def _run_files(run: Path | None, bundle: ModelBundle) -> tuple[StoredMetrics, Path | None]:
    """The run's metrics and report when they belong to this bundle, else the bundle's metrics.

    A run folder evaluated again holds a newer bundle than one copied out earlier, so its files
    are used only when its metrics name the same model id.
    """
    if run is not None and RunFolder(run).metrics.is_file():
        metrics = _read_metrics(RunFolder(run).metrics)
        if metrics.get("model_id") == bundle.model_id:
            report = RunFolder(run).report
            return metrics, report if report.is_dir() else None
    stored: dict[str, object] = {  # a dict, not keywords: a bundle's metrics may hold any key
        **bundle.metrics,
        "model_id": bundle.model_id,
        "chip_index_fingerprint": bundle.provenance.get("chip_index_fingerprint"),
        "threshold": bundle.threshold,
    }
    return cast(StoredMetrics, stored), None


def _check_id(bundle: ModelBundle, where: Path) -> None:
    """The bundle's model id must be the hash of its own weights.

    The id names the model's folder and the ``latest`` pointer: a bundle that claims another
    model's id would take that model's place.
    """
    found = weights_id(bundle.state_dict)
    if bundle.model_id != found:
        raise RsSegError(
            f"claims model id {short_repr(bundle.model_id)}, but its weights hash to {found}; the "
            "bundle was edited or assembled wrongly, export it again from its run",
            where,
        )


def _check_replaceable(target: Path) -> None:
    """A folder under a model's name is replaced only when it is an incomplete model folder."""
    if target.is_symlink() or (os.path.lexists(target) and not target.is_dir()):
        raise RsSegError(
            "is in the way of the model of that id and is not a folder the registry wrote; move "
            "it out of the models folder and register again",
            target,
        )
    names = sorted(entry.name for entry in target.iterdir()) if target.is_dir() else []
    foreign = [name for name in names if not MODEL_FOLDER.owns(name)]
    if names and (foreign or MODEL_FOLDER.marker not in names):
        what = f"holds {short_repr(foreign[0])}" if foreign else f"has no {MODEL_FOLDER.marker}"
        raise RsSegError(
            f"{what}, so it is not a model folder the registry wrote; move it out of the models "
            "folder and register again",
            target,
        )


def _store(bundle_path: Path, run: Path | None, bundle: ModelBundle, models_dir: Path) -> Path:
    """Copy bundle, metrics and report into ``<models_dir>/<model_id>`` (once per model id)."""
    target = model_folder(models_dir, bundle.model_id, bundle_path)
    if not target.is_symlink() and (target / BUNDLE_FILE).is_file():
        log.info("model %s is already stored in %s", bundle.model_id, target)
        return target / BUNDLE_FILE
    _check_replaceable(target)
    metrics, report = _run_files(run, bundle)
    # overwrite only an incomplete model folder: the kind is checked again before publication
    with staged_dir(target, overwrite=True, kind=MODEL_FOLDER) as staging:
        shutil.copy2(bundle_path, staging / BUNDLE_FILE)
        write_json(RunFolder(staging).metrics, metrics)
        if report is not None:
            shutil.copytree(report, RunFolder(staging).report, ignore=_links)
    return target / BUNDLE_FILE


def _links(folder: str, names: list[str]) -> list[str]:
    """Entries of a run's report that are links: never followed into the registry.

    A report is copied from a run folder that may come from someone else; a link in it could
    name any file the user can read, which would then be kept (and shared) with the model.
    """
    return [name for name in names if Path(folder, name).is_symlink()]


def _incumbent_stored_score(models_dir: Path, latest: LatestEntry, metric: str) -> float:
    """The incumbent's own test score: from latest.json, or its metrics.json for other metrics."""
    if latest.get("metric") == metric and isinstance(score := latest.get("score"), int | float):
        return float(score)
    path = RunFolder(model_folder(models_dir, latest["model_id"], models_dir / LATEST_FILE)).metrics
    if path.is_file():
        return _test_score(_read_metrics(path), metric, path)
    bundle = latest_path(models_dir, latest)
    return _test_score(ModelBundle.load(bundle).metrics, metric, bundle)


def _rescore_incumbent(
    models_dir: Path, latest: LatestEntry, new: ModelBundle, metric: str
) -> float:
    """Score the incumbent on the new model's test split (its chips must be unchanged)."""
    # re-scoring needs the training stack (Lightning); lookups and registering do not
    from rs_seg.evaluate.evaluation import score_bundle
    from rs_seg.train.dataset import load_chip_splits

    chips_dir = new.provenance.get("chips_dir")
    if not chips_dir or not Path(chips_dir).is_dir():
        raise RsSegError("the new model's chip folder is not available", chips_dir or "?")
    expected = new.provenance.get("chip_index_fingerprint")
    found = load_chip_splits(Path(chips_dir)).fingerprint
    if found != expected:
        raise RsSegError(
            f"chips were re-prepared after the new model was trained (index {found}, model "
            f"{expected})",
            chips_dir,
        )
    incumbent = ModelBundle.load(latest_path(models_dir, latest))
    return _score(score_bundle(incumbent, Path(chips_dir), "test").metrics, metric, Path(chips_dir))


def _compare(
    models_dir: Path, latest: LatestEntry, new: ModelBundle, new_score: float, metric: str
) -> _Decision:
    """The ``if_better`` rule against an existing latest model."""
    incumbent = str(latest["model_id"])
    same_split = latest.get("chip_index_fingerprint") == new.provenance.get(
        "chip_index_fingerprint"
    )
    if same_split:
        old = _incumbent_stored_score(models_dir, latest, metric)
        where = "the same test split"
    else:
        try:
            old = _rescore_incumbent(models_dir, latest, new, metric)
        except RsSegError as exc:
            return _Decision(
                False,
                f"not promoted: incumbent {incumbent} cannot be scored on the new test split "
                f"({exc}); use promote='always' to move latest anyway",
                incumbent,
            )
        where = "the new model's test split (incumbent re-scored)"
    better = _at_least_as_good(new_score, old)
    verdict = "promoted" if better else "not promoted"
    relation = ">=" if better else "<"
    reason = f"{verdict}: test {metric} {new_score:.4f} {relation} {old:.4f} of {incumbent} on "
    return _Decision(better, reason + where, incumbent, old)


def _decide(
    models_dir: Path,
    latest: LatestEntry | None,
    new: ModelBundle,
    new_score: float,
    promote: Promote,
    metric: str,
) -> _Decision:
    if latest is None:
        if promote == "never":
            return _Decision(False, "registered only (promote=never); there is no latest model")
        return _Decision(True, "first registered model")
    incumbent = str(latest["model_id"])
    if incumbent == new.model_id:
        return _Decision(False, "already the latest model", incumbent, new_score)
    if promote == "never":
        return _Decision(False, "registered only (promote=never)", incumbent)
    if promote == "always":
        return _Decision(True, f"promoted: promote=always (replaces {incumbent})", incumbent)
    return _compare(models_dir, latest, new, new_score, metric)


def _point_latest(models_dir: Path, bundle: ModelBundle, metric: str, score: float) -> None:
    entry: LatestEntry = {
        "model_id": bundle.model_id,
        "bundle": f"{bundle.model_id}/{BUNDLE_FILE}",
        "metric": metric,
        "score": _json_number(score),
        "chip_index_fingerprint": bundle.provenance.get("chip_index_fingerprint"),
        "promoted_at": now_iso(),
    }
    write_json(models_dir / LATEST_FILE, entry)


def _log_decision(models_dir: Path, entry: LogEntry) -> None:
    """Append one JSON line with a single write (O_APPEND keeps concurrent lines whole)."""
    line = (json.dumps(entry) + "\n").encode()
    handle = _open_in_registry(models_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(handle, line)
        os.fsync(handle)
    finally:
        os.close(handle)


def register(
    run_or_bundle: Path,
    models_dir: Path,
    promote: Promote = "if_better",
    metric: str = "mean_iou",
) -> Registration:
    """Store a trained model in ``models_dir`` and move ``latest`` to it if it earns it.

    Args:
        run_or_bundle: an evaluated run folder (its metrics and report are copied too) or a
            ``model-bundle.pt`` file.
        models_dir: the registry folder; created when missing.
        promote: ``if_better`` (at least as good as the incumbent on the same test split),
            ``always`` or ``never`` (store only).
        metric: the test metric compared, e.g. ``mean_iou`` or ``cropland_iou``.

    Returns:
        Where the model is stored, whether it became latest, and why.

    Raises:
        RsSegError: no bundle, a bundle whose id is not its weights' hash, the bundle lacks the
            test metric, or a registry file is malformed or in the way.
    """
    bundle_path, run = _source_bundle(Path(run_or_bundle))
    bundle = ModelBundle.load(bundle_path)
    _check_id(bundle, bundle_path)
    new_score = _test_score(bundle.metrics, metric, bundle_path)
    models_dir = _models_folder(Path(models_dir))
    with _locked(models_dir):
        latest = read_latest(models_dir)  # before anything is stored: a bad pointer stops here
        check_plain_file(models_dir / LOG_FILE)
        stored = _store(bundle_path, run, bundle, models_dir)
        decision = _decide(models_dir, latest, bundle, new_score, promote, metric)
        if decision.promoted:
            _point_latest(models_dir, bundle, metric, new_score)
        _log_decision(models_dir, _log_entry(bundle, decision, promote, metric, new_score))
    log.info("model %s: %s", bundle.model_id, decision.reason)
    return Registration(
        model_id=bundle.model_id,
        bundle=stored,
        promoted=decision.promoted,
        reason=decision.reason,
        incumbent=decision.incumbent,
        new_score=new_score,
        incumbent_score=decision.incumbent_score,
    )


def _models_folder(models_dir: Path) -> Path:
    """The models folder, created when missing."""
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RsSegError(
            f"cannot be used as the models folder ({exc.strerror})", models_dir
        ) from None
    return models_dir


def _log_entry(
    bundle: ModelBundle, decision: _Decision, promote: Promote, metric: str, score: float
) -> LogEntry:
    return {
        "date": now_iso(),
        "model_id": bundle.model_id,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "promote": promote,
        "metric": metric,
        "score": _json_number(score),
        "incumbent": decision.incumbent,
        "incumbent_score": _json_number(decision.incumbent_score),
        "chip_index_fingerprint": bundle.provenance.get("chip_index_fingerprint"),
    }


def _registered_dates(models_dir: Path) -> dict[str, str]:
    """When each model id was first registered, from the decision log."""
    path = models_dir / LOG_FILE
    dates: dict[str, str] = {}
    if path.is_file():
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    model_id, date = entry.get("model_id"), entry.get("date")
                    if isinstance(model_id, str) and isinstance(date, str):
                        dates.setdefault(model_id, date)
    return dates


def list_models(models_dir: Path) -> list[ModelRow]:
    """Registered models, oldest first: id, bundle path, test metrics, fingerprint, latest flag."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    pointer = read_latest(models_dir)
    latest = pointer.get("model_id") if pointer is not None else None
    dates = _registered_dates(models_dir)
    rows: list[ModelRow] = []
    folders = [p for p in models_dir.iterdir() if not p.name.startswith(".")]  # skip staging
    for folder in sorted(p for p in folders if (p / BUNDLE_FILE).is_file()):
        metrics_path = RunFolder(folder).metrics
        metrics = _read_metrics(metrics_path) if metrics_path.is_file() else StoredMetrics()
        rows.append(
            {
                "model_id": folder.name,
                "bundle": folder / BUNDLE_FILE,
                "latest": folder.name == latest,
                "registered": dates.get(folder.name),
                "chip_index_fingerprint": metrics.get("chip_index_fingerprint"),
                "threshold": metrics.get("threshold"),
                "test": metrics.get("test") or {},
            }
        )
    return sorted(rows, key=lambda r: (r["registered"] or "", r["model_id"]))
