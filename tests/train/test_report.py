"""Training report: figures, score table and README written into a run folder."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from rs_seg.train.report import (
    BEST_PNG,
    CHIP_IOU_PNG,
    CURVES_PNG,
    SCORES_CSV,
    WORST_PNG,
    ChipExample,
    ReportFiles,
    rgb_preview,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZE = 32


def split_metrics(**overrides: float) -> dict[str, float | int]:
    values: dict[str, float | int] = {
        "cropland_iou": 0.61234,
        "background_iou": 0.9,
        "mean_iou": 0.75617,
        "f1": 0.76,
        "precision": 0.8,
        "recall": 0.72,
        "accuracy": 0.93,
        "pixels": 123_456,
        "chips": 5,
    }
    values.update(overrides)
    return values


def full_metrics() -> dict:
    return {
        "threshold": 0.47,
        "model": {"arch": "Unet", "encoder": "resnet34", "bands": [1, 2, 3], "chip_size": 256},
        "best_epoch": 2,
        "epochs_run": 3,
        "validation": split_metrics(cropland_iou=0.65, pixels=65_536, chips=1),
        "test": split_metrics(),
        "data": {"train_chips": 12, "val_chips": 3, "test_chips": 5},
        "bundle": "model.rsseg",
    }


def history(epochs: int) -> list[dict[str, float]]:
    return [
        {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "val_loss": 1.2 / epoch,
            "val_iou": 0.2 * epoch,
            "val_mean_iou": 0.3 + 0.1 * epoch,
            "lr": 1e-3,
            "seconds": 1.5,
        }
        for epoch in range(1, epochs + 1)
    ]


def chip_scores() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "chip_id": ["c0", "c1", "c2", "c3", "c4"],
            "scene": ["s"] * 5,
            "iou": [0.8, math.nan, 0.1, 0.5, 0.3],
            "mean_iou": [0.85, 1.0, 0.4, 0.6, 0.5],
            "label_fraction": [0.4, 0.0, 0.2, 0.3, 0.1],
            "predicted_fraction": [0.4, 0.0, 0.5, 0.2, 0.3],
        }
    )


def example(chip_id: str, iou: float, *, bands: int = 4) -> ChipExample:
    rng = np.random.default_rng(len(chip_id))
    image = rng.integers(0, 4000, size=(bands, SIZE, SIZE)).astype(np.uint16)
    image[:, :4, :4] = 0  # nodata corner
    label = (np.arange(SIZE)[None, :] >= SIZE // 2).repeat(SIZE, axis=0).astype(np.uint8)
    label[0, :] = 255
    probability = rng.random((SIZE, SIZE)).astype(np.float32)
    return ChipExample(
        chip_id=chip_id,
        image=image,
        label=label,
        prediction=(probability > 0.5).astype(np.uint8),
        probability=probability,
        iou=iou,
        rgb_bands=(2, 1, 0) if bands >= 3 else (0, 0, 0),
    )


def assert_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 2_000  # a drawn figure, not an empty canvas
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    return pixels


def write_full(folder: Path) -> ReportFiles:
    return write_report(
        folder,
        history=history(3),
        metrics=full_metrics(),
        chip_scores=chip_scores(),
        worst=[example("c2", 0.1), example("c4", 0.3)],
        best=[example("c0", 0.8, bands=1)],
        title="Test report",
    )


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    """One full report shared by the read-only tests below: figures take most of the time."""
    folder = tmp_path_factory.mktemp("run") / "report"  # created by write_report
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return write_full(folder)


def test_full_report_writes_every_file_as_valid_png(full_report: ReportFiles) -> None:
    files, folder = full_report, full_report.folder
    assert files.folder == folder
    assert files.curves == folder / CURVES_PNG
    assert files.chip_iou == folder / CHIP_IOU_PNG
    assert files.worst == folder / WORST_PNG
    assert files.best == folder / BEST_PNG
    curves = assert_png(files.curves)
    assert curves.shape[1] > curves.shape[0]  # two panels side by side
    assert_png(files.chip_iou)
    worst = assert_png(files.worst)
    best = assert_png(files.best)
    assert worst.shape[0] > best.shape[0]  # one row per chip
    assert worst.shape[0] <= 2 * 2.2 * 100 + 100  # 2.2-inch cells at 100 dpi stay small


def test_markdown_summarises_metrics_and_links_every_figure(full_report: ReportFiles) -> None:
    text = full_report.markdown.read_text(encoding="utf-8")

    assert text.startswith("# Test report\n")
    assert "0.6123" in text  # test cropland IoU
    assert "0.6500" in text  # validation cropland IoU
    assert "| metric | validation | test |" in text
    assert "Unet" in text and "resnet34" in text and "1, 2, 3" in text and "256" in text
    assert "0.470" in text  # threshold
    assert "2 of 3" in text  # best epoch of epochs run
    assert "123,456" in text  # pixel count
    assert "model.rsseg" in text
    for name in (CURVES_PNG, CHIP_IOU_PNG, WORST_PNG, BEST_PNG):
        assert f"]({name})" in text
        assert any(line.startswith("![") and f"({name})" in line for line in text.splitlines())
    # median of the 4 defined IoUs (0.1, 0.3, 0.5, 0.8) and the three worst ids, worst first
    assert "0.4000" in text
    assert "`c2`, `c4`, `c3`" in text
    assert "1 with undefined IoU" in text


def test_scores_csv_is_sorted_by_iou_with_undefined_last(full_report: ReportFiles) -> None:
    scores = pd.read_csv(full_report.folder / SCORES_CSV)

    assert list(scores["chip_id"]) == ["c2", "c4", "c3", "c0", "c1"]
    assert list(scores.columns) == list(chip_scores().columns)
    assert math.isnan(scores["iou"].iloc[-1])


def test_report_is_deterministic(full_report: ReportFiles, tmp_path: Path) -> None:
    first = full_report
    second = write_full(tmp_path)

    for name in ("markdown", "curves", "chip_iou", "worst", "best"):
        assert getattr(first, name).read_bytes() == getattr(second, name).read_bytes(), name


def test_empty_inputs_still_give_a_report(tmp_path: Path) -> None:
    empty_scores = pd.DataFrame(
        columns=["chip_id", "scene", "iou", "mean_iou", "label_fraction", "predicted_fraction"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = write_report(
            tmp_path,
            history=[],
            metrics={"test": {}},
            chip_scores=empty_scores,
            worst=[],
            best=[],
        )

    assert files.worst is None and files.best is None
    assert not (tmp_path / WORST_PNG).exists() and not (tmp_path / BEST_PNG).exists()
    assert_png(files.curves)
    assert_png(files.chip_iou)
    text = files.markdown.read_text(encoding="utf-8")
    assert text.startswith("# Cropland model report")
    assert "n/a" in text
    assert "No example chips" in text
    assert (tmp_path / SCORES_CSV).exists()


def test_single_epoch_with_missing_values_and_all_nan_scores(tmp_path: Path) -> None:
    one_epoch = [{"epoch": 1, "train_loss": 0.7, "val_loss": math.nan, "lr": 1e-3}]
    all_nan = chip_scores().assign(iou=math.nan)
    metrics = {"best_epoch": 1, "test": split_metrics(cropland_iou=math.nan)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = write_report(
            tmp_path,
            history=one_epoch,
            metrics=metrics,
            chip_scores=all_nan,
            worst=[example("c0", math.nan)],
            best=[],
        )

    assert_png(files.curves)
    assert_png(files.chip_iou)
    assert files.worst is not None
    assert_png(files.worst)
    text = files.markdown.read_text(encoding="utf-8")
    assert "No chip with defined cropland IoU (5 chips scored)" in text


def test_report_needs_test_metrics(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="test"):
        write_report(tmp_path, history=[], metrics={}, chip_scores=chip_scores(), worst=[], best=[])


def test_no_pyplot_figures_left_open(full_report: ReportFiles) -> None:
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def test_rgb_preview_stretches_a_ramp_to_full_range() -> None:
    ramp = np.arange(1, 1 + SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 10
    image = np.stack([ramp, ramp * 2, ramp + 500])

    rgb = rgb_preview(image, (0, 1, 2))

    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        assert rgb[..., channel].min() == 0 and rgb[..., channel].max() == 255
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255  # low values dark, high values bright


def test_rgb_preview_ignores_nodata_when_stretching() -> None:
    ramp = np.linspace(100.0, 200.0, SIZE * SIZE).reshape(SIZE, SIZE)
    band = ramp.copy()
    band[:2] = 0.0
    band[2, :4] = np.nan
    band[3, :4] = np.inf

    rgb = rgb_preview(band[None], (0, 0, 0))

    assert (rgb[:2] == 0).all() and (rgb[2, :4] == 0).all() and (rgb[3, :4] == 0).all()
    assert rgb[-1, -1, 0] == 255  # stretch set by valid pixels, not pulled down by zeros


def test_rgb_preview_constant_image_is_black_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constant = rgb_preview(np.full((3, SIZE, SIZE), 7, dtype=np.uint16), (0, 1, 2))
        empty = rgb_preview(np.zeros((3, SIZE, SIZE), dtype=np.float32), (0, 1, 2))
        nodata = rgb_preview(np.full((3, SIZE, SIZE), np.nan, dtype=np.float32), (0, 1, 2))

    for rgb in (constant, empty, nodata):
        assert rgb.dtype == np.uint8 and rgb.shape == (SIZE, SIZE, 3)
        assert not rgb.any()


def test_rgb_preview_single_band_repeats_it_as_grey() -> None:
    band = np.arange(SIZE * SIZE, dtype=np.float32).reshape(1, SIZE, SIZE) + 1

    rgb = rgb_preview(band, (0, 0, 0))

    assert rgb.shape == (SIZE, SIZE, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert rgb.max() == 255


def test_rgb_preview_rejects_missing_band() -> None:
    with pytest.raises(ValueError, match="rgb_bands"):
        rgb_preview(np.ones((2, SIZE, SIZE)), (0, 1, 2))


def test_chip_example_rejects_mismatched_shapes() -> None:
    good = example("c0", 0.5)
    with pytest.raises(ValueError, match="prediction"):
        ChipExample(
            chip_id="bad",
            image=good.image,
            label=good.label,
            prediction=good.prediction[:-1],
            probability=good.probability,
            iou=0.5,
        )
