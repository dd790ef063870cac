"""Mapping new imagery as it arrives: scan, claim in the ledger, infer, record.

A scheduled run lists the scenes matching a folder or glob and keeps only the complete ones
(:func:`scan`): a file must have kept its size and mtime for ``settle_seconds`` and must read as a
raster to its last block; any other file is *waiting* (with the reason) for a later run, and is
neither claimed nor counted as failed. For each complete scene it claims its key (content
fingerprint x model id) in the :mod:`rs_seg.ops.ledger`; only a successful claim leads to inference,
so overlapping runs share the work instead of repeating it. Each scene's folder
``<out_dir>/<scene>/<model id>/`` is built in a staging folder and published with one rename, so
its fields and probability raster appear together or not at all; a failure is recorded and
retried by the next run while the other scenes go on. ``<scene>`` is the scene's unique name
(:mod:`rs_seg.ops.names`: its stem when that is plain, else its path below the inbox with a
short hash), which also prefixes its field ids, so no two scenes share a folder or a field id.
:func:`map_scenes` does all of it: claims and records in the calling process, :func:`map_scene`
wherever the caller submits it. By default that is this process, one scene after another; the
``infer-new-imagery`` flow passes its task runner's submit (threads, a Dask cluster), whose
workers need the scenes and the output folder but never the ledger.

Scenes can also come from a STAC catalog or item collection (``stac:`` instead of ``incoming:``,
:mod:`rs_seg.ops.stac`): each item the filters keep is a job whose scene is its asset (a URL read
window by window, or a local file), keyed in the ledger by a fingerprint of the item and recorded
with the item id; its folder is ``<out_dir>/<item name>/<model id>/`` (the item id when plain).
Items are complete when published, so they never wait; items the filters leave out are listed as
*excluded*.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import pyogrio
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

import rs_seg
from rs_seg.config import IncomingConfig
from rs_seg.errors import RsSegError, check_utf8_name, printable
from rs_seg.infer.field_layer import FieldLayerWriter, LayerInfo, merge_scenes, output_driver
from rs_seg.infer.run import run_infer
from rs_seg.model.bundle import ModelBundle
from rs_seg.model.latest import latest_bundle
from rs_seg.ops.ledger import ANY_MODEL, Ledger
from rs_seg.ops.names import inbox_key, inbox_name, inbox_root, item_name
from rs_seg.ops.stac import select_scenes
from rs_seg.rasters import GDAL_ENV, gdal_message
from rs_seg.remote import display, file_name, redact_text
from rs_seg.staging import (
    FolderKind,
    check_not_inputs,
    fields_written_by_rs_seg,
    staged_dir,
    staged_file,
)

log = logging.getLogger(__name__)
# What a bad scene or a failed read raises; anything else is a bug and propagates.
SCENE_ERRORS = (RsSegError, OSError, ValueError, RuntimeError)
SCENE_SUFFIXES = {".tif", ".tiff", ".vrt", ".jp2", ".img"}
# A per-scene folder holds these and nothing else, so re-mapping replaces only rs_seg's own.
SCENE_FOLDER = FolderKind(
    command="infer-new-imagery",
    marker="fields.gpkg",
    names=("fields.gpkg", "fields_prob.tif", "fields_prob.qml", ".fields*"),
)


@dataclass(frozen=True)
class SceneJob:
    """One scene to consider: where it is, what it contains, which model maps it."""

    scene: Path  # a local file, or a URL as GDAL opens it (rs_seg.remote.scene_path)
    fingerprint: str
    model: Path
    model_id: str
    ledger_key: str
    item_id: str | None = None  # the STAC item the scene is the asset of
    name: str | None = None  # its folder and field-id name (rs_seg.ops.names) [from its file]

    @property
    def scene_name(self) -> str:
        """The scene's unique name: given by the scan, else from its item id or file name."""
        if self.name is not None:
            return self.name
        return item_name(self.item_id) if self.item_id is not None else inbox_name(self.scene.name)


@dataclass(frozen=True)
class SceneResult:
    """What happened to one scene in this run."""

    scene: Path
    status: Literal["mapped", "skipped", "failed", "waiting", "excluded"]
    fields: Path | None = None
    polygons: int = 0
    error: str | None = None
    warnings: tuple[str, ...] = ()  # input checks, e.g. drift from the training statistics
    reason: str | None = None  # waiting: why the scene is not complete yet; excluded: which filter
    item_id: str | None = None  # STAC scenes: the item

    @property
    def label(self) -> str:
        """What reports call the scene: its STAC item id, else its file name (printable)."""
        return self.item_id or printable(file_name(self.scene))


Outcome = SceneResult | BaseException
"""What mapping one scene ends in: its result, or the exception it failed with."""
Handle = TypeVar("Handle")


@dataclass(frozen=True)
class Scan:
    """The scenes of one run: complete ones to claim, ones still waiting, STAC items left out.

    An excluded item's ``scene`` is its item id (the filters may leave out items that have no
    scene asset at all).
    """

    jobs: list[SceneJob] = field(default_factory=list)
    waiting: list[SceneResult] = field(default_factory=list)
    excluded: list[SceneResult] = field(default_factory=list)


def list_scenes(incoming: str) -> list[Path]:
    """Scenes in a folder (non-recursive) or matching a glob, in a stable order."""
    path = Path(incoming)
    if path.is_dir():
        found = [p for p in path.iterdir() if p.suffix.lower() in SCENE_SUFFIXES]
    else:
        found = [Path(p) for p in glob.glob(incoming, recursive=True)]  # noqa: PTH207 - absolute globs
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))


def scan(cfg: IncomingConfig, now: float | None = None) -> Scan:
    """The complete scenes as jobs (fingerprinted, with the run's model), the others waiting.

    Complete means settled and readable (:func:`waiting_reason`). An empty inbox, or one where
    every scene is still waiting, needs no model, so a schedule set up before the first training
    run idles quietly instead of failing every interval.
    """
    if cfg.stac is not None:
        return scan_stac(cfg)
    assert cfg.incoming is not None  # IncomingConfig holds one source
    scenes = list_scenes(cfg.incoming)
    ledger = Ledger(cfg.ledger_path)  # create it (and fail early if it cannot be)
    with ledger.scanning():
        return _scan(cfg, ledger, scenes, time.time() if now is None else now)


def scan_stac(cfg: IncomingConfig) -> Scan:
    """The items of the STAC source as jobs (the run's model, the item's key), the rest excluded.

    As for an inbox, no item to map needs no model. The catalog is read before the ledger is
    touched, so a source that cannot be read fails in one line and changes nothing.
    """
    assert cfg.stac is not None
    selection = select_scenes(cfg.stac)
    Ledger(cfg.ledger_path)  # create it (and fail early if it cannot be)
    excluded = [
        SceneResult(Path(e.item_id), "excluded", reason=e.reason, item_id=e.item_id)
        for e in selection.excluded
    ]
    if not selection.scenes:
        return Scan([], [], excluded)
    model, model_id, key = _run_model(cfg)
    jobs = [SceneJob(s.scene, s.fingerprint, model, model_id, key, s.item_id, item_name(s.item_id))
            for s in selection.scenes]  # fmt: skip
    return Scan(jobs, [], excluded)


def _run_model(cfg: IncomingConfig) -> tuple[Path, str, str]:
    """The run's model bundle, its id, and the ledger key scenes are claimed under."""
    model = Path(cfg.infer.model or latest_bundle(cfg.infer.models_dir))
    model_id = ModelBundle.load(model).model_id
    return model, model_id, model_id if cfg.reprocess_on_model_change else ANY_MODEL


def _scan(cfg: IncomingConfig, ledger: Ledger, scenes: list[Path], now: float) -> Scan:
    ready: list[Path] = []
    waiting: list[SceneResult] = []
    for scene in scenes:
        reason = waiting_reason(ledger, scene, cfg.settle_seconds, now)
        if reason is None:
            ready.append(scene)
        else:
            waiting.append(SceneResult(scene, "waiting", reason=reason))
    if not ready:
        return Scan([], waiting)
    model, model_id, key = _run_model(cfg)
    root = inbox_root(str(cfg.incoming))
    jobs = []
    for scene in ready:
        try:
            before = scene.stat()
            fingerprint = ledger.fingerprint(scene)
            after = scene.stat()
        except (OSError, RsSegError) as exc:  # removed or renamed meanwhile
            waiting.append(SceneResult(scene, "waiting", reason=f"cannot be read: {exc}"))
            continue
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            reason = "size or mtime changed while it was being read"
            waiting.append(SceneResult(scene, "waiting", reason=reason))
            continue
        name = inbox_name(inbox_key(scene, root))
        jobs.append(SceneJob(scene, fingerprint, model, model_id, key, name=name))
    return Scan(jobs, sorted(waiting, key=lambda r: r.scene))


def plan(cfg: IncomingConfig) -> list[SceneJob]:
    """The jobs of :func:`scan`: every complete scene, fingerprinted, with the run's model."""
    return scan(cfg).jobs


def waiting_reason(ledger: Ledger, scene: Path, settle_seconds: float, now: float) -> str | None:
    """Why ``scene`` is not complete yet (None when it is): still changing, or not readable.

    A copy in progress changes the size or the mtime (also a pre-allocated file, whose size is
    final from the start while its tail is still zeros), so a file must keep both unchanged for
    ``settle_seconds``, measured from its mtime or from the first scan that saw it so
    (:meth:`Ledger.sight`): no scan sleeps. A settled file must then open and read to the end
    (:func:`read_problem`); the result is remembered until the file changes. A name that is not
    UTF-8 waits until it is renamed: neither GDAL nor the ledger can take it.
    """
    try:
        check_utf8_name(scene)
        sighting = ledger.sight(scene, now)
    except RsSegError as exc:  # removed or renamed since it was listed
        return f"cannot be read: {exc}"
    stable = sighting.stable_for(now)
    if stable < settle_seconds:
        return f"size or mtime changed {stable:.0f} s ago (settles after {settle_seconds:g} s)"
    if sighting.readable:
        return None
    problem = read_problem(scene)
    if problem is not None:
        return (
            f"{problem} (unchanged for {stable:.0f} s: if the copy has finished, the file is "
            "damaged)"
        )
    ledger.mark_readable(sighting)
    return None


def read_problem(scene: Path) -> str | None:
    """Why ``scene`` does not read as a complete raster (None when it does).

    Opening reads only the header, which a half-copied file already has, so the last block (the
    last strip or tile) of every band is read as well: a copy writes a file front to back, GDAL
    writes each band's last block after its others (and a COG puts the full-resolution blocks
    after its overviews), so a truncated file fails there with a short read, and a pre-allocated
    file with a zero tail fails to decompress. That costs one block per band instead of the
    whole scene. An uncompressed pre-allocated file reads zeros without error; the settle rule
    covers it.
    """
    with rasterio.Env(**GDAL_ENV), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = rasterio.open(scene)
        except (RasterioError, OSError) as exc:
            return f"cannot be opened as a raster: {gdal_message(exc)}"
        with src:
            for band in range(1, src.count + 1):
                block_rows, block_cols = src.block_shapes[band - 1]
                row = (src.height - 1) // block_rows * block_rows
                col = (src.width - 1) // block_cols * block_cols
                window = Window(col, row, src.width - col, src.height - row)
                try:
                    src.read(band, window=window)
                except (RasterioError, OSError, ValueError) as exc:
                    return (
                        f"cannot be read to the end (last block of band {band}): "
                        f"{gdal_message(exc)}"
                    )
    return None


def scene_outputs(cfg: IncomingConfig, job: SceneJob) -> Path:
    """Per-scene folder: ``<out_dir>/<scene name>/<model id>/`` (:attr:`SceneJob.scene_name`)."""
    return cfg.out_dir / job.scene_name / job.model_id


def claim(cfg: IncomingConfig, job: SceneJob) -> bool:
    """Take the scene in the ledger; False when it is done or another live run holds it."""
    return Ledger(cfg.ledger_path).claim(
        job.fingerprint, job.ledger_key, display(job.scene), item_id=job.item_id
    )


def map_scene(cfg: IncomingConfig, job: SceneJob) -> SceneResult:
    """Map one claimed scene into its own folder (published whole; raises on failure).

    ``<out_dir>/<scene>/<model id>/`` is built as a hidden staging folder beside its final place
    and renamed into place once the fields and the probability raster are both written; a failure
    removes the staging folder and a ``<scene>`` folder this call created. Needs no ledger, so it
    can run on a worker that only sees the scenes and the outputs.
    """
    final = scene_outputs(cfg, job)
    with staged_dir(final, overwrite=True, kind=SCENE_FOLDER) as staging:
        # the staging folder sits beside the final one, so the layer's relative paths hold for both
        infer = cfg.infer.for_scene(job.scene, staging / "fields.gpkg", job.model, job.scene_name)
        summary = run_infer(infer)
    return SceneResult(
        job.scene, "mapped", final / "fields.gpkg", summary.polygons,
        warnings=tuple(summary.warnings), item_id=job.item_id,
    )  # fmt: skip


def record(cfg: IncomingConfig, job: SceneJob, outcome: SceneResult | BaseException) -> SceneResult:
    """Write the outcome of a claimed scene to the ledger; a failure is retried next run.

    A ledger deleted or replaced since the claim gets the row written again, and the result says
    so in its warnings.
    """
    ledger = Ledger(cfg.ledger_path)
    replaced = (
        "the ledger was replaced during the run (this scene's claim was gone); its outcome was "
        "recorded again"
    )
    scene = display(job.scene)
    if isinstance(outcome, SceneResult):
        output = outcome.fields or Path()
        if ledger.complete(job.fingerprint, job.ledger_key, output, scene, job.item_id):
            outcome = replace(outcome, warnings=(*outcome.warnings, replaced))
        return outcome
    message = redact_text(str(outcome)) or type(outcome).__name__  # GDAL's may quote a URL
    again = ledger.fail(job.fingerprint, job.ledger_key, message, scene, job.item_id)
    log.warning("%s: failed, will be retried by the next run: %s", scene, message)
    return SceneResult(job.scene, "failed", error=message, warnings=(replaced,) if again else (),
                       item_id=job.item_id)  # fmt: skip


def map_scenes(
    cfg: IncomingConfig,
    jobs: list[SceneJob],
    submit: Callable[[SceneJob], Handle] | None = None,
    completed: Callable[[list[Handle]], Iterable[tuple[Handle, Outcome]]] | None = None,
) -> list[SceneResult]:
    """Claim each scene, map the claimed ones, record each outcome as it finishes.

    ``submit(job)`` starts :func:`map_scene` for a job and returns a handle; ``completed(handles)``
    yields each handle with its outcome (a :class:`SceneResult` or the exception the scene failed
    with) as it ends. Without them the scenes are mapped here, one after another. The ledger is
    touched only in this process, and outcomes are recorded as scenes finish, so an interrupted
    run keeps every scene it completed and releases the rest for the next run at once.
    """
    results: dict[SceneJob, SceneResult] = {}
    claimed: list[SceneJob] = []
    handles: dict[Any, SceneJob] = {}
    try:
        for job in jobs:
            if not claim(cfg, job):
                results[job] = SceneResult(job.scene, "skipped", item_id=job.item_id)
                continue
            claimed.append(job)
            handles[submit(job) if submit else job] = job
        finished = completed(list(handles)) if completed else _mapped_here(cfg, list(handles))
        for handle, outcome in finished:
            job = handles[handle]
            results[job] = record(cfg, job, outcome)
    finally:  # a crash or Ctrl-C: release unfinished claims so the next run takes them at once
        for job in claimed:
            if job not in results:
                record(cfg, job, RuntimeError("interrupted"))
    return [results[job] for job in jobs]


def _mapped_here(cfg: IncomingConfig, jobs: list[SceneJob]) -> Iterator[tuple[SceneJob, Outcome]]:
    """Map the jobs in this process; a bad scene is an outcome, anything else propagates."""
    for job in jobs:
        try:
            outcome: Outcome = map_scene(cfg, job)
        except SCENE_ERRORS as exc:
            outcome = exc
        yield job, outcome


def mapped_outputs(cfg: IncomingConfig, jobs: list[SceneJob]) -> list[Path]:
    """Fields files of every scene the ledger holds as done under this run's model key."""
    keys = {job.ledger_key for job in jobs}
    done = [
        Path(e.output)
        for e in Ledger(cfg.ledger_path).entries()
        if e.status == "done" and e.model_id in keys and e.output
    ]
    foreign = [p for p in done if not in_scene_folder(cfg.out_dir, p)]
    for path in foreign:
        log.warning("%s: names %s as a mapped scene, but it is not a scene folder's fields file "
                    "under %s; it is not merged", cfg.ledger_path, path, cfg.out_dir)  # fmt: skip
    return sorted({p for p in done if p not in foreign and p.is_file()})


def in_scene_folder(out_dir: Path, output: Path) -> bool:
    """Whether a ledger's output is ``<out_dir>/<scene>/<model id>/fields.gpkg``.

    The ledger is a file anyone can edit or hand over: an output it names elsewhere (a user's
    own layer, a path with ``..``, a link out of the folder) is never read into a merged layer.
    """
    try:
        relative = output.resolve().relative_to(Path(out_dir).resolve())
    except (OSError, ValueError, RuntimeError):
        return False
    return len(relative.parts) == 3 and relative.name == "fields.gpkg"


def write_merged(outputs: list[Path], out: Path, crs: str | None = None) -> int:
    """All scenes' fields in one layer ``fields``, one scene in memory at a time.

    Written by the same writer as each scene's file (:mod:`rs_seg.infer.field_layer`: same
    GeoPackage version, columns and types, ``<scene>/<n>`` keys, default style), with provenance
    of its own: the models, thresholds and source files (relative to the merged file's folder).
    Built under a temporary name and renamed, so readers never see half a layer; an existing file
    is replaced only if it is an rs_seg field layer. Scenes in other CRSs are reprojected to
    ``crs`` (default: the first scene's). Returns the number of fields.
    """
    if not outputs:
        return 0
    check_not_inputs([out], outputs)
    driver = output_driver(out)
    infos = [pyogrio.read_info(source, layer="fields") for source in outputs]
    crs = crs or str(infos[0]["crs"])
    metadata = merged_metadata(outputs, [i.get("layer_metadata") or {} for i in infos], out)
    with staged_file(out, overwrite=True, owned=fields_written_by_rs_seg) as staging:
        # the scenes' own areas and perimeters, measured in their projected CRSs, are kept
        writer = FieldLayerWriter(staging, LayerInfo(driver, crs, metadata), metres=None)
        merge_scenes(outputs, writer, crs)
        writer.close()
    return writer.count


def merged_metadata(
    outputs: list[Path], sources: list[dict[str, str]], out: Path
) -> dict[str, str]:
    """What a merged layer says about itself: rs_seg version, models, thresholds, sources."""

    def values(key: str) -> str:
        return ",".join(sorted({m[key] for m in sources if m.get(key)}))

    return {
        "rs_seg_version": rs_seg.__version__,
        "merged_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_id": values("model_id"),
        "threshold": values("threshold"),
        "boundary_threshold": values("boundary_threshold"),
        "min_area_m2": values("min_area_m2"),
        "scenes": json.dumps([m.get("scene", "") for m in sources]),
        "source_files": json.dumps(
            [os.path.relpath(p.resolve(), out.resolve().parent) for p in outputs]
        ),
    }
