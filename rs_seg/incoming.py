"""Mapping new imagery as it arrives: scan, claim in the ledger, infer, record.

A scheduled run lists the scenes matching a folder or glob, and for each one claims its key
(content fingerprint x model id) in the :mod:`rs_seg.ledger`; only a successful claim leads to
inference, so overlapping runs share the work instead of repeating it. Each scene's outputs are
written atomically into its own folder; a failure is recorded and retried by the next run while
the other scenes go on. :func:`process_scene` does all of it for one scene in this process; an
orchestrator (the ``infer-new-imagery`` flow) calls its parts instead: :func:`claim` and
:func:`record` in its own process, :func:`map_scene` on any worker (threads, a Dask cluster),
which needs the scenes and the output folder but never the ledger.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rs_seg.config import IncomingConfig, InferConfig
from rs_seg.errors import RsSegError
from rs_seg.ledger import ANY_MODEL, Ledger

log = logging.getLogger(__name__)
# What a bad scene or a failed read raises; anything else is a bug and propagates.
SCENE_ERRORS = (RsSegError, OSError, ValueError, RuntimeError)
SCENE_SUFFIXES = {".tif", ".tiff", ".vrt", ".jp2", ".img"}


@dataclass(frozen=True)
class SceneJob:
    """One scene to consider: where it is, what it contains, which model maps it."""

    scene: Path
    fingerprint: str
    model: Path
    model_id: str
    ledger_key: str


@dataclass(frozen=True)
class SceneResult:
    """What happened to one scene in this run."""

    scene: Path
    status: Literal["mapped", "skipped", "failed"]
    fields: Path | None = None
    polygons: int = 0
    error: str | None = None
    warnings: tuple[str, ...] = ()  # input checks, e.g. drift from the training statistics


def list_scenes(incoming: str) -> list[Path]:
    """Scenes in a folder (non-recursive) or matching a glob, in a stable order."""
    path = Path(incoming)
    if path.is_dir():
        found = [p for p in path.iterdir() if p.suffix.lower() in SCENE_SUFFIXES]
    else:
        found = [Path(p) for p in glob.glob(incoming, recursive=True)]  # noqa: PTH207 - absolute globs
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))


def plan(cfg: IncomingConfig) -> list[SceneJob]:
    """Fingerprint every scene and resolve the model once for the whole run.

    An empty inbox needs no model, so a schedule set up before the first training run idles
    quietly instead of failing every interval.
    """
    from rs_seg.bundle import ModelBundle
    from rs_seg.registry import latest_bundle

    scenes = list_scenes(cfg.incoming)
    ledger = Ledger(cfg.ledger_path)  # create it (and fail early if it cannot be)
    if not scenes:
        return []
    model = cfg.model or latest_bundle(cfg.models_dir)
    model_id = ModelBundle.load(model).model_id
    key = model_id if cfg.reprocess_on_model_change else ANY_MODEL
    return [SceneJob(s, ledger.fingerprint(s), Path(model), model_id, key) for s in scenes]


def scene_outputs(cfg: IncomingConfig, job: SceneJob) -> Path:
    """Per-scene folder: ``<out_dir>/<scene stem>/<model id>/``."""
    return cfg.out_dir / job.scene.stem / job.model_id


def claim(cfg: IncomingConfig, job: SceneJob) -> bool:
    """Take the scene in the ledger; False when it is done or another live run holds it."""
    return Ledger(cfg.ledger_path).claim(job.fingerprint, job.ledger_key, job.scene)


def map_scene(cfg: IncomingConfig, job: SceneJob) -> SceneResult:
    """Map one claimed scene into its own folder (written atomically; raises on failure).

    Needs no ledger, so it can run on a worker that only sees the scenes and the outputs.
    """
    from rs_seg.inference import run_infer

    infer = InferConfig(
        scene=job.scene, out=scene_outputs(cfg, job) / "fields.gpkg", model=job.model,
        overlap=cfg.overlap, batch_size=cfg.batch_size, device=cfg.device, tta=cfg.tta,
        min_area=cfg.min_area, overwrite=True,
    )  # fmt: skip
    summary = run_infer(infer)
    return SceneResult(
        job.scene, "mapped", summary.fields, summary.polygons, warnings=tuple(summary.warnings)
    )


def record(cfg: IncomingConfig, job: SceneJob, outcome: SceneResult | BaseException) -> SceneResult:
    """Write the outcome of a claimed scene to the ledger; a failure is retried next run."""
    ledger = Ledger(cfg.ledger_path)
    if isinstance(outcome, SceneResult):
        ledger.complete(job.fingerprint, job.ledger_key, outcome.fields or Path())
        return outcome
    message = str(outcome) or type(outcome).__name__
    ledger.fail(job.fingerprint, job.ledger_key, message)
    log.warning("%s: failed, will be retried by the next run: %s", job.scene, message)
    return SceneResult(job.scene, "failed", error=message)


def process_scene(cfg: IncomingConfig, job: SceneJob) -> SceneResult:
    """Claim, map and record one scene; never raises for a bad scene (it is recorded instead)."""
    if not claim(cfg, job):
        return SceneResult(job.scene, "skipped")
    try:
        return record(cfg, job, map_scene(cfg, job))
    except SCENE_ERRORS as exc:
        return record(cfg, job, exc)
    except BaseException:
        record(cfg, job, RuntimeError("interrupted"))
        raise


def mapped_outputs(cfg: IncomingConfig, jobs: list[SceneJob]) -> list[Path]:
    """Fields files of every scene the ledger holds as done under this run's model key."""
    keys = {job.ledger_key for job in jobs}
    done = [
        Path(e.output)
        for e in Ledger(cfg.ledger_path).entries()
        if e.status == "done" and e.model_id in keys and e.output
    ]
    return sorted({p for p in done if p.is_file()})


def write_merged(outputs: list[Path], out: Path, crs: str | None = None) -> int:
    """All scenes' fields in one GeoPackage layer ``fields``, one scene in memory at a time.

    Written to a temporary name and renamed, so readers never see half a layer. Scenes in other
    CRSs are reprojected to ``crs`` (default: the first scene's). Returns the number of fields.
    """
    import pyogrio

    from rs_seg.io import staged_file
    from rs_seg.vectorize import add_default_style

    if not outputs:
        return 0
    total = 0
    with staged_file(out, overwrite=True) as staging:
        for source in outputs:
            fields = pyogrio.read_dataframe(source, layer="fields")
            crs = crs or fields.crs.to_string()
            pyogrio.write_dataframe(
                fields.to_crs(crs), staging, layer="fields", driver="GPKG", append=total > 0,
                promote_to_multi=True,
            )  # fmt: skip
            total += len(fields)
        add_default_style(staging, "fields")
    return total
