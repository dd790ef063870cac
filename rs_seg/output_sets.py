"""Which outputs are rs_seg's, and which set of outputs a file belongs to.

``--overwrite`` replaces a file only when it carries rs_seg's metadata (the recognizers below), and
a companion of a field layer (its probability raster, mask, their QGIS styles) only when it
belongs to the very set being replaced (:func:`set_member`): ``-o f.parquet`` must not replace
the ``f_prob.tif`` of an earlier ``-o f.gpkg``, which would leave that layer beside another
run's raster.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from rs_seg.errors import RsSegError

Owned = Callable[[Path], bool]
FIELDS_LAYER_TAG = "fields_layer"  # a raster's tag: its field layer, relative to its folder
_RUN_ID_STAMP = re.compile(rb"<!-- rs_seg run_id: (\w+) -->")  # in a style, see write_style


def raster_written_by_rs_seg(path: Path) -> bool:
    """A GeoTIFF rs_seg wrote: its tags carry rs_seg's provenance."""
    try:
        tags = _raster_tags(path)
    except Exception:
        return False
    return "rs_seg_version" in tags or {"model_id", "threshold"} <= tags.keys()


STYLE_MARKER = "<!-- rs_seg style:"  # the comment every QGIS style rs_seg ships opens with


def style_written_by_rs_seg(path: Path) -> bool:
    """A QGIS style sidecar (``.qml``) rs_seg wrote: its marker comment is near the top.

    QGIS rewrites the whole file when a user saves a style as the layer's default, and the marker
    goes with it, so a style the user customized is theirs and ``--overwrite`` never replaces it.
    """
    try:
        return STYLE_MARKER.encode() in _style_head(path)
    except OSError:
        return False


def _style_head(path: Path) -> bytes:
    """The top of a style file, where rs_seg's marker and run id stamp are."""
    with Path(path).open("rb") as file:
        return file.read(4096)


FIELD_COLUMNS = frozenset({"field_id", "area_ha", "mean_prob", "model_id"})


def fields_written_by_rs_seg(path: Path) -> bool:
    """A field layer rs_seg wrote: one ``fields`` layer (plus its style) with rs_seg's columns.

    A GeoParquet file is rs_seg's when its file metadata carry rs_seg's provenance and the fiboa
    collection (see :mod:`rs_seg.infer.fiboa`).
    """
    if Path(path).suffix.lower() == ".parquet":
        return _parquet_written_by_rs_seg(path)
    # GDAL loads only for the recognizers; the CLI imports staging (and this module) at start
    import pyogrio

    try:
        layers = {str(name) for name in pyogrio.list_layers(path)[:, 0]}
        columns = set(pyogrio.read_info(path, layer="fields")["fields"])
    except Exception:
        return False
    if not layers <= {"fields", "layer_styles"}:
        return False
    return columns >= FIELD_COLUMNS or _geojson_provenance(Path(path))


def _geojson_provenance(path: Path) -> bool:
    """A GeoJSON whose collection carries rs_seg's provenance member before its features.

    An empty GeoJSON layer has no columns to recognize it by (GDAL stores none without
    features), so the member the writer adds (``rs_seg.infer.field_layer``) is what says it is
    rs_seg's.
    """
    if path.suffix.lower() != ".geojson":
        return False
    try:
        with path.open("rb") as file:
            head = file.read(1 << 16).split(b'"features"', 1)[0]
    except OSError:
        return False
    return b'"rs_seg":' in head and b'"rs_seg_version"' in head


def _parquet_written_by_rs_seg(path: Path) -> bool:
    # pyarrow loads only for this recognizer, as GDAL does for the others
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception:
        return False
    return b"rs_seg" in metadata and b"fiboa" in metadata


def run_id_of(path: Path) -> str:
    """The run id an rs_seg output carries: raster tag, layer metadata or style stamp; else ''.

    Every file of one ``rs-seg infer`` run carries the same id.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".qml":
            found = _RUN_ID_STAMP.search(_style_head(path))
            return found[1].decode() if found else ""
        if suffix in (".tif", ".tiff"):
            return str(_raster_tags(path).get("run_id", ""))
        if suffix == ".parquet":
            return str(_parquet_provenance(path).get("run_id", ""))
        return str(_layer_metadata(path).get("run_id", ""))
    except Exception:
        return ""


def fields_layer_of(path: Path) -> Path | None:
    """The field layer a raster records as its own (:data:`FIELDS_LAYER_TAG`), or None."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        named = _raster_tags(path).get(FIELDS_LAYER_TAG)
    except Exception:
        return None
    return Path(path).parent / named if named else None


def set_member(primary: Path, owned: Owned, companions: Sequence[Path], option: str) -> Owned:
    """The recognizer of a companion of the field layer ``primary`` (raster, mask or style).

    The file must be rs_seg's (``owned``) and of the set that replacing ``primary`` replaces: a
    raster whose field-layer tag names ``primary``, or a file whose run id is that of ``primary``
    or of such a raster among ``companions``. An rs_seg file of another set raises a one-line
    refusal that suggests ``option`` for another name.
    """

    def recognize(path: Path) -> bool:
        if not owned(path):
            return False
        if not _in_set(path, primary, companions):
            named = fields_layer_of(path)
            owner = f"the outputs of {named.name}" if named else "another run's outputs"
            raise RsSegError(
                f"is one of {owner}, not of {Path(primary).name}; --overwrite replaces only the "
                f"files of the output it replaces, so give this file another name with {option}",
                path,
            )
        return True

    return recognize


def _in_set(path: Path, primary: Path, companions: Sequence[Path]) -> bool:
    named = fields_layer_of(path)
    if named is not None:
        return _same(named, primary)
    ids = {run_id_of(primary)}
    ids |= {run_id_of(c) for c in companions if (n := fields_layer_of(c)) and _same(n, primary)}
    ids.discard("")
    return run_id_of(path) in ids


def _same(a: Path, b: Path) -> bool:
    return os.path.normpath(Path(a).absolute()) == os.path.normpath(Path(b).absolute())


def _raster_tags(path: Path) -> dict[str, str]:
    # GDAL loads only for the recognizers; the CLI imports staging (and this module) at start
    import rasterio

    with rasterio.open(path) as src:
        return dict(src.tags())


def _layer_metadata(path: Path) -> dict[str, str]:
    # GDAL loads only for the recognizers; the CLI imports staging (and this module) at start
    import pyogrio

    return dict(pyogrio.read_info(path, layer="fields")["layer_metadata"] or {})


def _parquet_provenance(path: Path) -> dict[str, str]:
    # pyarrow loads only for the recognizers, as GDAL does for the others
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    document = json.loads(metadata.get(b"rs_seg", b"{}"))
    return document if isinstance(document, dict) else {}
