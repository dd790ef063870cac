"""Real-data check of scene inference: NAIP test scenes against their field polygons.

For every scene of the chip index's **test** split (whole scenes, never seen in training), run
``rs_seg.infer.run.run_infer`` with the given bundle, then compare with the labelled fields:

* pixel IoU: the probability raster thresholded at the bundle's threshold against the field
  polygons rasterized onto the scene grid (cropland IoU, background IoU, mean IoU, summed over
  all test scenes);
* object metrics (``rs_seg.train.object_metrics``, the polygon front end, as validation and test
  score raster instances): a predicted field matches a labelled field when their polygon IoU is
  above 0.5 (such a match is unique), so TP = matches, FP = unmatched predictions, FN = unmatched
  labels; with precision, recall, F1, mean matched IoU and the over-/under-segmentation counts,
  per scene and summed over all test scenes.

Skips cleanly when ``../shared/data`` is absent. Output: ``benchmarks/results/infer_real.json``.

    python benchmarks/check_infer_real.py --model runs/naip-fields/model-bundle.pt \\
        --chips data/naip-fields/chips --out /tmp/rs_seg_infer_real
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import get_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import _harness
import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
import shapely
from rasterio.features import rasterize

import rs_seg  # noqa: F401
from rs_seg.config import InferConfig, Precision
from rs_seg.infer.run import run_infer
from rs_seg.levels import threshold_to_level
from rs_seg.train.metrics import metrics_from_counts
from rs_seg.train.object_metrics import (
    ObjectCounts,
    object_metrics,
    polygon_object_counts,
    sum_counts,
)

ROOT = _harness.ROOT
SHARED = ROOT.parent / "shared" / "data"
LABELS = SHARED / "naip-fields" / "fields.gpkg"


def scene_labels(scene: Path) -> gpd.GeoDataFrame:
    with rasterio.open(scene) as src:
        bounds = shapely.box(*src.bounds)
        crs = src.crs
    labels = pyogrio.read_dataframe(LABELS).to_crs(crs)
    labels = labels[labels.intersects(bounds)].copy()
    labels["geometry"] = labels.geometry.make_valid().intersection(bounds)
    return labels[~labels.geometry.is_empty]


def pixel_counts(prob: Path, labels: gpd.GeoDataFrame, level: int) -> tuple[float, ...]:
    with rasterio.open(prob) as src:
        predicted = src.read(1) >= level
        valid = src.read_masks(1) > 0
        truth = rasterize(
            ((g, 1) for g in labels.geometry), out_shape=predicted.shape,
            transform=src.transform, fill=0, dtype="uint8",
        ).astype(bool)  # fmt: skip
    p, t = predicted[valid], truth[valid]
    return (
        float((p & t).sum()),
        float((p & ~t).sum()),
        float((~p & ~t).sum()),
        float((~p & t).sum()),
    )


def object_counts(fields: Path, labels: gpd.GeoDataFrame) -> ObjectCounts:
    predicted = pyogrio.read_dataframe(fields, layer="fields").to_crs(labels.crs)
    return polygon_object_counts(predicted, labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs/naip-fields/model-bundle.pt")
    parser.add_argument("--chips", type=Path, default=ROOT / "data/naip-fields/chips")
    parser.add_argument("--out", type=Path, default=Path("/tmp/rs_seg_infer_real"))
    parser.add_argument("--min-area", type=float, default=500.0)
    parser.add_argument("--precision", choices=get_args(Precision), default="auto",
                        help="forward-pass precision; results of a non-default one go to "
                        "infer_real_<precision>.json")  # fmt: skip
    args = parser.parse_args()
    if not LABELS.exists() or not args.model.exists() or not (args.chips / "index.gpkg").exists():
        print(f"skipped: needs {LABELS}, {args.model} and {args.chips}/index.gpkg")
        return 0
    index = pyogrio.read_dataframe(args.chips / "index.gpkg")
    scenes = sorted({Path(p) for p in index[index["split"] == "test"]["scene_path"]})
    args.out.mkdir(parents=True, exist_ok=True)
    totals = np.zeros(4)
    objects: list[ObjectCounts] = []
    rows = []
    for scene in scenes:
        scene = scene if scene.is_absolute() else (ROOT / scene).resolve()
        cfg = InferConfig(
            scene=scene, out=args.out / f"{scene.stem}.gpkg", model=args.model,
            min_area=args.min_area, overwrite=True, precision=args.precision,
        )  # fmt: skip
        started = time.perf_counter()
        summary = run_infer(cfg)
        seconds = time.perf_counter() - started
        labels = scene_labels(scene)
        from rs_seg.model.bundle import ModelBundle

        level = threshold_to_level(ModelBundle.load(args.model).threshold)
        counts = pixel_counts(summary.prob, labels, level)
        obj = object_counts(summary.fields, labels)
        totals += counts
        objects.append(obj)
        scored = object_metrics(obj)  # fields_* count the objects scored (those with an area)
        rows.append({
            "scene": scene.name, "seconds": round(seconds, 1),
            "fields_predicted": scored["fields_predicted"],
            "fields_labelled": scored["fields_labelled"], **metrics_from_counts(*counts),
            "object_tp_fp_fn": [obj.tp, obj.fp, obj.fn], **scored, "warnings": summary.warnings,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    total = sum_counts(objects)
    scored = object_metrics(total)
    import torch

    result = {
        "date": _harness.today(),
        "machine": _harness.machine(torch=torch.__version__, torch_threads=torch.get_num_threads()),
        "model": str(args.model),
        "precision": args.precision,
        "seconds": round(sum(row["seconds"] for row in rows), 1),
        "scenes": rows,
        "pixel": metrics_from_counts(*totals),
        "object": {
            "tp": total.tp, "fp": total.fp, "fn": total.fn,
            "precision": scored["object_precision"], "recall": scored["object_recall"],
            "f1": scored["object_f1"], **scored,
        },
    }  # fmt: skip
    name = "infer_real.json" if args.precision == "auto" else f"infer_real_{args.precision}.json"
    _harness.write_json(_harness.RESULTS / name, result)
    print(json.dumps({"pixel": result["pixel"], "object": result["object"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
