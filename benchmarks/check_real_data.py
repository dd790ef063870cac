"""Real-data check of chip preparation on ../shared/data (skips cleanly when the data is absent).

For each dataset it runs ``rs_seg.prepare.run.prepare`` and reports chips per split, and compares
the cropland fraction found in the mask chips (each scene pixel counted once, even where edge chips
overlap) with the fraction computed from the label polygons with vector geometry alone (area of
the polygons inside each scene footprint). The two must agree within 1 percentage point.

    python benchmarks/check_real_data.py [--shared ../shared/data] [--workdir /tmp/rs_seg_real]

Writes benchmarks/results/real_data_prepare.json and real_data_prepare.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _harness
import numpy as np
import rasterio

from rs_seg.config import LabelMap, PrepareConfig, SplitConfig
from rs_seg.prepare.index import read_index
from rs_seg.prepare.run import prepare
from rs_seg.prepare.vector_labels import VectorLayer, polygon_cover_fraction
from rs_seg.rasters import RasterInfo

DEFAULT_SHARED = _harness.ROOT.parent / "shared" / "data"


def chip_fractions(chips_dir: Path) -> dict[str, tuple[int, int]]:
    """Per scene (cropland px, labelled px) from the mask chips, each scene pixel counted once."""
    chips = read_index(chips_dir)
    out = {}
    for scene, rows in chips.groupby("scene"):
        info = RasterInfo.read(Path(rows["scene_path"].iloc[0]))
        canvas = np.full((info.height, info.width), 255, dtype=np.uint8)
        for row in rows.itertuples():
            with rasterio.open(row.mask_path) as src:
                mask = src.read(1)
            r1 = min(info.height, row.row_off + row.size)
            c1 = min(info.width, row.col_off + row.size)
            canvas[row.row_off : r1, row.col_off : c1] = mask[
                : r1 - row.row_off, : c1 - row.col_off
            ]
        out[scene] = (int((canvas == 1).sum()), int((canvas != 255).sum()))
    return out


def polygon_fractions(labels: Path, chips_dir: Path) -> dict[str, tuple[float, float]]:
    """Per scene (polygon area inside the footprint, footprint area), from vectors alone."""
    layer = VectorLayer(labels)
    chips = read_index(chips_dir)
    out = {}
    for scene, path in chips.groupby("scene")["scene_path"].first().items():
        out[scene] = polygon_cover_fraction(layer, RasterInfo.read(Path(path)))
    return out


def check_dataset(name: str, cfg: PrepareConfig, labels: Path | None) -> dict:
    summary = prepare(cfg)
    report: dict = {
        "dataset": name,
        "chip_size": cfg.chip_size,
        "split_method": cfg.split.method,
        "scenes": summary.scenes,
        "chips": summary.chips,
        "splits": summary.splits,
        "skipped": summary.skipped,
        "notes": summary.notes,
    }
    chips = chip_fractions(cfg.out)
    crop, labelled = (sum(v[i] for v in chips.values()) for i in (0, 1))
    report["chip_cropland_fraction"] = crop / labelled
    if labels is not None:
        polygons = polygon_fractions(labels, cfg.out)
        covered, area = (sum(v[i] for v in polygons.values()) for i in (0, 1))
        report["polygon_cropland_fraction"] = covered / area
        report["difference_points"] = 100 * (report["chip_cropland_fraction"] - covered / area)
        report["per_scene"] = {
            s: {"chips": chips[s][0] / chips[s][1], "polygons": polygons[s][0] / polygons[s][1]}
            for s in chips
        }
    return report


def print_report(report: dict) -> None:
    splits = ", ".join(f"{k} {v['chips']}" for k, v in report["splits"].items() if v["chips"])
    line = f"{report['dataset']:<22} chip {report['chip_size']:>3}: "
    line += f"{report['chips']:>4} chips ({splits})"
    line += f"; cropland chips {report['chip_cropland_fraction']:.4f}"
    if "polygon_cropland_fraction" in report:
        line += f" vs polygons {report['polygon_cropland_fraction']:.4f}"
        line += f" ({report['difference_points']:+.2f} points)"
    print(line)


def plot(reports: list[dict], path: Path) -> None:
    plt = _harness.pyplot()
    with_scenes = [r for r in reports if "per_scene" in r]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for report in with_scenes:
        xs = [v["polygons"] for v in report["per_scene"].values()]
        ys = [v["chips"] for v in report["per_scene"].values()]
        ax.scatter(xs, ys, label=f"{report['dataset']} ({report['chip_size']} px)", s=18)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set(
        xlabel="cropland fraction from polygons (vector area)",
        ylabel="cropland fraction in mask chips",
        title="Per-scene label fidelity of prepare",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    _harness.save_figure(fig, path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs_seg_real"))
    parser.add_argument("--out", type=Path, default=_harness.RESULTS)
    args = parser.parse_args()
    if not args.shared.is_dir():
        print(f"shared data not found at {args.shared}: nothing to check")
        return 0
    naip = args.shared / "naip-fields"
    denmark = args.shared / "denmark-s2-lpis"
    gid = args.shared / "gid-mtl5"
    runs = []
    if naip.is_dir():
        runs.append(("naip-fields", PrepareConfig(
            scenes=[str(naip / "scenes" / "*.tif")], labels=naip / "fields.gpkg",
            out=args.workdir / "naip", overwrite=True), naip / "fields.gpkg"))  # fmt: skip
    if denmark.is_dir():
        for size in (256, 64):
            runs.append(("denmark-s2-lpis", PrepareConfig(
                scenes=[str(denmark / "s2_20160508_bgr_10m.tif")],
                labels=denmark / "fields_lpis2016.gpkg", out=args.workdir / f"denmark_{size}",
                chip_size=size, overwrite=True), denmark / "fields_lpis2016.gpkg"))  # fmt: skip
    if gid.is_dir():
        runs.append(("gid-mtl5", PrepareConfig(
            chips_dir=gid, image_glob="image/**/*.tif", mask_glob="label_gray/**/*.tif",
            label_map=LabelMap.parse("1=cropland,5=ignore"), chip_size=224,
            out=args.workdir / "gid", overwrite=True, split=SplitConfig()), None))  # fmt: skip
    reports = []
    for name, cfg, labels in runs:
        report = check_dataset(name, cfg, labels)
        print_report(report)
        reports.append(report)
    document = {
        "check": "prepare on real data",
        "date": _harness.today(),
        "machine": _harness.machine(),
        "runs": reports,
    }
    _harness.write_json(args.out / "real_data_prepare.json", document)
    plot(reports, args.out / "real_data_prepare.png")
    failed = [r for r in reports if abs(r.get("difference_points", 0)) > 1.0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
