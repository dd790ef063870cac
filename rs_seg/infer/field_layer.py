"""The field layer: one schema and one writer for every file of fields rs_seg writes.

``rs-seg vectorize``, ``rs-seg infer`` and the merged layer of ``infer-new-imagery`` all write
through :class:`FieldLayerWriter`, so a per-scene file and a merged one have the same GeoPackage
version, columns and types, and open the same way in QGIS:

* ``field_id`` (text) ``<scene>/<n>``: ``n`` numbers a scene's fields in the order vectorizing
  completes them, which depends only on the raster and the settings, so the key is unique within
  any layer (a merged layer holds each scene once) and stable across runs of the same inputs;
* ``area_ha``, ``perimeter_m`` (from the written geometry in the scene's projected CRS; a merged
  layer keeps its scenes' values, so they stay metric in any merged CRS), ``mean_prob`` (the
  field's own pixels), ``scene``, ``model_id``, and ``date`` (the UTC date the field was
  mapped; a GeoPackage DATE).

Formats follow the extension: GeoPackage 1.2 (GDAL < 3.7, as in QGIS 3.22 on Debian 12, reads it
without warnings; R-tree index, a default QGIS style with an SLD twin in ``layer_styles``),
FlatGeobuf, GeoJSON (RFC 7946, EPSG:4326; provenance in an ``rs_seg`` member of the collection,
so an empty layer is still known as rs_seg's) and fiboa GeoParquet (:mod:`rs_seg.infer.fiboa`).
GeoPackages and GeoParquet are written in batches; GDAL cannot append to FlatGeobuf or GeoJSON,
so their features wait (as WKB) until the end.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely

from rs_seg.errors import RsSegError

LAYER = "fields"
DRIVERS = {
    ".gpkg": "GPKG",
    ".fgb": "FlatGeobuf",
    ".geojson": "GeoJSON",
    ".parquet": "Parquet",
}
COLUMNS = ("field_id", "area_ha", "perimeter_m", "mean_prob", "scene", "model_id", "date")
STYLE_NAME = "rs_seg fields"
_LAYER_OPTIONS = {
    "GPKG": {"SPATIAL_INDEX": "YES"},
    "FlatGeobuf": {"SPATIAL_INDEX": "YES"},
    "GeoJSON": {"RFC7946": "YES"},
}
GPKG_VERSION = "1.2"
GEOJSON_MEMBER = "rs_seg"  # a GeoJSON layer's provenance: a member of its FeatureCollection
BATCH = 5000  # features per GeoPackage append / Parquet row group: bounded memory
_GeoArray = npt.NDArray[np.object_]  # an array of shapely geometries


def output_driver(path: Path) -> str:
    """The driver for an output path, so a wrong extension fails before any work is done."""
    driver = DRIVERS.get(Path(path).suffix.lower())
    if driver is None:
        supported = ", ".join(DRIVERS)
        raise RsSegError(f"unsupported output format; use one of {supported}", path)
    return driver


def scene_key(scene: str, numbers: npt.NDArray[np.int64]) -> list[str]:
    """The ``<scene>/<n>`` keys of a scene's fields numbered ``numbers``."""
    return [f"{scene}/{n}" for n in numbers.tolist()]


def today() -> np.datetime64:
    """Today's UTC date, the ``date`` of fields mapped now."""
    return np.datetime64(dt.datetime.now(dt.UTC).date().isoformat(), "D")


@dataclass(frozen=True)
class LayerInfo:
    """What every write of a layer needs besides the features."""

    driver: str
    crs: str  # EPSG:n or WKT
    metadata: dict[str, str]


@dataclass
class FieldBatch:
    """Finished fields to write: MultiPolygons in the layer's CRS and their attributes.

    ``scene``, ``model_id`` and ``date`` hold one value per field (a merged layer mixes scenes);
    area and perimeter are computed by the writer from the geometries, so they always match.
    """

    geometries: _GeoArray
    field_id: list[str]
    mean_prob: npt.NDArray[np.float64]
    scene: npt.NDArray[np.object_]
    model_id: npt.NDArray[np.object_]
    date: npt.NDArray[np.datetime64]
    area_ha: npt.NDArray[np.float64] | None = None  # None: the writer measures the geometries
    perimeter_m: npt.NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.geometries)


class FieldLayerWriter:
    """Writes field batches to one file in any supported format; :meth:`close` completes it.

    Args:
        path: The file to write (a staging path: the caller publishes it).
        info: Driver, CRS and layer metadata (stored in GeoPackage and FlatGeobuf layers and in
            GeoParquet file metadata).
        metres: Metres per CRS unit, for ``area_ha`` and ``perimeter_m`` of batches that do not
            bring their own; None where every batch does (a merged layer, whose CRS may be
            geographic).
    """

    def __init__(self, path: Path, info: LayerInfo, metres: float | None) -> None:
        self._path = path
        self._info = info
        self._metres = metres
        self._waiting: list[FieldBatch] = []
        self._created = False
        self._parquet: Any = None  # rs_seg.infer.fiboa.ParquetFields once opened
        self.count = 0
        self.area_ha = 0.0

    def write(self, batch: FieldBatch) -> None:
        """Queue ``batch``; a GeoPackage or GeoParquet is written as soon as a batch is full."""
        if len(batch):
            self._waiting.append(batch)
        if self._info.driver in ("GPKG", "Parquet") and self._pending() >= BATCH:
            self._flush()

    def close(self) -> None:
        """Write what is left; an empty result still creates the layer with its full schema."""
        if self._waiting or not self._created:
            self._flush()
        if self._parquet is not None:
            self._parquet.close()
        if self._info.driver == "GPKG":
            add_default_style(self._path, LAYER)

    def _pending(self) -> int:
        return sum(len(b) for b in self._waiting)

    def _flush(self) -> None:
        batch = _concatenated(self._waiting)
        self._waiting = []
        area_ha, perimeter_m = self._measures(batch)
        self.area_ha += float(area_ha.sum())
        if self._info.driver == "Parquet":
            self._write_parquet(batch, area_ha, perimeter_m)
        else:
            self._write_ogr(batch, area_ha, perimeter_m)
        self._created = True
        self.count += len(batch)

    def _measures(self, batch: FieldBatch) -> tuple[np.ndarray, np.ndarray]:
        if batch.area_ha is not None and batch.perimeter_m is not None:
            return batch.area_ha, batch.perimeter_m
        if self._metres is None:
            raise ValueError("a batch without area and perimeter needs the CRS's metres")
        area_ha = shapely.area(batch.geometries) * self._metres**2 / 10_000
        return area_ha, shapely.length(batch.geometries) * self._metres

    def _write_ogr(
        self, batch: FieldBatch, area_ha: npt.NDArray[np.float64], perimeter_m: np.ndarray
    ) -> None:
        # pyogrio's package imports geopandas and pandas: loaded when a layer is written, not
        # when inference is imported (rs-seg infer --help, model info)
        from pyogrio.raw import write as write_layer

        data = [
            np.asarray(batch.field_id, dtype=object),
            area_ha.astype(np.float64),
            perimeter_m.astype(np.float64),
            batch.mean_prob.astype(np.float64),
            batch.scene.astype(object),
            batch.model_id.astype(object),
            batch.date.astype("datetime64[D]"),
        ]
        write_layer(
            self._path,
            shapely.to_wkb(batch.geometries),
            data,
            list(COLUMNS),
            layer=LAYER,
            driver=self._info.driver,
            geometry_type="MultiPolygon",
            crs=self._info.crs,
            append=self._created,
            **self._creation_options(),
        )

    def _write_parquet(
        self, batch: FieldBatch, area_ha: npt.NDArray[np.float64], perimeter_m: np.ndarray
    ) -> None:
        # pyarrow loads only for GeoParquet outputs
        from rs_seg.infer.fiboa import ParquetFields

        if self._parquet is None:
            self._parquet = ParquetFields(self._path, self._info.crs, self._info.metadata)
        self._parquet.write(
            field_id=batch.field_id, geometries=batch.geometries, area_ha=area_ha,
            perimeter_m=perimeter_m, mean_prob=batch.mean_prob, scene=batch.scene,
            model_id=batch.model_id, date=batch.date,
        )  # fmt: skip

    def _creation_options(self) -> dict[str, Any]:
        if self._created:
            return {}
        driver = self._info.driver
        options: dict[str, Any] = {
            "layer_options": _LAYER_OPTIONS[driver],
            "layer_metadata": self._info.metadata if driver != "GeoJSON" else None,
        }
        if driver == "GeoJSON":  # no layer metadata: provenance as a foreign member instead
            member = json.dumps({GEOJSON_MEMBER: self._info.metadata})
            options["layer_options"] = {**options["layer_options"],
                                        "FOREIGN_MEMBERS_COLLECTION": member}  # fmt: skip
        if driver == "GPKG":
            options["dataset_options"] = {"VERSION": GPKG_VERSION}
        return options


def _concatenated(batches: list[FieldBatch]) -> FieldBatch:
    if len(batches) == 1:
        return batches[0]
    if not batches:
        empty = np.empty(0, dtype=object)
        return FieldBatch(empty, [], np.empty(0), empty, empty, np.empty(0, dtype="datetime64[D]"))
    return FieldBatch(
        np.concatenate([b.geometries for b in batches]),
        [key for b in batches for key in b.field_id],
        np.concatenate([b.mean_prob for b in batches]),
        np.concatenate([b.scene for b in batches]),
        np.concatenate([b.model_id for b in batches]),
        np.concatenate([b.date for b in batches]),
        _joined([b.area_ha for b in batches]),
        _joined([b.perimeter_m for b in batches]),
    )


def _joined(parts: list[npt.NDArray[np.float64] | None]) -> npt.NDArray[np.float64] | None:
    """The batches' own measures end to end; None unless every batch has them."""
    present = [part for part in parts if part is not None]
    return np.concatenate(present) if len(present) == len(parts) else None


# --- merging scenes ----------------------------------------------------------------------------


def merge_scenes(sources: list[Path], writer: FieldLayerWriter, crs: str) -> None:
    """Every source file's fields through ``writer``, one scene in memory at a time.

    Sources in another CRS are reprojected to ``crs``. Their keys are ``<scene>/<n>``, unique
    across scenes, so a key seen twice (one scene merged twice) is refused.
    """
    # GDAL's reader of the sources only where scenes are merged
    import pyogrio

    seen: set[str] = set()
    for source in sources:
        fields = pyogrio.read_dataframe(source, layer=LAYER)
        if len(fields) == 0:
            continue
        fields = fields.to_crs(crs)
        batch = _source_batch(fields)
        repeated = seen.intersection(batch.field_id)
        if repeated:
            raise RsSegError(f"field {min(repeated)!r} is in more than one merged file", source)
        seen.update(batch.field_id)
        for start in range(0, len(batch), BATCH):
            writer.write(_sliced(batch, start, start + BATCH))


def _source_batch(fields: Any) -> FieldBatch:
    """A field file's features (a GeoDataFrame in the merged CRS) as a writer batch."""
    import pandas as pd  # with geopandas, loaded by the caller's read already

    dates = pd.to_datetime(fields["date"]).to_numpy()
    return FieldBatch(
        geometries=np.asarray(shapely.force_2d(fields.geometry.to_numpy()), dtype=object),
        field_id=fields["field_id"].astype(str).tolist(),
        mean_prob=fields["mean_prob"].to_numpy(dtype=np.float64),
        scene=fields["scene"].astype(str).to_numpy(dtype=object),
        model_id=fields["model_id"].astype(str).to_numpy(dtype=object),
        date=dates.astype("datetime64[D]"),
        area_ha=fields["area_ha"].to_numpy(dtype=np.float64),
        perimeter_m=fields["perimeter_m"].to_numpy(dtype=np.float64),
    )


def _sliced(batch: FieldBatch, start: int, stop: int) -> FieldBatch:
    return FieldBatch(
        batch.geometries[start:stop],
        batch.field_id[start:stop],
        batch.mean_prob[start:stop],
        batch.scene[start:stop],
        batch.model_id[start:stop],
        batch.date[start:stop],
        None if batch.area_ha is None else batch.area_ha[start:stop],
        None if batch.perimeter_m is None else batch.perimeter_m[start:stop],
    )


# --- QGIS style --------------------------------------------------------------------------------

_LAYER_STYLES_SQL = """
CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256),
    f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT,
    useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""


def field_style() -> str:
    """The QML style of the field layer: outlines that read on imagery, area labels up close."""
    return _style_file("fields.qml")


def field_style_sld() -> str:
    """The same style as OGC SLD 1.1, for clients other than QGIS (GeoServer, ArcGIS Pro)."""
    return _style_file("fields.sld")


def _style_file(name: str) -> str:
    return resources.files("rs_seg.styles").joinpath(name).read_text(encoding="utf-8")


def add_default_style(gpkg: Path, layer: str) -> None:
    """Store the field style (QML and SLD) as the layer's default in ``layer_styles``.

    QGIS looks there when a GeoPackage layer is opened and applies the row marked
    ``useAsDefault``; the table is registered in ``gpkg_contents`` as an attributes table, as QGIS
    itself does, so GDAL and the GeoPackage validator accept it.
    """
    connection = sqlite3.connect(gpkg)
    try:
        with connection:
            column = connection.execute(
                "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
            ).fetchone()[0]
            connection.execute(_LAYER_STYLES_SQL)
            connection.execute(
                "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier) "
                "VALUES ('layer_styles', 'attributes', 'layer_styles')"
            )
            connection.execute(
                "UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,)
            )
            connection.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                "owner, ui) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', '')",
                (layer, column, STYLE_NAME, field_style(), field_style_sld(),
                 "field outlines from rs_seg"),
            )  # fmt: skip
    finally:
        connection.close()
