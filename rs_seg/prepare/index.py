"""The chip index: one GeoPackage row per chip, plus a JSON summary of the split.

The index is what training reads and what a user opens in QGIS: footprints are stored in EPSG:4326
so that scenes in different UTM zones share one layer (chips without a CRS get no geometry), and
every row carries its scene, grid position, file paths (relative to the index), cropland and nodata
fractions, spatial block and split.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import pandas as pd
import pyogrio
import yaml

import rs_seg
from rs_seg.config import MaskTarget, PrepareConfig
from rs_seg.errors import RsSegError
from rs_seg.prepare.labels import is_vector_path
from rs_seg.prepare.raster_labels import LabelValueCounts, describe_label_values
from rs_seg.prepare.split import EXCLUDED, SPLITS
from rs_seg.prepare.vector_labels import describe_feature_counts
from rs_seg.rasters import gdal_message

if TYPE_CHECKING:
    from rs_seg.prepare.chips import SceneChips
    from rs_seg.prepare.split import SplitOutcome

INDEX_FILE = "index.gpkg"
INDEX_LAYER = "chips"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "prepare.yaml"
_HELPER_COLUMNS = ["footprint", "overlap_geom", "overlap_space"]
_COLUMN_ORDER = [
    "chip_id", "scene", "split", "block", "row", "col", "row_off", "col_off", "size",
    "image", "mask", "cropland_fraction", "nodata_fraction", "cropland_px", "labelled_px",
    "scene_path", "scene_crs", "bands", "dtype",
]  # fmt: skip


def _scene_frame(result: SceneChips) -> gpd.GeoDataFrame:
    info = result.info
    frame = pd.DataFrame.from_records(result.records)
    frame["scene_path"] = str(result.scene.image)
    frame["scene_crs"] = info.crs.to_string() if info.crs is not None else ""
    frame["bands"] = info.count
    frame["dtype"] = info.dtype
    footprints = gpd.GeoSeries(frame["footprint"].to_numpy(), crs=info.crs)
    if info.crs is not None:
        geometry = footprints.to_crs("EPSG:4326").to_numpy()
        frame["overlap_geom"] = geometry
        frame["overlap_space"] = "wgs84"
    else:
        geometry = [None] * len(frame)
        frame["overlap_geom"] = footprints.to_numpy()
        frame["overlap_space"] = f"pixels:{result.scene.name}"
    return gpd.GeoDataFrame(frame, geometry=list(geometry), crs="EPSG:4326")


def build_index(results: list[SceneChips]) -> gpd.GeoDataFrame:
    """All chip records as one table, with footprints in EPSG:4326 where scenes have a CRS."""
    frames = [_scene_frame(r) for r in results if r.records]
    if not frames:
        return gpd.GeoDataFrame({"chip_id": []}, geometry=[], crs="EPSG:4326")
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs="EPSG:4326")


def index_fingerprint(chips: pd.DataFrame) -> str:
    """A short hash of which chip is in which split; models record it to name their test set."""
    rows = chips[["chip_id", "split"]].sort_values("chip_id").to_csv(index=False)
    return hashlib.sha256(rows.encode()).hexdigest()[:16]


def split_table(chips: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per split: chips, blocks, labelled pixels and the cropland fraction of labelled pixels."""
    table = {}
    for split in (*SPLITS, EXCLUDED):
        rows = chips[chips["split"] == split]
        labelled = int(rows["labelled_px"].sum())
        table[split] = {
            "chips": len(rows),
            "blocks": int(rows["block"].nunique()),
            "labelled_px": labelled,
            "cropland_fraction": round(int(rows["cropland_px"].sum()) / labelled, 4)
            if labelled
            else None,
        }
    return table


@dataclass
class PrepareSummary:
    """What a preparation run produced; printed by the CLI and returned by the flow.

    ``labels`` (vector labels only, else None) says what became of the label features, each
    counted once over the whole layer: ``{"features": n, "used": n, "repaired": n, "dropped":
    {"null": n, "empty": n, "invalid": n, "not_polygonal": n}}``; ``used`` includes ``repaired``.

    ``target`` says what the masks hold: ``fields`` (vector labels: 0 background, 1 field
    interior, 2 field boundary ``boundary_width`` metres wide, None meaning 2 pixels; 255 ignore)
    or ``cropland`` (label rasters, chip folders, ``boundary_width: 0``: 0, 1 and 255 only).
    Cropland is 1 or 2 either way; a summary without ``target`` means ``cropland``.

    ``label_values`` (label rasters only, else None) counts the raw label values over the grids
    of all scenes, each pixel of a scene once
    (:class:`rs_seg.prepare.raster_labels.LabelValueCounts`)::

        {"pixels": n, "nodata": n,            # nodata: no label value (nodata, outside raster)
         "cropland": {"1": n}, "ignore": {"5": n},   # label-map values found, pixels each
         "unmapped": {"0": n, "7": n},        # values not in the map (background), top 10
         "unmapped_other": n,                 # pixels of further unmapped values
         "absent": {"cropland": "2-4"},       # map values found nowhere, per target
         "multiband_rasters": n}              # label rasters with several bands (band 1 read)
    """

    out: Path
    chips: int
    scenes: int
    splits: dict[str, dict[str, Any]]
    skipped: dict[str, int]
    block_chips: int | None
    notes: list[str] = field(default_factory=list)
    fingerprint: str = ""
    labels: dict[str, Any] | None = None
    label_values: dict[str, Any] | None = None
    target: MaskTarget = "cropland"
    boundary_width: float | None = None

    @property
    def index(self) -> Path:
        """Path of the chip index GeoPackage."""
        return self.out / INDEX_FILE

    def moved_to(self, out: Path) -> PrepareSummary:
        """The same summary after the staging folder was renamed to ``out``."""
        return dataclasses.replace(self, out=Path(out))

    def table(self) -> str:
        """A small fixed-width table of the split for terminals and logs."""
        lines = [f"{'split':<9}{'chips':>7}{'blocks':>8}{'cropland':>10}"]
        for split, row in self.splits.items():
            if split == EXCLUDED and row["chips"] == 0:
                continue
            fraction = (
                "-" if row["cropland_fraction"] is None else f"{row['cropland_fraction']:.3f}"
            )
            lines.append(f"{split:<9}{row['chips']:>7}{row['blocks']:>8}{fraction:>10}")
        return "\n".join(lines)

    def report(self) -> str:
        """What the CLI and the demo print: counts, the split table, notes, where the index is."""
        lines = [f"{self.chips} chips from {self.scenes} scenes -> {self.out}", self.table()]
        if self.skipped:
            lines.append(
                "skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            )
        if self.labels is not None:
            lines.append(f"label features: {describe_feature_counts(self.labels)}")
        if self.label_values is not None:
            lines.append(f"label values: {describe_label_values(self.label_values)}")
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"index (open in QGIS): {self.index}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        return data


def mask_target(cfg: PrepareConfig) -> MaskTarget:
    """``fields`` when the masks get outlines (vector labels with a boundary), else ``cropland``."""
    vector = cfg.chips_dir is None and cfg.labels is not None and is_vector_path(cfg.labels)
    return "fields" if vector and cfg.boundary_width != 0 else "cropland"


def read_target(chips: Path) -> MaskTarget:
    """What the masks of a prepared chip folder hold: the ``target`` its summary records.

    A folder without a readable summary is no prepared folder: it reads as ``cropland`` here, and
    reading its chip index then says what is missing.
    """
    summary = Path(chips) / SUMMARY_FILE
    try:
        target = json.loads(summary.read_text()).get("target")
    except (OSError, ValueError):
        return "cropland"
    if target not in ("cropland", "fields"):
        raise RsSegError(
            f"records no mask target (cropland or fields), got {target!r}; prepare the chips "
            "again with rs-seg prepare",
            summary,
        )
    return "fields" if target == "fields" else "cropland"


def _input_fingerprints(results: list[SceneChips], cfg: PrepareConfig) -> list[dict[str, Any]]:
    """Size and modification time of every input, so later stages can tell if chips are stale."""
    paths = [r.scene.image for r in results] + [r.scene.mask for r in results if r.scene.mask]
    paths += [p for p in (cfg.labels, cfg.aoi) if p is not None and Path(p).exists()]
    entries = []
    for path in dict.fromkeys(Path(p) for p in paths):
        stat = path.stat()
        entries.append({"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return entries


def _label_values(cfg: PrepareConfig, results: list[SceneChips]) -> dict[str, Any] | None:
    """Label raster values summed over all scenes and checked; None for vector labels."""
    parts = [r.label_values for r in results if r.label_values is not None]
    if not parts or cfg.label_map is None:
        return None
    counts = LabelValueCounts.merge(parts)
    counts.check(cfg.label_map, cfg.labels or cfg.chips_dir, len(results))
    return counts.to_dict(cfg.label_map)


def write_outputs(
    cfg: PrepareConfig,
    chips: gpd.GeoDataFrame,
    results: list[SceneChips],
    outcome: SplitOutcome,
    out_dir: Path,
) -> PrepareSummary:
    """Write ``index.gpkg``, ``summary.json`` and ``prepare.yaml`` into ``out_dir``.

    Label raster values are checked first (:meth:`LabelValueCounts.check`: warnings, and an
    error for a label map whose cropland values occur in no scene), before the index is written;
    the chips written so far lie in the staging folder, which the error discards.
    """
    label_values = _label_values(cfg, results)
    skipped: Counter[str] = Counter()
    for result in results:
        skipped.update(result.skipped)
    notes = list(outcome.notes)
    if outcome.excluded_overlaps:
        notes.append(
            f"{outcome.excluded_overlaps} chips overlap a chip of another split and are excluded"
        )
    summary = PrepareSummary(
        out=out_dir,
        chips=len(chips),
        scenes=len(results),
        splits=split_table(chips),
        skipped=dict(skipped),
        block_chips=outcome.block_chips,
        notes=notes,
        fingerprint=index_fingerprint(chips),
        labels=next(
            (r.label_features.to_dict() for r in results if r.label_features is not None), None
        ),
        label_values=label_values,
        target=mask_target(cfg),
        boundary_width=cfg.boundary_width if mask_target(cfg) == "fields" else None,
    )
    table = chips.drop(columns=_HELPER_COLUMNS)[[*_COLUMN_ORDER, "geometry"]]
    # GeoPackage 1.2, as the field layers: GDAL < 3.7 (QGIS 3.22 on Debian 12) reads it cleanly
    pyogrio.write_dataframe(
        table, out_dir / INDEX_FILE, layer=INDEX_LAYER, driver="GPKG", VERSION="1.2"
    )
    document = {
        "rs_seg_version": rs_seg.__version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **summary.to_dict(),
        "cross_split_overlaps_before_exclusion": outcome.cross_split_overlaps,
        "inputs": _input_fingerprints(results, cfg),
        "config": cfg.model_dump(mode="json"),
    }
    document.pop("out")
    (out_dir / SUMMARY_FILE).write_text(json.dumps(document, indent=2) + "\n")
    (out_dir / CONFIG_FILE).write_text(yaml.safe_dump({"prepare": cfg.model_dump(mode="json")}))
    return summary


def read_index(chips_dir: Path) -> gpd.GeoDataFrame:
    """Read the chip index of a prepared folder, with absolute image and mask paths added."""
    path = Path(chips_dir) / INDEX_FILE
    if not path.exists():
        raise RsSegError(f"no chip index ({INDEX_FILE}); run 'rs-seg prepare' first", chips_dir)
    try:
        with warnings.catch_warnings():  # GDAL's own words on a damaged file; ours follow
            warnings.simplefilter("ignore", RuntimeWarning)
            chips = pyogrio.read_dataframe(path, layer=INDEX_LAYER)
    except Exception as exc:  # pyogrio's DataSourceError / DataLayerError, a damaged file
        raise RsSegError(f"cannot read the chip index ({gdal_message(exc)})", path) from None
    for column in ("image", "mask"):
        if column not in chips.columns:
            raise RsSegError(f"the chip index has no {column!r} column", path)
        chips[f"{column}_path"] = [chip_file(chips_dir, value, path) for value in chips[column]]
    return chips


def chip_file(chips_dir: Path, value: object, index: Path) -> str:
    """A chip file named in the index, checked to lie inside the chip folder.

    The index is a file anyone can edit or hand over: a name it holds is never trusted as a
    path, so an absolute path, ``..`` or a symlink leading out of the folder is refused.
    """
    text = value if isinstance(value, str) else ""
    relative = Path(text)
    if not text or relative.is_absolute() or ".." in relative.parts:
        raise RsSegError(f"names the chip file {value!r}, which is not inside its folder", index)
    folder = Path(chips_dir).resolve()
    resolved = (folder / relative).resolve()
    if folder not in resolved.parents:
        raise RsSegError(f"names the chip file {text!r}, which leads out of its folder", index)
    return str(Path(chips_dir) / relative)
