"""The whole ``rs-seg infer`` command: scene -> probability COG (+ mask) -> field polygons.

Each raster is published with its QGIS style sidecar (``<stem>.qml``, which QGIS loads as the
layer's default style), all files of a run as one set, fields last.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from rs_seg.config import InferConfig, InferOptions
from rs_seg.infer.checks import check_scene
from rs_seg.infer.field_layer import output_driver
from rs_seg.infer.pipeline import BatchModel
from rs_seg.infer.predict import (
    MASK_STYLE,
    PROBABILITY_STYLE,
    PredictSummary,
    megapixels_per_second,
    predict_scene,
    style_path,
    write_binary_mask,
    write_style,
)
from rs_seg.infer.vectorize import (
    VectorizeSettings,
    vectorize,
)
from rs_seg.levels import threshold_to_level
from rs_seg.model.bundle import ModelBundle
from rs_seg.model.fields import FieldSettings
from rs_seg.model.latest import latest_bundle
from rs_seg.output_sets import FIELDS_LAYER_TAG, set_member
from rs_seg.rasters import scene_deadline
from rs_seg.remote import display, is_remote, scene_stem
from rs_seg.staging import (
    Owned,
    check_distinct,
    check_file_output,
    check_not_inputs,
    fields_written_by_rs_seg,
    raster_written_by_rs_seg,
    staged_files,
    style_written_by_rs_seg,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferSummary:
    """Where the outputs are and what it took."""

    fields: Path
    prob: Path
    mask: Path | None
    polygons: int
    area_ha: float
    predict: PredictSummary
    vectorize_seconds: float
    warnings: list[str]
    styles: tuple[Path, ...] = ()  # the QGIS style sidecar of each raster

    def report(self) -> str:
        """What the CLI prints."""
        p = self.predict
        lines = [
            f"{self.polygons} fields ({self.area_ha:,.1f} ha) -> {self.fields}",
            f"probability COG: {self.prob}" + (f"   mask: {self.mask}" if self.mask else ""),
            f"{p.windows} windows ({p.skipped_windows} all nodata), {p.megapixels:.1f} Mpx in "
            f"{p.seconds:.1f} s ({megapixels_per_second(p):.2f} Mpx/s); "
            f"polygons in {self.vectorize_seconds:.1f} s",
        ]
        if self.styles:
            lines.insert(2, "QGIS styles: " + ", ".join(str(style) for style in self.styles))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def load_model(model: Path | None, models_dir: Path) -> ModelBundle:
    """The given bundle, or the registry's latest model (read once per file version).

    A process that maps several scenes (the incoming flow's workers) reads and checks a bundle
    once, and so builds its network once (:func:`rs_seg.model.predictor.model_network`): the
    file's path, inode, size and change times are the key, so a bundle replaced on disk (a new
    inode after the atomic rename of :meth:`ModelBundle.save`) is read again.
    """
    if model is None:
        model = latest_bundle(models_dir)
        log.info("model: %s (latest in %s)", model, models_dir)
    path = Path(model)
    try:
        stat = path.stat()
    except OSError:
        return ModelBundle.load(path)  # its own one-line error for a missing file
    version = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    return _loaded(path.resolve(), version)


@functools.lru_cache(maxsize=2)
def _loaded(path: Path, version: tuple[int, ...]) -> ModelBundle:
    """:meth:`ModelBundle.load`, remembered for the last two file versions read."""
    return ModelBundle.load(path)


def choose_fields(cfg: InferOptions, bundle: ModelBundle) -> FieldSettings:
    """What the user gave, else what the bundle tuned on validation, else the defaults.

    A cropland model's polygons are its thresholded cropland; a fields model's are split with
    the extent, boundary and minimum area tuned together on validation object F1.
    """
    return bundle.field_settings.overridden(
        threshold=cfg.threshold, boundary_threshold=cfg.boundary_threshold, min_area=cfg.min_area
    )


def run_infer(
    cfg: InferConfig, progress: bool = False, *, predictor: BatchModel | None = None
) -> InferSummary:
    """Predict a scene and vectorize it; the outputs appear together, complete, or not at all.

    Nothing is read or computed before the outputs are known to be free or rs_seg's own, and
    none of them is an input. The probability raster (and mask) and the fields are published as
    one set (:func:`rs_seg.staging.staged_files`, fields last), and all of them carry the same
    ``run_id``, so a reader can tell files of one run from a mix. ``predictor``: the model that
    predicts the windows (:func:`rs_seg.infer.predict.predict_scene`), the bundle's by default.
    """
    outputs, owned = _outputs(cfg)
    check_infer_outputs(cfg)
    bundle = load_model(cfg.model, cfg.models_dir)
    check_scene(cfg.scene, bundle, geojson=output_driver(cfg.out) == "GeoJSON")
    threshold = cfg.threshold or bundle.threshold
    field_settings = choose_fields(cfg, bundle)
    run_id = uuid.uuid4().hex[:12]
    with (
        scene_deadline(cfg.scene, cfg.timeout),  # a URL scene's reads stop at its deadline
        staged_files(outputs, cfg.overwrite, owned) as staged,
    ):
        prob, prob_style, *mask_files, fields = staged
        write_style(prob_style, PROBABILITY_STYLE, run_id)
        predicted = predict_scene(
            cfg.scene, bundle, prob, window=cfg.window, overlap=cfg.overlap,
            batch_size=cfg.batch_size, device=cfg.device, tta=cfg.tta, workers=cfg.workers,
            precision=cfg.precision, progress=progress, predictor=predictor,
            tags={"threshold_used": f"{threshold:.6f}", "run_id": run_id,
                  **field_settings.to_tags(),
                  FIELDS_LAYER_TAG: relative_to(cfg.out, cfg.prob_path)},
        )  # fmt: skip
        if mask_files:
            mask, mask_style = mask_files
            write_binary_mask(prob, mask, threshold_to_level(threshold), run_id)
            write_style(mask_style, MASK_STYLE, run_id)
        settings = VectorizeSettings.for_raster(
            field_settings, predicted.pixel_size, cfg.simplify, cfg.fill_holes_below
        )
        metadata = {
            "model_id": bundle.model_id,
            "cropland_threshold": f"{threshold:.6f}",  # the mask's; "threshold": the polygons'
            "scene": relative_to(cfg.scene, cfg.out),
            "probability_raster": relative_to(cfg.prob_path, cfg.out),
            "source": cfg.prob_path.name,
            "run_id": run_id,
            **predicted.compatibility.metadata(),
        }
        vectorized = vectorize(
            prob, fields, settings, scene=cfg.scene_name or scene_stem(cfg.scene),
            model_id=bundle.model_id, progress=progress, metadata=metadata, publish=False,
            shown_as=cfg.prob_path,
        )  # fmt: skip
    return InferSummary(
        fields=cfg.out,
        prob=cfg.prob_path,
        mask=cfg.mask_out,
        polygons=vectorized.polygons,
        area_ha=vectorized.area_ha,
        predict=predicted,
        vectorize_seconds=vectorized.seconds,
        warnings=predicted.compatibility.warnings,
        styles=tuple(style_path(raster) for raster in [cfg.prob_path, cfg.mask_out] if raster),
    )


def relative_to(path: Path, layer: Path) -> str:
    """``path`` as a layer's metadata stores it: relative to the layer's folder, a URL as itself.

    So the paths resolve from where the file sits, wherever the folder is moved or mounted, and
    a scene folder built in staging names the same files once published.
    """
    if is_remote(path):
        return display(path)
    return os.path.relpath(Path(path).absolute(), Path(layer).absolute().parent)


def _outputs(cfg: InferConfig) -> tuple[list[Path], list[Owned]]:
    """Outputs in publication order with the recognizer of each one's owner.

    The probability raster, its style, the mask and its style (with ``--mask-out``), the fields
    last: ``[prob, prob.qml, (mask, mask.qml,) fields]``. A style is rs_seg's own only while it
    carries rs_seg's marker, so one the user saved from QGIS blocks ``--overwrite`` like any other
    file of theirs. A raster or style is replaced only when it belongs to the fields' own set
    (:func:`rs_seg.output_sets.set_member`), never another field layer's.
    """
    rasters = [Path(cfg.prob_path), *([Path(cfg.mask_out)] if cfg.mask_out else [])]
    outputs = [path for raster in rasters for path in (raster, style_path(raster))]
    options = ["--prob-out", "--prob-out", "--mask-out", "--mask-out"]
    recognizers = [raster_written_by_rs_seg, style_written_by_rs_seg] * len(rasters)
    owners: list[Owned] = [
        set_member(Path(cfg.out), recognizer, outputs, option)
        for recognizer, option in zip(recognizers, options, strict=False)
    ]
    return [*outputs, Path(cfg.out)], [*owners, fields_written_by_rs_seg]


def check_infer_outputs(cfg: InferConfig) -> None:
    """Refuse before any work: outputs that collide, replace an input, or are not rs_seg's own."""
    outputs, owned = _outputs(cfg)
    check_distinct(outputs)
    check_not_inputs(outputs, [cfg.scene, cfg.model])
    for path, recognizer in zip(outputs, owned, strict=True):
        check_file_output(path, cfg.overwrite, recognizer)
