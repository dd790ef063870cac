"""Training report written into a run directory after a model has been trained and evaluated.

Why a report: a run directory holds a model bundle and numbers in JSON, but judging a model needs
more than one score. The report answers the questions asked after every run: did training converge
or overfit (loss and IoU curves), is the test score carried by a few easy chips or spread evenly
(sorted per-chip IoU), and what do the failures look like (worst and best chips next to their
labels). ``README.md`` ties it together so that a run folder is readable in any Markdown viewer.

The module only needs numpy, pandas and matplotlib, so a report can be (re)built without torch.
Figures use matplotlib's object-oriented API with the Agg canvas: no pyplot state, no GUI backend,
and no figure stays registered anywhere after it has been written, however many runs one process
makes. Output depends only on the inputs, so the same run gives byte-identical files.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from rs_seg.records import RunMetrics

MARKDOWN = "README.md"
CURVES_PNG = "loss_iou.png"
CHIP_IOU_PNG = "chip_iou.png"
WORST_PNG = "worst_chips.png"
BEST_PNG = "best_chips.png"
SCORES_CSV = "chip_scores.csv"

DPI = 100
CELL_INCHES = 2.2  # edge of one chip panel in the example grids
STRETCH_PERCENTILES = (2.0, 98.0)
WORST_IDS_LISTED = 3

# Class colours, shared by label and prediction panels so that they compare at a glance.
BACKGROUND_RGB = (64, 64, 64)
CROPLAND_RGB = (190, 220, 40)
IGNORE_RGB = (230, 0, 230)
CLASS_LEGEND = (
    ("background", BACKGROUND_RGB),
    ("cropland", CROPLAND_RGB),
    ("ignore", IGNORE_RGB),
)

FIELDS_NOTE = (
    "Fields, chip by chip: a predicted and a labelled field match one-to-one at IoU > 0.5; "
    "over-segmented: labelled fields split into 2+ predictions, under-segmented: predictions "
    "spanning 2+ labelled fields."
)
OBJECT_ROWS = (
    ("object_f1", "object F1"),
    ("object_precision", "object precision"),
    ("object_recall", "object recall"),
    ("mean_matched_iou", "mean IoU of matched fields"),
    ("oversegmented", "over-segmented fields"),
    ("undersegmented", "under-segmented predictions"),
    ("fields_predicted", "fields predicted"),
    ("fields_labelled", "fields labelled"),
)
# Rows of the metrics table, in reading order; other scalar keys follow alphabetically.
METRIC_ROWS = (
    ("cropland_iou", "cropland IoU"),
    ("background_iou", "background IoU"),
    ("mean_iou", "mean IoU"),
    ("f1", "F1"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("accuracy", "accuracy"),
    ("pixels", "pixels"),
    ("chips", "chips"),
)


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is ambiguous
class ChipExample:
    """One test chip shown in the best/worst grids.

    Attributes:
        chip_id: Identifier shown in the row title, so a chip can be found again in the index.
        image: ``(bands, H, W)`` raw chip values of any dtype; zeros and non-finite values are
            treated as nodata by the preview stretch.
        label: ``(H, W)`` uint8 reference: 0 background, 1 cropland, 255 ignore.
        prediction: ``(H, W)`` uint8 predicted class, 0 or 1.
        probability: ``(H, W)`` float32 cropland probability in ``[0, 1]``.
        iou: Cropland IoU of this chip; NaN where undefined.
        rgb_bands: 0-based band indices shown as red, green and blue; repeat a band for 1-2 band
            chips, e.g. ``(0, 0, 0)``.
    """

    chip_id: str
    image: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    probability: np.ndarray
    iou: float
    rgb_bands: tuple[int, int, int] = (0, 1, 2)

    def __post_init__(self) -> None:
        """Check shapes now, so a bad example fails where it is built, not inside plotting."""
        if self.image.ndim not in (2, 3):
            raise ValueError(
                f"chip {self.chip_id}: image must be (bands, H, W), got {self.image.shape}"
            )
        _check_band_indices(_as_bands(self.image).shape[0], self.rgb_bands)
        shape = self.label.shape
        for name in ("label", "prediction", "probability"):
            array = getattr(self, name)
            if array.ndim != 2 or array.shape != shape:
                raise ValueError(
                    f"chip {self.chip_id}: {name} must be 2-D with the label's shape {shape}, "
                    f"got {array.shape}"
                )


@dataclass(frozen=True)
class ReportFiles:
    """Where :func:`write_report` put each file, so callers can link or upload them.

    Attributes:
        folder: The report folder.
        markdown: ``README.md`` summary.
        curves: ``loss_iou.png``, loss and validation IoU per epoch.
        chip_iou: ``chip_iou.png``, sorted per-chip test IoU.
        worst: ``worst_chips.png``, or None when no worst examples were given.
        best: ``best_chips.png``, or None when no best examples were given.
        fields: Figure of fields on the worst and best test scenes, when the caller drew one.
    """

    folder: Path
    markdown: Path
    curves: Path
    chip_iou: Path
    worst: Path | None
    best: Path | None
    fields: Path | None = None


@dataclass(frozen=True)
class FieldsSection:
    """Fields on whole test scenes: a figure the caller drew into the report folder, a table."""

    figure: Path | None
    lines: Sequence[str]


def write_report(
    folder: Path,
    *,
    history: list[dict[str, float]],
    metrics: RunMetrics,
    chip_scores: pd.DataFrame,
    worst: list[ChipExample],
    best: list[ChipExample],
    title: str = "Cropland model report",
    fields: FieldsSection | None = None,
) -> ReportFiles:
    """Write figures, the per-chip score table and ``README.md`` into ``folder``.

    Every input except ``metrics["test"]`` may be empty or incomplete (a run stopped early, a
    skipped validation, a test split without cropland): the report then says what is missing
    instead of failing, because it is written at the end of a run whose model is already paid for.

    Args:
        folder: Run or staging folder; created if missing. Existing report files are replaced.
        history: One dict per finished epoch with ``epoch``, ``train_loss``, ``val_loss``,
            ``val_iou``, ``val_mean_iou``, ``lr`` and ``seconds``; values may be NaN or missing.
        metrics: The run's metrics (:class:`rs_seg.records.RunMetrics`); ``test`` holds the
            test-split metrics, and ``threshold``, ``model``, ``best_epoch``, ``epochs_run``,
            ``validation``, ``data`` and ``bundle`` are used when present: the rendering reads
            it as a plain mapping, so a partial document still gives a report.
        chip_scores: Per-test-chip scores with ``chip_id``, ``scene``, ``iou``, ``mean_iou``,
            ``label_fraction`` and ``predicted_fraction``; ``iou`` is NaN where undefined.
        worst: Lowest-scoring test chips to show, worst first.
        best: Highest-scoring test chips to show, best first.
        title: Heading of the Markdown summary.
        fields: Scene-level field results (figure and table) to include, if any.

    Returns:
        The paths written.

    Raises:
        KeyError: If ``metrics`` has no ``test`` section.
    """
    if "test" not in metrics:
        raise KeyError("metrics must contain a 'test' section with the test-split metrics")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scores = sorted_chip_scores(chip_scores)
    files = ReportFiles(
        folder=folder,
        markdown=folder / MARKDOWN,
        curves=folder / CURVES_PNG,
        chip_iou=folder / CHIP_IOU_PNG,
        worst=folder / WORST_PNG if worst else None,
        best=folder / BEST_PNG if best else None,
        fields=fields.figure if fields else None,
    )
    best_epoch = _finite_or_none(metrics.get("best_epoch"))
    plot_training_curves(history, best_epoch, files.curves)
    test_iou = _finite_or_none(metrics["test"].get("cropland_iou"))
    plot_chip_iou(scores, test_iou, files.chip_iou)
    if files.worst is not None:
        plot_chip_grid(worst, "Worst test chips by cropland IoU", files.worst)
    if files.best is not None:
        plot_chip_grid(best, "Best test chips by cropland IoU", files.best)
    scores.to_csv(folder / SCORES_CSV, index=False)
    markdown = render_markdown(title, metrics, scores, files, fields.lines if fields else ())
    files.markdown.write_text(markdown, encoding="utf-8")
    return files


# --------------------------------------------------------------------------- chip previews


def rgb_preview(image: np.ndarray, rgb_bands: tuple[int, int, int]) -> np.ndarray:
    """Turn raw chip values into a displayable ``(H, W, 3)`` uint8 image.

    Each selected band is stretched on its own between its 2nd and 98th percentile, computed over
    finite, non-zero pixels only: reflectance rarely fills its dtype's range, and zeros or NaN are
    nodata that would otherwise pin the stretch. Nodata pixels come out black. A band without
    valid pixels, or with a single value, comes out black too rather than dividing by zero.

    Args:
        image: ``(bands, H, W)`` chip values of any numeric dtype; ``(H, W)`` counts as one band.
        rgb_bands: 0-based indices of the bands shown as red, green and blue.

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        ValueError: If a band index is outside the image.
    """
    bands = _as_bands(image)
    _check_band_indices(bands.shape[0], rgb_bands)
    channels = [_stretch_band(bands[index]) for index in rgb_bands]
    return np.stack(channels, axis=-1)


def class_colours(classes: np.ndarray) -> np.ndarray:
    """Colour a label or prediction map: background grey, cropland yellow-green, ignore magenta.

    Values other than 0 and 1 are shown like ignore, so unexpected codes stand out.
    """
    lookup = np.empty((256, 3), dtype=np.uint8)
    lookup[:] = IGNORE_RGB
    lookup[0] = BACKGROUND_RGB
    lookup[1] = CROPLAND_RGB
    return lookup[np.asarray(classes).astype(np.uint8, copy=False)]


def _as_bands(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as ``(bands, H, W)``, promoting a single ``(H, W)`` band."""
    array = np.asarray(image)
    return array[np.newaxis] if array.ndim == 2 else array


def _check_band_indices(band_count: int, rgb_bands: Sequence[int]) -> None:
    """Fail with the offending indices instead of an IndexError deep in plotting."""
    if len(rgb_bands) != 3 or any(not 0 <= index < band_count for index in rgb_bands):
        raise ValueError(f"rgb_bands {tuple(rgb_bands)} must be 3 indices below {band_count}")


def _stretch_band(band: np.ndarray) -> np.ndarray:
    """Percentile-stretch one band to uint8, with nodata and degenerate bands as zeros."""
    values = band.astype(np.float64, copy=False)
    valid = np.isfinite(values) & (values != 0)
    out = np.zeros(values.shape, dtype=np.uint8)
    if not valid.any():
        return out
    low, high = np.percentile(values[valid], STRETCH_PERCENTILES)
    if not high > low:
        return out
    scaled = np.clip((values[valid] - low) / (high - low), 0.0, 1.0)
    out[valid] = np.rint(scaled * 255.0).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- figures


@contextmanager
def saved_figure(path: Path, width: float, height: float) -> Iterator[Figure]:
    """Yield a detached Agg figure, save it to ``path`` and release its artists.

    Figures built this way are never registered with pyplot, so nothing accumulates across the
    many reports of a long session; clearing drops the image data right away.
    """
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    try:
        yield figure
        figure.savefig(path, dpi=DPI, format="png")
    finally:
        figure.clear()


def plot_training_curves(
    history: Sequence[Mapping[str, Any]], best_epoch: float | None, path: Path
) -> None:
    """Plot loss (left) and validation IoU (right) per epoch, marking the best epoch.

    Missing or NaN values leave gaps; markers keep single epochs visible.
    """
    epochs = _epochs(history)
    with saved_figure(path, 11.0, 4.2) as figure:
        loss_axes, iou_axes = figure.subplots(1, 2)
        drawn = (
            _plot_series(
                loss_axes, epochs, history, (("train_loss", "train"), ("val_loss", "validation"))
            ),
            _plot_series(
                iou_axes,
                epochs,
                history,
                (("val_iou", "cropland IoU"), ("val_mean_iou", "mean IoU")),
            ),
        )
        loss_axes.set(title="Loss", xlabel="epoch", ylabel="loss")
        iou_axes.set(title="Validation IoU (threshold 0.5)", xlabel="epoch", ylabel="IoU")
        iou_axes.set_ylim(-0.02, 1.02)
        for axes, lines_drawn in zip((loss_axes, iou_axes), drawn, strict=True):
            _mark_best_epoch(axes, best_epoch)
            _finish_epoch_axes(axes, epochs, best_epoch, lines_drawn=lines_drawn)
        plural = "" if len(epochs) == 1 else "s"
        figure.suptitle(f"Training history ({len(epochs)} epoch{plural})")


def _epochs(history: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Epoch numbers, falling back to the 1-based position where ``epoch`` is missing."""
    recorded = [_as_float(row.get("epoch")) for row in history]
    return np.array(
        [value if math.isfinite(value) else index + 1 for index, value in enumerate(recorded)],
        dtype=np.float64,
    )


def _plot_series(
    axes: Axes,
    epochs: np.ndarray,
    history: Sequence[Mapping[str, Any]],
    series: Sequence[tuple[str, str]],
) -> int:
    """Draw each history key that has at least one value as a line with markers.

    Returns:
        How many lines were drawn, so the caller can say when there was nothing to show.
    """
    drawn = 0
    for key, label in series:
        values = np.array([_as_float(row.get(key)) for row in history], dtype=np.float64)
        if np.isfinite(values).any():
            axes.plot(epochs, values, marker="o", markersize=4, linewidth=1.5, label=label)
            drawn += 1
    return drawn


def _mark_best_epoch(axes: Axes, best_epoch: float | None) -> None:
    """Dashed vertical line at the checkpointed epoch, so curves read relative to it."""
    if best_epoch is not None:
        label = f"best epoch {best_epoch:g}"
        axes.axvline(best_epoch, color="black", linestyle="--", linewidth=1, label=label)


def _finish_epoch_axes(
    axes: Axes, epochs: np.ndarray, best_epoch: float | None, *, lines_drawn: int
) -> None:
    """Integer epoch ticks, a legend when something was drawn, a note when nothing was.

    The x range is set from the epochs (half an epoch of margin) rather than autoscaled, so a
    single epoch gets a readable axis and both panels share the same range.
    """
    shown = [*epochs.tolist(), *([best_epoch] if best_epoch is not None else [])]
    if shown:
        axes.set_xlim(min(shown) - 0.5, max(shown) + 0.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best", fontsize=8)
    if not lines_drawn:
        note = "no finished epochs" if not epochs.size else "no values recorded"
        axes.text(
            0.5, 0.5, note, transform=axes.transAxes, ha="center", va="center", backgroundcolor="w"
        )


def plot_chip_iou(scores: pd.DataFrame, test_iou: float | None, path: Path) -> None:
    """Plot per-chip test IoU sorted ascending against the fraction of chips.

    The curve shows whether the test score is spread evenly or carried by a few chips; the
    median and the pixel-level IoU are drawn as reference lines. Chips with undefined IoU (no
    cropland in label or prediction) are left out and counted in the title.
    """
    ious = _chip_ious(scores)
    defined = ious[np.isfinite(ious)]
    undefined = int(ious.size - defined.size)
    with saved_figure(path, 7.0, 4.2) as figure:
        axes = figure.subplots()
        if defined.size:
            _draw_sorted_ious(axes, np.sort(defined))
        else:
            axes.text(0.5, 0.5, "no chip with defined IoU", ha="center", va="center")
        if test_iou is not None:
            label = f"pixel-level test IoU {test_iou:.3f}"
            axes.axhline(test_iou, color="tab:red", linestyle=":", linewidth=1.5, label=label)
        axes.set(xlim=(0.0, 1.0), ylim=(-0.02, 1.02), xlabel="fraction of chips (sorted)")
        axes.set_ylabel("cropland IoU")
        axes.set_title(
            f"Per-chip cropland IoU, test split: {defined.size} chips, "
            f"{undefined} with undefined IoU left out",
            fontsize=10,
        )
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="lower right", fontsize=8)


def _draw_sorted_ious(axes: Axes, ious: np.ndarray) -> None:
    """Sorted IoU curve at chip-centred fractions plus its median line."""
    fractions = (np.arange(ious.size) + 0.5) / ious.size
    marker = "o" if ious.size <= 60 else None
    axes.plot(fractions, ious, marker=marker, markersize=3, linewidth=1.5, label="chip IoU")
    median = float(np.median(ious))
    axes.axhline(
        median, color="tab:gray", linestyle="--", linewidth=1, label=f"median {median:.3f}"
    )


def plot_chip_grid(examples: Sequence[ChipExample], title: str, path: Path) -> None:
    """One row per chip: RGB preview, label, prediction and probability, same class colours."""
    columns = ("image", "label", "prediction", "probability")
    rows = len(examples)
    width, height = CELL_INCHES * len(columns), CELL_INCHES * rows + 0.8
    with saved_figure(path, width, height) as figure:
        grid = figure.subplots(rows, len(columns), squeeze=False)
        for example, axes_row in zip(examples, grid, strict=True):
            _draw_chip_row(example, axes_row, columns)
        figure.suptitle(title)
        handles = [
            Patch(color=(r / 255.0, g / 255.0, b / 255.0), label=name)
            for name, (r, g, b) in CLASS_LEGEND
        ]
        figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)


def _draw_chip_row(example: ChipExample, axes_row: Sequence[Axes], columns: Sequence[str]) -> None:
    """Fill one grid row; the first panel's title names the chip and its IoU."""
    image_axes, label_axes, prediction_axes, probability_axes = axes_row
    image_axes.imshow(rgb_preview(example.image, example.rgb_bands))
    label_axes.imshow(class_colours(example.label), interpolation="nearest")
    prediction_axes.imshow(class_colours(example.prediction), interpolation="nearest")
    probability_axes.imshow(
        np.asarray(example.probability, dtype=np.float32),
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    titles = (f"{example.chip_id}\nIoU {_format_iou(example.iou)}", *columns[1:])
    for axes, panel_title in zip(axes_row, titles, strict=True):
        axes.set_title(panel_title, fontsize=8)
        axes.set_axis_off()


def _format_iou(value: float) -> str:
    """Two decimals, or ``n/a`` for an undefined IoU."""
    number = _as_float(value)
    return f"{number:.2f}" if math.isfinite(number) else "n/a"


# --------------------------------------------------------------------------- tables


def sorted_chip_scores(chip_scores: pd.DataFrame) -> pd.DataFrame:
    """Return the scores sorted by ascending IoU, undefined last, ties kept in input order."""
    if "iou" not in chip_scores.columns:
        return chip_scores.reset_index(drop=True)
    order = pd.to_numeric(chip_scores["iou"], errors="coerce")
    ranked = chip_scores.assign(_order=order.to_numpy())
    ranked = ranked.sort_values("_order", kind="mergesort", na_position="last")
    return ranked.drop(columns="_order").reset_index(drop=True)


def _chip_ious(scores: pd.DataFrame) -> np.ndarray:
    """Per-chip IoU as float64, NaN for anything non-numeric; empty without an ``iou`` column."""
    if "iou" not in scores.columns:
        return np.empty(0, dtype=np.float64)
    return pd.to_numeric(scores["iou"], errors="coerce").to_numpy(dtype=np.float64)


def render_markdown(
    title: str,
    metrics: Mapping[str, Any],
    scores: pd.DataFrame,
    files: ReportFiles,
    field_lines: Sequence[str] = (),
) -> str:
    """Build the ``README.md`` text: model, metrics table, data, chip summary and figures."""
    sections = [
        [f"# {title}", "", *_overview_lines(metrics)],
        _metrics_section(metrics.get("validation") or {}, metrics["test"]),
        *([list(field_lines)] if field_lines else []),
        _data_section(metrics.get("data") or {}),
        _chip_section(scores),
        _figures_section(files),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _overview_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Model, threshold, epochs and bundle as a bullet list; absent items are skipped."""
    lines = [f"- Model: {_model_description(metrics.get('model') or {})}"]
    threshold = _finite_or_none(metrics.get("threshold"))
    if threshold is not None:
        lines.append(f"- Decision threshold: {threshold:.3f}")
    lines.append(f"- Best epoch: {_epoch_description(metrics)}")
    if metrics.get("bundle"):
        lines.append(f"- Bundle: [`{metrics['bundle']}`]({metrics['bundle']})")
    return lines


def _model_description(model: Mapping[str, Any]) -> str:
    """``Unet, encoder resnet34, bands 1, 2, 3, 256 px chips`` from whichever keys exist."""
    parts = []
    if model.get("arch"):
        parts.append(str(model["arch"]))
    if model.get("encoder"):
        parts.append(f"encoder {model['encoder']}")
    bands = model.get("bands")
    if bands is not None:
        listed = ", ".join(str(band) for band in bands) if _is_sequence(bands) else str(bands)
        parts.append(f"bands {listed}")
    if model.get("chip_size"):
        parts.append(f"{model['chip_size']} px chips")
    return ", ".join(parts) if parts else "n/a"


def _epoch_description(metrics: Mapping[str, Any]) -> str:
    """``7 of 10 run``, or whichever half is known."""
    best = metrics.get("best_epoch")
    run = metrics.get("epochs_run")
    best_text = _format_value(best) if best is not None else "n/a"
    return f"{best_text} of {_format_value(run)} run" if run is not None else best_text


def _metrics_section(validation: Mapping[str, Any], test: Mapping[str, Any]) -> list[str]:
    """Markdown table, one row per metric, validation and test side by side."""
    lines = ["## Metrics", "", "| metric | validation | test |", "|---|---:|---:|"]
    for key, name in _metric_rows(validation, test):
        row = f"| {name} | {_format_value(validation.get(key))} | {_format_value(test.get(key))} |"
        lines.append(row)
    found = [m.get("objects") for m in (validation, test)]
    if any(isinstance(f, Mapping) for f in found):
        val, tst = (f if isinstance(f, Mapping) else {} for f in found)
        lines += ["", FIELDS_NOTE, "", "| field metric | validation | test |", "|---|---:|---:|"]
        for key, name in OBJECT_ROWS:
            lines.append(
                f"| {name} | {_format_value(val.get(key))} | {_format_value(tst.get(key))} |"
            )
    return lines


def _metric_rows(validation: Mapping[str, Any], test: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Known metrics first, in fixed order, then any other scalar metric alphabetically."""
    known = {key for key, _ in METRIC_ROWS}
    extra = sorted(
        key
        for key in {*validation, *test} - known
        if _is_scalar(validation.get(key)) and _is_scalar(test.get(key))
    )
    return [*METRIC_ROWS, *((key, key.replace("_", " ")) for key in extra)]


def _data_section(data: Mapping[str, Any]) -> list[str]:
    """Chip counts per split (or whatever the data summary holds)."""
    lines = ["## Data", ""]
    if not data:
        return [*lines, "No data summary recorded."]
    return [*lines, *(f"- {key.replace('_', ' ')}: {_format_value(v)}" for key, v in data.items())]


def _chip_section(scores: pd.DataFrame) -> list[str]:
    """Median per-chip IoU, how many chips were undefined, and the worst chip ids."""
    ious = _chip_ious(scores)
    finite = np.isfinite(ious)
    lines = ["## Per-chip IoU (test split)", ""]
    if not finite.any():
        lines.append(f"- No chip with defined cropland IoU ({ious.size} chips scored)")
    else:
        median = float(np.median(ious[finite]))
        lines.append(
            f"- Median per-chip cropland IoU: {median:.4f} over {int(finite.sum())} chips "
            f"({int((~finite).sum())} with undefined IoU left out)"
        )
        if "chip_id" in scores.columns:
            worst_ids = scores["chip_id"][finite].head(WORST_IDS_LISTED)
            lines.append("- Worst chips: " + ", ".join(f"`{chip}`" for chip in worst_ids))
    lines.append(f"- All scores: [{SCORES_CSV}]({SCORES_CSV})")
    return lines


def _figures_section(files: ReportFiles) -> list[str]:
    """A link and an inline embed per figure; missing example grids are said so."""
    figures = (
        ("Loss and IoU per epoch", files.curves),
        ("Per-chip IoU, sorted", files.chip_iou),
        ("Worst test chips", files.worst),
        ("Best test chips", files.best),
        *([("Fields on the worst and best test scenes", files.fields)] if files.fields else []),
    )
    lines = ["## Figures"]
    for caption, path in figures:
        lines += ["", f"### {caption}", ""]
        if path is None:
            lines.append("No example chips were given.")
        else:
            lines += [f"[{path.name}]({path.name})", "", f"![{caption}]({path.name})"]
    return lines


# --------------------------------------------------------------------------- value helpers


def _as_float(value: Any) -> float:
    """Float of a number, NaN for None, strings, arrays and anything else."""
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, numbers.Real):
        return float(value)
    return math.nan


def _finite_or_none(value: Any) -> float | None:
    """The value as a float when it is a finite number, else None."""
    number = _as_float(value)
    return number if math.isfinite(number) else None


def _is_scalar(value: Any) -> bool:
    """True for values a table cell can show: None, numbers and strings."""
    return value is None or isinstance(value, numbers.Number | str)


def _is_sequence(value: Any) -> bool:
    """True for lists, tuples and arrays, not for strings."""
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str)


def _format_value(value: Any) -> str:
    """Table cell text: integers with separators, floats with 4 decimals, ``n/a`` if missing."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        number = float(value)
        return f"{number:.4f}" if math.isfinite(number) else "n/a"
    return str(value)
