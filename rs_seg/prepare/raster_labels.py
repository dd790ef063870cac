"""Raster labels: label rasters read strip by strip and mapped to 0/1/255 by the label map.

Label rasters are read through a nearest-neighbour warped view when they are not pixel-aligned
with the scene, so aligned masks and mosaics covering many scenes go through one code path. They
are read strip by strip, and the raw values of each strip are counted as it is read
(:class:`LabelValueCounts`), so values the label map does not name, or map values that never
occur, show in the summary and in warnings instead of silently becoming background. Only band 1
of a label raster holds labels. Label-map values the raster cannot hold are refused from its
header (:func:`check_label_map_fits`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from rs_seg.config import MASK_BACKGROUND, MASK_CROPLAND, MASK_IGNORE, LabelMap
from rs_seg.errors import RsSegError
from rs_seg.rasters import RasterInfo, open_raster
from rs_seg.windows import read_padded, strip_slices

log = logging.getLogger(__name__)

Value = int | float
_BINCOUNT_DTYPES = (np.dtype("uint8"), np.dtype("uint16"))
_TOP_UNMAPPED = 10  # unmapped values listed one by one in the summary (the most frequent)
_TRACKED_VALUES = 4096  # distinct unmapped values counted one by one (rasters of other dtypes)
_FOUND_LISTED = 10  # values named in warnings and errors
UNMAPPED_WARN_SHARE = 0.01
"""Unmapped values besides the most common one (the background class) above this share of the
labelled pixels are warned about."""


def _number(value: Any) -> Value:
    """A raster value as a plain int (integral values) or float, as summaries show it."""
    number: Value = value.item() if isinstance(value, np.generic) else value
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return number


def value_ranges(values: Iterable[Value]) -> str:
    """``0, 3-7, 255``: sorted values with runs of consecutive integers joined."""
    runs: list[list[Value]] = []
    for value in sorted(set(values)):
        last = runs[-1][1] if runs else None
        if isinstance(value, int) and isinstance(last, int) and value == last + 1:
            runs[-1][1] = value
            continue
        runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _representable(value: int, dtype: np.dtype) -> bool:
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        return limits.min <= value <= limits.max
    if np.issubdtype(dtype, np.floating):
        with np.errstate(over="ignore"):
            return float(dtype.type(value)) == value  # e.g. float32 holds integers up to 2**24
    return True  # complex: compared as numbers


def _dtype_range(dtype: np.dtype) -> str:
    if np.issubdtype(dtype, np.integer):
        return f"values {np.iinfo(dtype).min} to {np.iinfo(dtype).max}"
    return f"integers up to {2 ** (np.finfo(dtype).nmant + 1)} exactly"


def check_label_map_fits(label_map: LabelMap, dtype: Any, nodata: float | None, path: Path) -> None:
    """Refuse label-map values a label raster cannot hold, or that it declares nodata.

    A value the dtype cannot represent (300 or -1 on uint8) would never match a pixel, and a
    cropland value equal to the raster's nodata value would only ever be ignore: both are
    :class:`RsSegError` naming the raster and the values.
    """
    dtype = np.dtype(dtype)
    for target, values in (("cropland", label_map.cropland), ("ignore", label_map.ignore)):
        impossible = [v for v in values if not _representable(v, dtype)]
        if impossible:
            raise RsSegError(
                f"label map {_values_word(impossible)} {value_ranges(impossible)} ({target}) "
                f"cannot occur in this {dtype} label raster ({_dtype_range(dtype)}); "
                "check --label-map",
                path,
            )
    if nodata is not None and not np.isnan(nodata) and nodata in label_map.cropland:
        raise RsSegError(
            f"label map value {_number(nodata)} (cropland) is the nodata value of this label "
            "raster, so its pixels would be ignored, never cropland; unset the nodata value "
            "(gdal_edit.py -unsetnodata) or map another value",
            path,
        )


def _values_word(values: Sequence[Value]) -> str:
    return "value" if len(values) == 1 else "values"


def label_bands(dataset: rasterio.io.DatasetReaderBase) -> int:
    """Bands of a label raster that can hold labels (alpha bands are a mask, not labels)."""
    return sum(ci != ColorInterp.alpha for ci in dataset.colorinterp) or dataset.count


def check_label_raster(path: Path, label_map: LabelMap) -> int:
    """Read the header of a label raster and check the label map against it; returns its bands."""
    with open_raster(path, role="label raster") as label:
        check_label_map_fits(label_map, label.dtypes[0], label.nodata, path)
        return label_bands(label)


def value_lookup(label_map: LabelMap, dtype: np.dtype) -> npt.NDArray[np.uint8] | None:
    """A lookup table from label values to 0/1/255 for 8/16-bit integer rasters, else None.

    Raises ValueError for a label-map value the dtype cannot hold: nothing is skipped quietly
    (:func:`check_label_map_fits` reports it for a raster before any pixel is read).
    """
    dtype = np.dtype(dtype)
    if dtype not in _BINCOUNT_DTYPES:
        return None
    table = np.full(np.iinfo(dtype).max + 1, MASK_BACKGROUND, dtype=np.uint8)
    impossible = [v for v in (*label_map.cropland, *label_map.ignore) if not 0 <= v < len(table)]
    if impossible:
        raise ValueError(f"label map values {value_ranges(impossible)} do not fit {dtype}")
    table[label_map.cropland] = MASK_CROPLAND
    table[label_map.ignore] = MASK_IGNORE
    return table


def apply_label_map(values: np.ndarray, label_map: LabelMap) -> npt.NDArray[np.uint8]:
    """Map raw label values to 0 background / 1 cropland / 255 ignore."""
    table = value_lookup(label_map, values.dtype)
    if table is not None:
        # numpy's stubs type fancy indexing as Any; a uint8 table gives uint8.
        return cast("npt.NDArray[np.uint8]", table[values])
    out = np.full(values.shape, MASK_BACKGROUND, dtype=np.uint8)
    out[np.isin(values, label_map.cropland)] = MASK_CROPLAND
    out[np.isin(values, label_map.ignore)] = MASK_IGNORE
    return out


def _top(counts: dict[Value, int], n: int) -> tuple[dict[Value, int], int]:
    """The ``n`` most frequent entries, and the pixels of the others."""
    if len(counts) <= n:
        return counts, 0
    kept = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n])
    return kept, sum(counts.values()) - sum(kept.values())


@dataclass
class LabelValueCounts:
    """Raw values of label rasters over scene grids: each pixel of each scene counted once.

    ``pixels`` are the scene-grid pixels looked at, ``nodata`` those without a label value (the
    raster's nodata, or outside the label raster). ``mapped`` counts every label-map value found
    (exact); ``unmapped`` the values the map does not name (they became background), exact up
    to :data:`_TRACKED_VALUES` distinct values, else the most frequent ones with the pixels of
    the others in ``unmapped_other``, so memory stays bounded whatever the number of distinct
    values. ``nodata_values`` are the nodata values the rasters declare (a map value among them
    is read as nodata, so it is not reported as absent). ``multiband`` names the label rasters
    with several bands (band 1 read) and their band counts.
    """

    pixels: int = 0
    nodata: int = 0
    mapped: dict[Value, int] = field(default_factory=dict)
    unmapped: dict[Value, int] = field(default_factory=dict)
    unmapped_other: int = 0
    nodata_values: set[Value] = field(default_factory=set)
    multiband: dict[str, int] = field(default_factory=dict)

    @property
    def labelled(self) -> int:
        """Pixels with a label value."""
        return self.pixels - self.nodata

    @classmethod
    def merge(cls, parts: Iterable[LabelValueCounts]) -> LabelValueCounts:
        """The sum of the counts of several scenes (still bounded)."""
        total = cls()
        for part in parts:
            total.pixels += part.pixels
            total.nodata += part.nodata
            for target, source in ((total.mapped, part.mapped), (total.unmapped, part.unmapped)):
                for value, n in source.items():
                    target[value] = target.get(value, 0) + n
            total.unmapped_other += part.unmapped_other
            if len(total.unmapped) > 2 * _TRACKED_VALUES:
                total._prune()
            total.nodata_values |= part.nodata_values
            total.multiband.update(part.multiband)
        total._prune()
        return total

    def _prune(self) -> None:
        self.unmapped, rest = _top(self.unmapped, _TRACKED_VALUES)
        self.unmapped_other += rest

    def absent(self, label_map: LabelMap) -> dict[str, list[int]]:
        """Label-map values found in no pixel, per target (targets without any left out)."""
        found = {
            target: [v for v in values if v not in self.mapped and v not in self.nodata_values]
            for target, values in (("cropland", label_map.cropland), ("ignore", label_map.ignore))
        }
        return {target: values for target, values in found.items() if values}

    def to_dict(self, label_map: LabelMap) -> dict[str, Any]:
        """JSON-ready form (see :class:`rs_seg.prepare.index.PrepareSummary`)."""
        unmapped, rest = _top(self.unmapped, _TOP_UNMAPPED)

        def pixels_of(values: Iterable[int]) -> dict[str, int]:
            return {str(v): self.mapped[v] for v in sorted(set(values)) if v in self.mapped}

        return {
            "pixels": self.pixels,
            "nodata": self.nodata,
            "cropland": pixels_of(label_map.cropland),
            "ignore": pixels_of(label_map.ignore),
            "unmapped": {str(v): unmapped[v] for v in sorted(unmapped)},
            "unmapped_other": self.unmapped_other + rest,
            "absent": {t: value_ranges(v) for t, v in self.absent(label_map).items()},
            "multiband_rasters": len(self.multiband),
        }

    def found(self) -> str:
        """The most frequent values found, for messages: ``0, 1, 5`` or ``0, 1, 2 and 4 more``."""
        counts = {**self.unmapped, **self.mapped}
        top, _ = _top(counts, _FOUND_LISTED)
        text = ", ".join(str(v) for v in sorted(top)) or "none"
        if self.unmapped_other:
            return text + " and more"
        hidden = len(counts) - len(top)
        return text + (f" and {hidden} more" if hidden else "")

    def check(self, label_map: LabelMap, where: Path | None, scenes: int) -> None:
        """Warn about label-map values never found, unusual unmapped values and multi-band rasters.

        A map whose cropland values occur in no pixel of any scene is an error: one scene without
        cropland is plausible, a whole chip set without any is a wrong map (``255=cropland`` on a
        0/1 raster), whose chips would all be background.
        """
        absent = self.absent(label_map)
        if len(absent.get("cropland", [])) == len(label_map.cropland) and self.labelled:
            raise RsSegError(
                f"label map cropland {_values_word(label_map.cropland)} "
                f"{value_ranges(label_map.cropland)} occurs in none of the label rasters of the "
                f"{scenes} {'scene' if scenes == 1 else 'scenes'} (found values {self.found()}), "
                "so every chip would be background; check --label-map",
                where,
            )
        for target, values in absent.items():
            log.warning(
                "label map %s %s (%s) never %s in the label rasters; found values %s",
                _values_word(values), value_ranges(values), target,
                "occurs" if len(values) == 1 else "occur", self.found(),
            )  # fmt: skip
        self._warn_unmapped()
        if self.multiband:
            rasters = [(Path(p), n) for p, n in self.multiband.items()]
            unique = len({p.name for p, _ in rasters}) == len(rasters)  # else farm/3.tif
            names = [
                f"{p.name if unique else Path(p.parent.name, p.name)} ({n} bands)"
                for p, n in rasters[:5]
            ]
            more = ", ..." if len(self.multiband) > len(names) else ""
            count = len(self.multiband)
            log.warning(
                "%d label %s several bands and only band 1 is read: %s%s",
                count, "raster has" if count == 1 else "rasters have", ", ".join(names), more,
            )  # fmt: skip

    def _warn_unmapped(self) -> None:
        """Unmapped values besides the most common one (taken as background) above a share."""
        if not self.unmapped or not self.labelled:
            return
        background = max(self.unmapped, key=lambda v: (self.unmapped[v], -v))
        others = {v: n for v, n in self.unmapped.items() if v != background}
        share = (sum(others.values()) + self.unmapped_other) / self.labelled
        if share <= UNMAPPED_WARN_SHARE:
            return
        top, _ = _top(others, _FOUND_LISTED)
        listed = ", ".join(str(v) for v in sorted(top))
        if len(others) > len(top) or self.unmapped_other:
            listed = f"{listed} and more" if listed else "of many kinds"
        plural = len(others) != 1 or self.unmapped_other
        log.warning(
            "label %s %s %s not in the label map and became background: %.1f%% of the labelled "
            "pixels besides value %s (taken as the background class)",
            "values" if plural else "value", listed, "are" if plural else "is", 100 * share,
            background,
        )  # fmt: skip


def describe_label_values(counts: dict[str, Any]) -> str:
    """One line for reports from :meth:`LabelValueCounts.to_dict`.

    ``cropland 1 (3000 px), ignore 5 (512 px), unmapped (background) 0 (8744 px), 7 (16 px); no
    label 16 px`` and the map values never found.
    """

    def listed(values: dict[str, int]) -> str:
        return ", ".join(f"{v} ({n} px)" for v, n in values.items()) or "none"

    text = f"cropland {listed(counts['cropland'])}"
    if counts["ignore"]:
        text += f", ignore {listed(counts['ignore'])}"
    if counts["unmapped"]:
        text += f", unmapped (background) {listed(counts['unmapped'])}"
        if counts["unmapped_other"]:
            text += f" and {counts['unmapped_other']} px of other values"
    text += f"; no label {counts['nodata']} px"
    for target, values in counts["absent"].items():
        text += f"; {target} {values} never found"
    return text


class _ValueTally:
    """Per-value pixel counts of one scene's label raster, fed strip by strip (bounded memory).

    8/16-bit rasters add each strip's ``np.bincount`` into one table of every possible value;
    other dtypes count ``np.unique`` per strip into a dict that keeps label-map values exactly
    and the most frequent :data:`_TRACKED_VALUES` others.
    """

    def __init__(self, dtype: Any, label_map: LabelMap) -> None:
        dtype = np.dtype(dtype)
        self.mapped_values = np.unique(np.array([*label_map.cropland, *label_map.ignore]))
        self.bins = (
            np.zeros(np.iinfo(dtype).max + 1, np.int64) if dtype in _BINCOUNT_DTYPES else None
        )
        self.mapped: dict[Value, int] = {}
        self.unmapped: dict[Value, int] = {}
        self.unmapped_other = 0

    def add(self, values: np.ndarray) -> None:
        """Count the (valid) label values of one strip."""
        if values.size == 0:
            return
        if self.bins is not None:
            self.bins += np.bincount(values.ravel(), minlength=len(self.bins))
            return
        found, counts = np.unique(values, return_counts=True)
        is_mapped = np.isin(found, self.mapped_values)
        for value, n in zip(found[is_mapped], counts[is_mapped], strict=True):
            key = _number(value)
            self.mapped[key] = self.mapped.get(key, 0) + int(n)
        found, counts = found[~is_mapped], counts[~is_mapped]
        if len(found) > _TRACKED_VALUES:  # e.g. a continuous raster given as labels
            keep = np.argpartition(counts, -_TRACKED_VALUES)[-_TRACKED_VALUES:]
            self.unmapped_other += int(counts.sum() - counts[keep].sum())
            found, counts = found[keep], counts[keep]
        for value, n in zip(found, counts, strict=True):
            key = _number(value)
            self.unmapped[key] = self.unmapped.get(key, 0) + int(n)
        if len(self.unmapped) > 2 * _TRACKED_VALUES:
            self.unmapped, rest = _top(self.unmapped, _TRACKED_VALUES)
            self.unmapped_other += rest

    def counts(self) -> tuple[dict[Value, int], dict[Value, int], int]:
        """Mapped and unmapped values with their pixels, and the pixels of untracked values."""
        if self.bins is None:
            return self.mapped, self.unmapped, self.unmapped_other
        present = np.flatnonzero(self.bins)
        is_mapped = np.isin(present, self.mapped_values)
        mapped: dict[Value, int] = {int(v): int(self.bins[v]) for v in present[is_mapped]}
        unmapped, rest = _top(
            {int(v): int(self.bins[v]) for v in present[~is_mapped]}, _TRACKED_VALUES
        )
        return mapped, unmapped, rest


def _aligned(label: rasterio.io.DatasetReader, scene: RasterInfo) -> bool:
    same_grid: bool = label.width == scene.width and label.height == scene.height
    if label.crs is None or scene.crs is None:
        return same_grid
    return same_grid and label.crs == scene.crs and label.transform.almost_equals(scene.transform)


class RasterWindowMasks:
    """Reads a label raster strip by strip, warped onto the scene grid when not aligned.

    Only band 1 holds labels. Each strip is read and mapped once (windows inside it are slices),
    and its raw values are counted as they are read: every pixel of the scene grid once, strips
    overlapping the one before counted from where that one ended (:meth:`label_values`).
    """

    def __init__(
        self,
        dataset: rasterio.io.DatasetReaderBase,
        label_map: LabelMap,
        source: Path | None = None,
        bands: int = 1,
    ) -> None:
        self.dataset = dataset
        self.label_map = label_map
        self.source = Path(source or dataset.name)
        self.bands = bands
        nodata = dataset.nodata
        self.nodata_value = None if nodata is None or np.isnan(nodata) else float(nodata)
        self._table = value_lookup(label_map, dataset.dtypes[0])
        self._tally = _ValueTally(dataset.dtypes[0], label_map)
        self._pixels = self._nodata = 0
        self._counted_rows = 0  # rows [0, n) of the scene grid are counted
        self._strip = Window(0, 0, 0, 0)
        self._mask = np.zeros((0, 0), dtype=np.uint8)

    def _read(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mask, raw values, valid and inside pixels of ``window`` (band 1)."""
        values, valid, inside = read_padded(self.dataset, window, fill=0, indexes=[1])
        values = values[0]
        if self._table is not None:
            mask = self._table[values]
        else:
            mask = apply_label_map(values, self.label_map)
        mask[~valid] = MASK_IGNORE
        return mask, values, valid, inside

    def load_strip(self, window: Window) -> None:
        """Read, count and map the label values of one strip of the scene."""
        self._mask, values, valid, inside = self._read(window)
        self._strip = window
        # Strips are loaded top to bottom; rows an earlier strip covered were counted with it.
        new = slice(max(0, self._counted_rows - int(window.row_off)), None)
        self._counted_rows = max(self._counted_rows, int(window.row_off + window.height))
        valid = valid[new]
        self._pixels += int(inside[new].sum())
        self._nodata += int(inside[new].sum()) - int(valid.sum())
        self._tally.add(values[new][valid])

    def mask(self, window: Window) -> np.ndarray:
        """Mapped label values; pixels outside the label raster or at its nodata are ignore.

        A slice of the loaded strip; a window outside it is read on its own (and not counted).
        """
        place = strip_slices(self._strip, window, self._mask.shape)
        if place is None:
            return self._read(window)[0]
        return self._mask[place].copy()

    def label_values(self) -> LabelValueCounts:
        """What the strips loaded so far held, value by value."""
        mapped, unmapped, rest = self._tally.counts()
        return LabelValueCounts(
            pixels=self._pixels,
            nodata=self._nodata,
            mapped=dict(mapped),
            unmapped=dict(unmapped),
            unmapped_other=rest,
            nodata_values=set() if self.nodata_value is None else {_number(self.nodata_value)},
            multiband={str(self.source): self.bands} if self.bands > 1 else {},
        )


@contextlib.contextmanager
def open_raster_labels(
    path: Path, label_map: LabelMap, scene: RasterInfo
) -> Iterator[RasterWindowMasks]:
    """Open a label raster for ``scene``; a non-aligned raster is warped (nearest) onto its grid.

    The label map is checked against the raster's header first (:func:`check_label_map_fits`).
    Only band 1 holds labels: a raster with several bands (alpha bands aside) is read from band 1
    and named in the summary and in one warning per run (grayscale masks saved as RGB are common
    and read correctly so; colour-coded masks are not, and need converting to class values).
    """
    with open_raster(path, role="label raster") as label:
        check_label_map_fits(label_map, label.dtypes[0], label.nodata, path)
        bands = label_bands(label)
        if _aligned(label, scene):
            yield RasterWindowMasks(label, label_map, path, bands)
            return
        if label.crs is None or scene.crs is None:
            raise RsSegError(
                f"label raster is {label.width}x{label.height} but the scene "
                f"{scene.path.name} is {scene.width}x{scene.height}, and without a CRS "
                "they cannot be aligned",
                path,
            )
        with WarpedVRT(
            label,
            crs=scene.crs,
            transform=scene.transform,
            width=scene.width,
            height=scene.height,
            resampling=Resampling.nearest,
            add_alpha=label.nodata is None,
        ) as warped:
            yield RasterWindowMasks(warped, label_map, path, bands)
