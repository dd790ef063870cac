"""Mapping new imagery as it arrives: scan, claim in the ledger, infer, record.

A scheduled run lists the scenes matching a folder or glob, and for each one claims its key
(content fingerprint x model id) in the :mod:`rs_seg.ledger`; only a successful claim leads to
inference, so overlapping runs share the work instead of repeating it. Each scene's outputs are
written atomically into its own folder; a failure is recorded and retried by the next run while
the other scenes go on. :func:`plan` and :func:`process_scene` are separate so that an
orchestrator (the ``infer-new-imagery`` flow, a Dask task runner) can spread scenes over workers.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rs_seg.config import IncomingConfig, InferConfig
from rs_seg.errors import RsSegError
from rs_seg.ledger import ANY_MODEL, Ledger, content_fingerprint

log = logging.getLogger(__name__)
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


def list_scenes(incoming: str) -> list[Path]:
    """Scenes in a folder (non-recursive) or matching a glob, in a stable order."""
    path = Path(incoming)
    if path.is_dir():
        found = [p for p in path.iterdir() if p.suffix.lower() in SCENE_SUFFIXES]
    else:
        found = [Path(p) for p in glob.glob(incoming, recursive=True)]  # noqa: PTH207 - absolute globs
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))


def plan(cfg: IncomingConfig) -> list[SceneJob]:
    """Fingerprint every scene and resolve the model once for the whole run."""
    from rs_seg.bundle import ModelBundle
    from rs_seg.registry import latest_bundle

    model = cfg.model or latest_bundle(cfg.models_dir)
    model_id = ModelBundle.load(model).model_id
    key = model_id if cfg.reprocess_on_model_change else ANY_MODEL
    Ledger(cfg.ledger_path)  # create it (and fail early if it cannot be)
    jobs = []
    for scene in list_scenes(cfg.incoming):
        jobs.append(SceneJob(scene, content_fingerprint(scene), Path(model), model_id, key))
    return jobs


def scene_outputs(cfg: IncomingConfig, job: SceneJob) -> Path:
    """Per-scene folder: ``<out_dir>/<scene stem>/<model id>/``."""
    return cfg.out_dir / job.scene.stem / job.model_id


def process_scene(cfg: IncomingConfig, job: SceneJob) -> SceneResult:
    """Claim, map and record one scene; never raises for a bad scene (it is recorded instead)."""
    from rs_seg.inference import run_infer

    ledger = Ledger(cfg.ledger_path)
    if not ledger.claim(job.fingerprint, job.ledger_key, job.scene):
        return SceneResult(job.scene, "skipped")
    folder = scene_outputs(cfg, job)
    infer = InferConfig(
        scene=job.scene, out=folder / "fields.gpkg", model=job.model, overlap=cfg.overlap,
        batch_size=cfg.batch_size, device=cfg.device, tta=cfg.tta, min_area=cfg.min_area,
        overwrite=True,
    )  # fmt: skip
    try:
        summary = run_infer(infer)
    except (RsSegError, OSError, ValueError, RuntimeError) as exc:
        ledger.fail(job.fingerprint, job.ledger_key, str(exc))
        log.warning("%s: failed, will be retried by the next run: %s", job.scene, exc)
        return SceneResult(job.scene, "failed", error=str(exc))
    except BaseException:
        ledger.fail(job.fingerprint, job.ledger_key, "interrupted")
        raise
    ledger.complete(job.fingerprint, job.ledger_key, summary.fields)
    return SceneResult(job.scene, "mapped", summary.fields, summary.polygons)
