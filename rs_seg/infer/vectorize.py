"""Field layers from a probability raster: settings, raster checks and the strip-wise write.

:func:`vectorize` checks the raster (uint8, one band or two, a projected CRS), turns the m²
settings into CRS units and writes the field records completed strip by strip: by
:func:`rs_seg.infer.polygonize.field_records` (cropland regions) for one band, by
:func:`rs_seg.infer.boundary_split.field_records` (cropland split into fields by the boundary band)
for two. The records are simplified, made valid and numbered here, and written by the one field
layer writer (:mod:`rs_seg.infer.field_layer`: schema, formats, provenance, QGIS style). Each output
is staged and published only once it is complete.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
import rasterio
import shapely
from rasterio.crs import CRS
from shapely.geometry.base import BaseGeometry

import rs_seg
from rs_seg.errors import RsSegError
from rs_seg.infer.boundary_split import field_records as split_field_records
from rs_seg.infer.checks import check_wgs84_extent, metres_per_unit
from rs_seg.infer.field_layer import (
    BATCH,
    LAYER,
    FieldBatch,
    FieldLayerWriter,
    LayerInfo,
    output_driver,
    scene_key,
    today,
)
from rs_seg.infer.polygonize import FieldRecord, field_records
from rs_seg.levels import BAND_DESCRIPTIONS, threshold_to_level
from rs_seg.model.fields import FieldSettings
from rs_seg.rasters import GDAL_ENV, large_blocks_off_the_heap, open_raster
from rs_seg.staging import check_not_inputs, fields_written_by_rs_seg, staged_file

log = logging.getLogger(__name__)

# the short band names a two-band raster made outside rs_seg may carry (README names the bands so)
_SHORT_BAND_NAMES = ("cropland", "boundary")
_GeoArray = npt.NDArray[np.object_]  # an array of shapely geometries
_T = TypeVar("_T")


@dataclass(frozen=True)
class VectorizeSettings:
    """How a probability raster becomes field polygons: the field settings and the outlines.

    Attributes:
        fields: Extent and boundary thresholds, minimum area (m², after hole filling) and growth
            (:class:`rs_seg.model.fields.FieldSettings`, the settings evaluation tunes). A pixel
            is cropland when its uint8 value is at least ``threshold_to_level(threshold)``, the
            rule evaluation and masks use; without a boundary threshold a two-band raster is
            vectorized from band 1 alone, like a single-band one.
        simplify: Douglas-Peucker tolerance in CRS units, topology-preserving; 0 keeps the exact
            pixel outlines. Each field is simplified on its own, so fields split from a two-band
            raster, which touch, may overlap or leave gaps along shared outlines by up to the
            tolerance; with 0 they partition the cropland exactly.
        fill_holes_below: Holes smaller than this (m²) are filled; fields lying wholly inside a
            filled hole are then dropped, so fields never overlap.
        strip_rows: Rows read and polygonized at a time (fewer for scenes wider than 2048 px, see
            :func:`rs_seg.infer.polygonize.rows_per_strip`); bounds memory, not the result.
    """

    fields: FieldSettings = field(default_factory=FieldSettings)
    simplify: float = 0.0
    fill_holes_below: float = 0.0
    strip_rows: int = 1024

    @classmethod
    def for_raster(
        cls,
        fields: FieldSettings,
        pixel_size: float,
        simplify: float | None = None,
        fill_holes_below: float | None = None,
    ) -> VectorizeSettings:
        """The settings ``rs-seg infer`` and ``rs-seg vectorize`` both use.

        Unless given, outlines are simplified by one pixel and holes up to the minimum field area
        are filled.
        """
        return cls(
            fields=fields,
            simplify=pixel_size if simplify is None else simplify,
            fill_holes_below=fields.min_area if fill_holes_below is None else fill_holes_below,
        )

    def __post_init__(self) -> None:
        for name in ("simplify", "fill_holes_below"):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                raise RsSegError(f"{name} must be 0 or positive, got {value}")
        if self.strip_rows < 1:
            raise RsSegError(f"strip_rows must be at least 1, got {self.strip_rows}")


@dataclass(frozen=True)
class VectorizeSummary:
    """What :func:`vectorize` wrote, for the command line and the flows."""

    out: Path
    polygons: int
    area_ha: float
    seconds: float
    megapixels: float
    layer: str


def vectorize(
    prob_path: Path,
    out_path: Path,
    settings: VectorizeSettings,
    *,
    scene: str = "",
    model_id: str = "",
    overwrite: bool = False,
    progress: bool = False,
    metadata: dict[str, str] | None = None,
    publish: bool = True,
    shown_as: Path | None = None,
) -> VectorizeSummary:
    """Polygonize a uint8 probability raster into a field layer that opens styled in QGIS.

    The output format follows the extension: ``.gpkg`` (layer ``fields``, R-tree spatial index,
    default QGIS style in ``layer_styles``), ``.fgb`` (FlatGeobuf, spatial index) or ``.geojson``
    (RFC 7946: reprojected to EPSG:4326, as the standard requires; the other formats keep the
    raster's CRS). Geometries are MultiPolygons so the layer has one geometry type.

    A single-band raster's fields are its 4-connected cropland regions. A two-band raster (band 1
    cropland, band 2 field boundary) is split into individual fields by the boundary band
    (:mod:`rs_seg.infer.boundary_split`) unless ``settings.fields`` has no boundary threshold;
    touching fields then stay apart. Either way the fields do not depend on ``strip_rows`` (split
    fields not even their simplified vertices).

    Fields are numbered in the order they complete (by their last row, then their first pixel),
    the same for any ``strip_rows`` unless ``fill_holes_below > min_area`` held some back.
    ``mean_prob`` is the exact mean cropland probability of the field's own pixels; filled holes
    do not count.

    GeoPackages are written in batches; GDAL cannot append to FlatGeobuf or GeoJSON, so for those
    the finished features are kept (as WKB) until the end: prefer ``.gpkg`` for huge scenes.

    Args:
        prob_path: uint8 GeoTIFF (probability x 255) in a projected CRS: one band (cropland) or
            two (cropland, boundary); nodata comes from its mask or nodata value.
        out_path: Output vector file.
        settings: Thresholds, growth and polygon clean-up.
        scene: Scene name stored in every feature.
        model_id: Model identifier stored in every feature.
        overwrite: Replace an existing output (only an rs_seg field layer, and only once the
            new one is complete).
        progress: Show a progress bar over the strips.
        metadata: Extra key/value pairs stored as layer metadata (GPKG and FlatGeobuf).
        publish: Stage ``out_path`` and put it in place at the end (the default); False when
            ``out_path`` is itself a staging path its caller publishes (``rs-seg infer``).
        shown_as: The raster's name in messages when ``prob_path`` is a staging copy (its
            published path), so no hidden staging name reaches the user.

    Returns:
        Counts, total area and timing of the run.

    Raises:
        RsSegError: Unsupported extension, unusable raster, an existing output without
            ``overwrite`` or not written by rs_seg, or an output that is the input.
    """
    started = time.perf_counter()
    prob_path, out_path = Path(prob_path), Path(out_path)
    shown = Path(shown_as or prob_path)
    driver = output_driver(out_path)
    with (
        large_blocks_off_the_heap(),
        rasterio.Env(**GDAL_ENV),
        open_raster(prob_path, "probability raster") as src,
    ):
        metres = _check_raster(src, shown)
        if driver == "GeoJSON":
            check_wgs84_extent(src, shown)
        splits = splits_fields(src, settings)
        scene = scene or _scene_name(prob_path)
        info = LayerInfo(
            driver=driver,
            crs=_crs_text(src.crs),
            metadata=_layer_metadata(prob_path, settings, splits, scene, model_id, metadata),
        )
        records = _Records(scene, model_id, settings.simplify)
        if publish:
            check_not_inputs([out_path], [prob_path])
            with staged_file(out_path, overwrite, owned=fields_written_by_rs_seg) as staging:
                writer = _write_layer(src, FieldLayerWriter(staging, info, metres), records,
                                      settings, metres, progress)  # fmt: skip
        else:
            writer = _write_layer(src, FieldLayerWriter(out_path, info, metres), records,
                                  settings, metres, progress)  # fmt: skip
        megapixels = src.width * src.height / 1e6
    if writer.count == 0:
        level = threshold_to_level(settings.fields.threshold)
        message = "%s: no fields at threshold %s (level %d); wrote an empty layer"
        log.warning(message, shown, settings.fields.threshold, level)
    return VectorizeSummary(
        out=out_path,
        polygons=writer.count,
        area_ha=writer.area_ha,
        seconds=time.perf_counter() - started,
        megapixels=megapixels,
        layer=LAYER,
    )


def _write_layer(
    src: rasterio.io.DatasetReader,
    writer: FieldLayerWriter,
    records: _Records,
    settings: VectorizeSettings,
    metres: float,
    progress: bool,
) -> FieldLayerWriter:
    """Polygonize ``src`` strip by strip into ``writer``'s layer and complete it."""
    completed = _field_records(src, settings, metres, progress)
    for strip_records in computed_ahead(completed):
        for start in range(0, len(strip_records), BATCH):
            writer.write(records.batch(strip_records[start : start + BATCH]))
        del strip_records  # not kept alive while the next strip is polygonized
    writer.close()
    return writer


class _Records:
    """Turns a scene's field records into batches for the writer: simplified, valid, numbered.

    A noisy strip completes 100 000 fields or more at once: they are prepared a batch at a
    time, so the simplified copies and WKB of only one batch exist at a time.
    """

    def __init__(self, scene: str, model_id: str, tolerance: float) -> None:
        self._scene = scene
        self._model_id = model_id
        self._tolerance = tolerance
        self._date = today()
        self._count = 0

    def batch(self, records: list[FieldRecord]) -> FieldBatch:
        geometries = _final_geometries([r.geometry for r in records], self._tolerance)
        # a field that collapsed entirely is no field; numpy's stubs refuse None as an operand,
        # though on an object array it compares element-wise
        kept = np.not_equal(geometries, None)  # type: ignore[call-overload]
        geometries = geometries[kept]
        mean_prob = np.array([r.mean_prob for r, k in zip(records, kept, strict=True) if k])
        n = len(geometries)
        numbers = np.arange(self._count + 1, self._count + n + 1, dtype=np.int64)
        self._count += n
        return FieldBatch(
            geometries=geometries,
            field_id=scene_key(self._scene, numbers),
            mean_prob=mean_prob.astype(np.float64),
            scene=np.full(n, self._scene, dtype=object),
            model_id=np.full(n, self._model_id, dtype=object),
            date=np.full(n, self._date, dtype="datetime64[D]"),
        )


def _scene_name(prob_path: Path) -> str:
    """The scene a probability raster was predicted from: its tag, else its name less ``_prob``."""
    stem = prob_path.stem
    return stem[: -len("_prob")] if stem.endswith("_prob") and len(stem) > 5 else stem


def computed_ahead(items: Iterator[_T]) -> Iterator[_T]:
    """``items``, each computed in a thread while the one before it is used.

    The fields of the next strip are found while this strip's are simplified and written:
    shapely, GDAL and numpy release the GIL for most of both. At most one result waits, so memory
    grows by one strip's records; an error in the thread is raised here, and a consumer that stops
    early stops the thread at its next result.
    """
    results: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                results.put(("item", item))
            results.put(("done", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            results.put(("error", exc))

    thread = threading.Thread(target=produce, name="rs-seg-vectorize", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = results.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting to put, then let it finish
            with contextlib.suppress(queue.Empty):
                results.get(timeout=0.05)
        thread.join()


def splits_fields(src: rasterio.io.DatasetReader, settings: VectorizeSettings) -> bool:
    """Whether the boundary band splits the cropland: two bands and a boundary threshold."""
    return src.count == 2 and settings.fields.splits


def _field_records(
    src: rasterio.io.DatasetReader, settings: VectorizeSettings, metres: float, progress: bool
) -> Iterator[list[FieldRecord]]:
    """The completed fields strip by strip, with the settings in CRS units and uint8 levels."""
    fields = settings.fields
    level = threshold_to_level(fields.threshold)
    min_area = fields.min_area / metres**2
    fill_holes_below = settings.fill_holes_below / metres**2
    if fields.boundary_threshold is None or not splits_fields(src, settings):
        return field_records(
            src, level=level, min_area=min_area, fill_holes_below=fill_holes_below,
            strip_rows=settings.strip_rows, progress=progress,
        )  # fmt: skip
    return split_field_records(
        src, level=level, boundary_level=threshold_to_level(fields.boundary_threshold),
        grow=fields.grow, min_area=min_area, fill_holes_below=fill_holes_below,
        strip_rows=settings.strip_rows, progress=progress,
    )  # fmt: skip


def _check_raster(src: rasterio.io.DatasetReader, path: Path) -> float:
    """Refuse rasters the polygons would be wrong for; return metres per CRS unit.

    Areas and the m² settings need a projected CRS; a geographic one would give areas in degrees.
    A two-band raster whose bands are named must name them ``cropland probability`` and
    ``boundary probability`` (or ``cropland`` and ``boundary``), in that order, so swapped bands
    are not split by the extent.
    """
    if src.count not in (1, 2):
        raise RsSegError(
            f"probability raster must have one band (cropland) or two (cropland, boundary), "
            f"found {src.count}",
            path,
        )
    for dtype in src.dtypes:
        if dtype != "uint8":
            raise RsSegError(f"probability raster must be uint8 (0-255), found {dtype}", path)
    names = tuple(src.descriptions)
    if src.count == 2 and any(names) and names not in (BAND_DESCRIPTIONS, _SHORT_BAND_NAMES):
        raise RsSegError(
            f"two-band probability raster must have bands {BAND_DESCRIPTIONS}, found {names}",
            path,
        )
    return metres_per_unit(src, path, "probability raster")


def _crs_text(crs: CRS) -> str:
    """``EPSG:n`` where the CRS is exactly an EPSG one (readers then see the code), else WKT."""
    epsg = crs.to_epsg(confidence_threshold=100)
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _layer_metadata(
    prob_path: Path,
    settings: VectorizeSettings,
    splits: bool,
    scene: str,
    model_id: str,
    extra: dict[str, str] | None,
) -> dict[str, str]:
    """Provenance stored with the layer, so a field file says how it was made."""
    meta = {
        "rs_seg_version": rs_seg.__version__,
        "source": prob_path.name,
        "scene": scene,
        "model_id": model_id,
        "threshold": str(settings.fields.threshold),
        "level": str(threshold_to_level(settings.fields.threshold)),
        "min_area_m2": str(settings.fields.min_area),
        "simplify": str(settings.simplify),
        "fill_holes_below_m2": str(settings.fill_holes_below),
    }
    boundary = settings.fields.boundary_threshold
    if splits and boundary is not None:
        meta |= {
            "boundary_threshold": str(boundary),
            "boundary_level": str(threshold_to_level(boundary)),
            "grow_pixels": str(settings.fields.grow),
        }
    return meta | {str(k): str(v) for k, v in (extra or {}).items()}


# --- output ------------------------------------------------------------------------------------


def _final_geometries(geometries: list[BaseGeometry], tolerance: float) -> _GeoArray:
    """Simplified, valid MultiPolygons (one geometry type for the layer); None where none is left.

    ``make_valid`` with the "structure" method keeps only polygonal parts, so a simplification
    that pinched a ring yields polygons, never stray lines or points.
    """
    array = np.asarray(geometries, dtype=object)
    if tolerance > 0:
        array = shapely.simplify(array, tolerance, preserve_topology=True)
    invalid = ~shapely.is_valid(array)
    if invalid.any():
        array[invalid] = shapely.make_valid(
            array[invalid], method="structure", keep_collapsed=False
        )
    parts, index = shapely.get_parts(array, return_index=True)
    polygon = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
    keep = polygon & ~shapely.is_empty(parts)
    out = np.full(len(array), None, dtype=object)
    return cast(_GeoArray, shapely.multipolygons(parts[keep], indices=index[keep], out=out))
