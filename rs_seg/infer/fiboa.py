"""Fields as fiboa GeoParquet: the field-boundary exchange format Fields of The World writes.

A ``.parquet`` output is GeoParquet 1.1 (WKB MultiPolygons, the layer's CRS as PROJJSON, and
a ``bbox`` covering column: WKB statistics say nothing about where a row group lies, the
bounding-box column's min/max statistics do, so readers such as GDAL and DuckDB skip row groups
outside their area; no file-level bounding box, which would have to be known before the first
row group) carrying the fiboa 0.2 core columns

* ``id`` (``<scene>/<n>``, as ``field_id`` elsewhere), ``geometry``, ``area`` (ha), ``perimeter``
  (m), ``determination_method`` (``auto-imagery``) and ``determination_datetime`` (UTC,
  milliseconds: midnight of the mapping date; rs_seg does not know the acquisition time, and
  ``determination_details`` says so),

plus rs_seg's own: ``mean_prob``, ``scene`` and ``model_id``. The fiboa collection metadata sits
in the file metadata under ``fiboa``, rs_seg's provenance under ``rs_seg``. Row groups are written
one batch at a time, so memory does not grow with the number of fields; the file is complete only
after :meth:`ParquetFields.close` (its footer), and the caller publishes it after that.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS

import rs_seg

FIBOA_VERSION = "0.2.0"
GEOPARQUET_VERSION = "1.1.0"
DETERMINATION_METHOD = "auto-imagery"
BBOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
BBOX = pa.struct([pa.field(key, pa.float64()) for key in BBOX_KEYS])
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("geometry", pa.binary(), nullable=False),
        pa.field("bbox", BBOX, nullable=False),
        pa.field("area", pa.float32()),
        pa.field("perimeter", pa.float32()),
        pa.field("determination_method", pa.string()),
        pa.field("determination_datetime", pa.timestamp("ms", tz="UTC")),
        pa.field("determination_details", pa.string()),
        pa.field("mean_prob", pa.float64()),
        pa.field("scene", pa.string()),
        pa.field("model_id", pa.string()),
    ]
)


class ParquetFields:
    """A fiboa GeoParquet file written row group by row group.

    Args:
        path: The file to write.
        crs: The geometries' CRS (EPSG:n or WKT).
        metadata: rs_seg's provenance (stored as JSON under the ``rs_seg`` key).
    """

    def __init__(self, path: Path, crs: str, metadata: dict[str, str]) -> None:
        self._crs = CRS.from_user_input(crs)
        self._details = (
            f"rs_seg {rs_seg.__version__} from imagery by a segmentation model; "
            "determination_datetime is the mapping date, not the acquisition time"
        )
        base = {b"geo": json.dumps(self._geo()).encode(),
                b"fiboa": json.dumps(_collection(metadata)).encode(),
                b"rs_seg": json.dumps(metadata).encode()}  # fmt: skip
        self._writer = pq.ParquetWriter(
            path, SCHEMA.with_metadata(base), compression="zstd", write_statistics=True
        )

    def write(
        self,
        *,
        field_id: list[str],
        geometries: np.ndarray,
        area_ha: np.ndarray,
        perimeter_m: np.ndarray,
        mean_prob: np.ndarray,
        scene: np.ndarray,
        model_id: np.ndarray,
        date: np.ndarray,
    ) -> None:
        """One row group: a batch of fields (MultiPolygons) and their attributes."""
        n = len(field_id)
        dates = date.astype("datetime64[ms]")
        table = pa.table(
            {
                "id": pa.array(field_id, pa.string()),
                "geometry": pa.array(shapely.to_wkb(geometries).tolist(), pa.binary()),
                "bbox": _bbox(geometries),
                "area": pa.array(area_ha.astype(np.float32)),
                "perimeter": pa.array(perimeter_m.astype(np.float32)),
                "determination_method": pa.array([DETERMINATION_METHOD] * n, pa.string()),
                "determination_datetime": pa.array(dates, pa.timestamp("ms", tz="UTC")),
                "determination_details": pa.array([self._details] * n, pa.string()),
                "mean_prob": pa.array(mean_prob.astype(np.float64)),
                "scene": pa.array(scene.tolist(), pa.string()),
                "model_id": pa.array(model_id.tolist(), pa.string()),
            },
            schema=SCHEMA,
        )
        self._writer.write_table(table)

    def close(self) -> None:
        """Write the footer: only then is the file readable."""
        self._writer.close()

    def _geo(self) -> dict[str, object]:
        column = {
            "encoding": "WKB",
            "geometry_types": ["MultiPolygon"],
            "crs": self._crs.to_json_dict(),
            "covering": {"bbox": {key: ["bbox", key] for key in BBOX_KEYS}},
        }
        return {"version": GEOPARQUET_VERSION, "primary_column": "geometry",
                "columns": {"geometry": column}}  # fmt: skip


def _bbox(geometries: np.ndarray) -> pa.StructArray:
    """Each geometry's bounding box, the GeoParquet 1.1 covering column."""
    bounds = shapely.bounds(geometries).reshape(-1, 4)
    return pa.StructArray.from_arrays([pa.array(bounds[:, i]) for i in range(4)], fields=list(BBOX))


def _collection(metadata: dict[str, str]) -> dict[str, object]:
    """The fiboa collection-level metadata: the version, no extensions, what made the fields."""
    return {
        "fiboa_version": FIBOA_VERSION,
        "fiboa_extensions": [],
        "id": metadata.get("model_id", "") or "rs_seg",
        "description": "crop fields mapped by rs_seg",
        "rs_seg_version": rs_seg.__version__,
    }
