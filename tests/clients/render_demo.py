"""Render `make demo`'s outputs in QGIS (headless) to docs/images/qgis-fields.png for the README.

One arrival scene in true colour, its probability raster and its fields as QGIS draws them with
the styles rs_seg stores (the field layer's default style in the GeoPackage; the probability
raster's ``fields_prob.qml`` sidecar where one is written, else this script's fallback ramp).
Run under the system Python that has PyQGIS, after ``make demo``::

    make qgis-render-demo
    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/clients/render_demo.py --help
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qgis_check import render, start_qgis  # beside this script (sys.path[0])

ROOT = Path(__file__).resolve().parents[2]


def latest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "qgis-fields.png")
    parser.add_argument("--scene", type=int, default=0, help="which arrival scene (sorted) [0]")
    parser.add_argument("--width", type=int, default=1000, help="PNG width in pixels [1000]")
    parser.add_argument(
        "--extent", type=float, nargs=4, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
        help="map extent in the scene's CRS [the whole scene]",
    )  # fmt: skip
    parser.add_argument(
        "--merged", action="store_true", help="draw the merged fields.gpkg, not the scene's own"
    )
    parser.add_argument(
        "--prob", type=Path, help="another probability COG of the scene (e.g. `rs-seg infer` run "
        "again with the demo's model) [the demo's mapped one]",
    )  # fmt: skip
    parser.add_argument("--fields", type=Path, help="another field GeoPackage of the scene")
    parser.add_argument(
        "--full-colour", action="store_true",
        help="keep QGIS's 32-bit PNG [256 colours via Pillow when importable: a third the size]",
    )  # fmt: skip
    args = parser.parse_args(argv)
    scenes = sorted((args.demo / "arrivals" / "scenes").glob("*.tif"))
    if not scenes:
        print(f"no demo scenes under {args.demo}/arrivals/scenes: run `make demo` first")
        return 2
    scene = scenes[args.scene]
    folder = args.demo / "mapped" / scene.stem
    prob = args.prob or latest(sorted(folder.glob("*/fields_prob.tif")))
    fields = (
        args.demo / "fields.gpkg" if args.merged else latest(sorted(folder.glob("*/fields.gpkg")))
    )
    fields = args.fields or fields
    if prob is None or fields is None or not fields.exists():
        print(f"{scene.name} has no mapped outputs under {folder}: run `make demo` first")
        return 2
    spec = {
        "out": str(args.out), "width": args.width, "scenes": [str(scene)], "probs": [str(prob)],
        "fields": [{"path": str(fields), "layer": "fields"}], "extent": args.extent,
    }  # fmt: skip
    app = start_qgis()
    try:
        result = render(spec)
        print(json.dumps({"scene": str(scene), "prob": str(prob), "fields": str(fields)} | result,
                         indent=1))  # fmt: skip
    finally:
        app.exitQgis()
    if result["ok"] and not args.full_colour:
        palette(args.out)
    return 0 if result["ok"] else 1


def palette(png: Path) -> None:
    """Rewrite ``png`` with 256 colours (median cut, no dithering) when Pillow is there."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as image:
        reduced = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=0)
    reduced.save(png, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
