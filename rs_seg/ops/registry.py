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
from typing import Literal, TypedDict, cast

from rs_seg.bundle import BUNDLE_FILE, ModelBundle, now_iso
from rs_seg.errors import RsSegError
from rs_seg.records import BundleMetrics, SplitMetrics
from rs_seg.run_folder import RunFolder
from rs_seg.staging import staged_dir, write_json

fcntl: ModuleType | None
try:  # POSIX only; elsewhere registrations are not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

LATEST_FILE = "latest.json"
LOG_FILE = "registry.jsonl"
_LOCK_FILE = ".registry.lock"
NO_MODEL_HINT = "no registered model; train one with rs-seg train / the train-cropland flow"

Promote = Literal["if_better", "always", "never"]


class StoredMetrics(BundleMetrics, total=False):
    """What the registry reads from ``<model_id>/metrics.json``.

    The run's whole ``metrics.json`` (:class:`rs_seg.records.RunMetrics`) when the run folder was
    registered; for a bundle registered on its own, the bundle's metrics plus these three keys.
    """

    model_id: str
    chip_index_fingerprint: str | None
    threshold: float


class LatestEntry(TypedDict):
    """``latest.json``: the model inference uses, and the test score that earned it the place."""

    model_id: str
    bundle: str  # relative to the models directory
    metric: str
    score: float | None  # null when undefined (NaN)
    chip_index_fingerprint: str | None
    promoted_at: str


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
    """NaN is not JSON; an undefined score is written as null."""
    return None if value is None or math.isnan(value) else float(value)


@contextlib.contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the models directory for one registration."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with (models_dir / _LOCK_FILE).open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
        metrics = cast(StoredMetrics, json.loads(RunFolder(run).metrics.read_text()))
        if metrics.get("model_id") == bundle.model_id:
            report = RunFolder(run).report
            return metrics, report if report.is_dir() else None
    metrics = StoredMetrics(
        **bundle.metrics,
        model_id=bundle.model_id,
        chip_index_fingerprint=bundle.provenance.get("chip_index_fingerprint"),
        threshold=bundle.threshold,
    )
    return metrics, None


def _store(bundle_path: Path, run: Path | None, bundle: ModelBundle, models_dir: Path) -> Path:
    """Copy bundle, metrics and report into ``<models_dir>/<model_id>`` (once per model id)."""
    target = models_dir / bundle.model_id
    if (target / BUNDLE_FILE).is_file():
        log.info("model %s is already stored in %s", bundle.model_id, target)
        return target / BUNDLE_FILE
    metrics, report = _run_files(run, bundle)
    with staged_dir(target, overwrite=True) as staging:  # overwrite: only an incomplete folder
        shutil.copy2(bundle_path, staging / BUNDLE_FILE)
        write_json(RunFolder(staging).metrics, metrics)
        if report is not None:
            shutil.copytree(report, RunFolder(staging).report)
    return target / BUNDLE_FILE


def _read_latest(models_dir: Path) -> LatestEntry | None:
    path = models_dir / LATEST_FILE
    if not path.is_file():
        return None
    try:
        return cast(LatestEntry, json.loads(path.read_text()))
    except ValueError:
        raise RsSegError("not valid JSON; fix or remove it", path) from None


def _incumbent_stored_score(models_dir: Path, latest: LatestEntry, metric: str) -> float:
    """The incumbent's own test score: from latest.json, or its metrics.json for other metrics."""
    if latest.get("metric") == metric and isinstance(score := latest.get("score"), int | float):
        return float(score)
    path = RunFolder(models_dir / latest["model_id"]).metrics
    if path.is_file():
        return _test_score(cast(StoredMetrics, json.loads(path.read_text())), metric, path)
    bundle = models_dir / latest["bundle"]
    return _test_score(ModelBundle.load(bundle).metrics, metric, bundle)


def _rescore_incumbent(
    models_dir: Path, latest: LatestEntry, new: ModelBundle, metric: str
) -> float:
    """Score the incumbent on the new model's test split (its chips must be unchanged)."""
    # re-scoring needs the training stack (Lightning); lookups and registering do not
    from rs_seg.train.dataset import load_chip_splits
    from rs_seg.train.evaluation import score_bundle

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
    incumbent = ModelBundle.load(models_dir / latest["bundle"])
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
    models_dir: Path, new: ModelBundle, new_score: float, promote: Promote, metric: str
) -> _Decision:
    latest = _read_latest(models_dir)
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
    line = json.dumps(entry) + "\n"
    with (models_dir / LOG_FILE).open("a") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


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
        RsSegError: no bundle, or the bundle lacks the test metric.
    """
    bundle_path, run = _source_bundle(Path(run_or_bundle))
    bundle = ModelBundle.load(bundle_path)
    new_score = _test_score(bundle.metrics, metric, bundle_path)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    with _locked(models_dir):
        stored = _store(bundle_path, run, bundle, models_dir)
        decision = _decide(models_dir, bundle, new_score, promote, metric)
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


def latest_bundle(models_dir: Path) -> Path:
    """The bundle ``latest.json`` points to; what inference uses when no model is named."""
    models_dir = Path(models_dir)
    latest = _read_latest(models_dir)
    if latest is None:
        raise RsSegError(NO_MODEL_HINT, models_dir)
    bundle: Path = models_dir / latest["bundle"]
    if not bundle.is_file():
        raise RsSegError(f"latest.json points to a missing bundle ({latest['bundle']})", models_dir)
    return bundle


def _registered_dates(models_dir: Path) -> dict[str, str]:
    """When each model id was first registered, from the decision log."""
    path = models_dir / LOG_FILE
    dates: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                dates.setdefault(entry["model_id"], entry["date"])
    return dates


def list_models(models_dir: Path) -> list[ModelRow]:
    """Registered models, oldest first: id, bundle path, test metrics, fingerprint, latest flag."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    pointer = _read_latest(models_dir)
    latest = pointer.get("model_id") if pointer is not None else None
    dates = _registered_dates(models_dir)
    rows: list[ModelRow] = []
    folders = [p for p in models_dir.iterdir() if not p.name.startswith(".")]  # skip staging
    for folder in sorted(p for p in folders if (p / BUNDLE_FILE).is_file()):
        metrics_path = RunFolder(folder).metrics
        metrics = (
            cast(StoredMetrics, json.loads(metrics_path.read_text()))
            if metrics_path.is_file()
            else StoredMetrics()
        )
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
