"""Open rs_seg's outputs in PyQGIS, headless, and print what QGIS sees as one JSON report.

Run under the system Python that has PyQGIS (Debian: ``apt-get install python3-qgis``), never
inside the project's venv (its numpy and GDAL are not QGIS's)::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/clients/qgis_check.py spec.json

``spec.json`` names what to open and what to render::

    {"vectors": {"NAME": {"path": "fields.gpkg", "layer": "fields"}, ...},
     "rasters": {"NAME": {"path": "fields_prob.tif"}, ...},
     "renders": [{"out": "render.png", "width": 1200, "scenes": [...], "probs": [...],
                  "fields": [{"path": ..., "layer": "fields"}]}]}

The report (the last stdout line, after ``QGIS_REPORT ``) holds, per vector layer: validity, CRS,
feature and invalid-geometry counts, the default style stored in the GeoPackage's
``layer_styles`` table as parsed here with xml.etree (renderer type, symbol layer colours,
aliases, display expression, map tip) next to what QGIS applied on load; per raster: validity,
CRS, bands (with colour interpretation, so a mask exposed as an alpha band shows), nodata, scale,
offset, the renderer QGIS chose (a ``<name>.qml`` sidecar is applied on load) and band statistics
over all pixels; per render: the PNG, extents and sampled pixels inside fields against a render
without them. ``tests/clients/test_qgis.py`` asserts on it; ``render_demo.py`` reuses ``render``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# No .aux.xml beside the files QGIS computes statistics of: outputs folders stay rs_seg's own.
os.environ.setdefault("GDAL_PAM_ENABLED", "NO")

import numpy as np  # python3-gdal depends on python3-numpy
from qgis.core import (  # after QT_QPA_PLATFORM is set
    Qgis,
    QgsApplication,
    QgsColorRampShader,
    QgsCoordinateTransform,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsMultiBandColorRenderer,
    QgsProject,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRectangle,
    QgsRenderContext,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor, QImage

# Beside this script (its folder is sys.path[0]); stdlib only, so the tests import it too.
from qml_style import qml_expectations, stored_styles

# --- what QGIS applied ---------------------------------------------------------------------------


def _color(color: QColor) -> list[int]:
    return [color.red(), color.green(), color.blue(), color.alpha()]


def applied_style(layer: QgsVectorLayer) -> dict[str, Any]:
    """The same facts as ``qml_style.qml_expectations``, read from the loaded layer."""
    renderer = layer.renderer()
    symbol_layers = []
    if renderer is not None:
        for symbol in renderer.symbols(QgsRenderContext()):
            for i in range(symbol.symbolLayerCount()):
                symbol_layer = symbol.symbolLayer(i)
                symbol_layers.append(
                    {
                        "class": symbol_layer.layerType(),
                        "color": _color(symbol_layer.color()),
                        "stroke_color": _color(symbol_layer.strokeColor()),
                    }
                )
    labeling = layer.labeling()
    settings = labeling.settings() if labeling is not None and labeling.type() == "simple" else None
    fields = layer.fields()
    aliases = {f.name(): layer.attributeAlias(i) for i, f in enumerate(fields) if f.alias()}
    return {
        "renderer": renderer.type() if renderer is not None else None,
        "symbol_layers": symbol_layers,
        "labels_enabled": layer.labelsEnabled(),
        "labeling": labeling.type() if labeling is not None else None,
        "label_expression": settings.fieldName if settings is not None else None,
        "aliases": aliases,
        "display_expression": layer.displayExpression(),
        "map_tip": layer.mapTipTemplate(),
    }


def vector_report(path: str, layer_name: str) -> dict[str, Any]:
    """Open ``path|layername=layer_name`` through the ogr provider as QGIS does on a drop."""
    layer = QgsVectorLayer(f"{path}|layername={layer_name}", layer_name, "ogr")
    report: dict[str, Any] = {"valid": layer.isValid()}
    if not layer.isValid():
        report["error"] = layer.error().summary()
        return report
    invalid, empty, counted = [], 0, 0
    for feature in layer.getFeatures():
        counted += 1
        geometry = feature.geometry()
        if geometry.isNull() or geometry.isEmpty():
            empty += 1
        elif not geometry.isGeosValid():
            invalid.append(feature.id())
    extent = layer.extent()
    styles = stored_styles(path, layer_name)
    defaults = [s for s in styles if s["default"]]
    report |= {
        "crs": layer.crs().authid(),
        "geometry_type": int(layer.geometryType()),
        "feature_count": layer.featureCount(),
        "features_iterated": counted,
        "invalid_geometries": invalid[:20],
        "invalid_count": len(invalid),
        "empty_geometries": empty,
        "fields": [f.name() for f in layer.fields()],
        "extent": [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()],
        "stored_styles": [{"name": s["name"], "default": s["default"]} for s in styles],
        "stored_default_qml": defaults[0]["qml"] if defaults else None,
        "expected_style": qml_expectations(defaults[0]["qml"]) if defaults else None,
        "applied_style": applied_style(layer),
    }
    return report


def raster_report(path: str) -> dict[str, Any]:
    """Open ``path`` through the gdal provider; statistics over every pixel of band 1."""
    layer = QgsRasterLayer(path, Path(path).stem, "gdal")
    report: dict[str, Any] = {"valid": layer.isValid()}
    if not layer.isValid():
        report["error"] = layer.error().summary()
        return report
    provider = layer.dataProvider()
    bands = []
    for band in range(1, layer.bandCount() + 1):
        bands.append(
            {
                "name": layer.bandName(band),
                "color_interpretation": provider.colorInterpretationName(band),
                "has_nodata": bool(provider.sourceHasNoDataValue(band)),
                "nodata": provider.sourceNoDataValue(band)
                if provider.sourceHasNoDataValue(band)
                else None,
                "scale": provider.bandScale(band),
                "offset": provider.bandOffset(band),
            }
        )
    stats = provider.bandStatistics(1, QgsRasterBandStats.All, layer.extent(), 0)
    sidecar = Path(path).with_suffix(".qml")
    report |= {
        "crs": layer.crs().authid(),
        "width": layer.width(),
        "height": layer.height(),
        "band_count": layer.bandCount(),
        "bands": bands,
        "renderer": layer.renderer().type() if layer.renderer() else None,
        "sidecar_qml": str(sidecar) if sidecar.exists() else None,
        "stats": {
            "min": stats.minimumValue,
            "max": stats.maximumValue,
            "mean": stats.mean,
            "std": stats.stdDev,
            "count": stats.elementCount,
        },
    }
    return report


# --- rendering ------------------------------------------------------------------------------------

RGB_NAMES = ("red", "green", "blue")


def _scene_layer(path: str) -> QgsRasterLayer:
    """A scene as true colour when its bands are named red/green/blue, else QGIS's default."""
    layer = QgsRasterLayer(path, Path(path).stem, "gdal")
    names = [layer.bandName(b).lower() for b in range(1, layer.bandCount() + 1)]
    found = [next((i + 1 for i, n in enumerate(names) if c in n), None) for c in RGB_NAMES]
    if all(found):
        renderer = QgsMultiBandColorRenderer(layer.dataProvider(), *found)
        layer.setRenderer(renderer)
        layer.setDefaultContrastEnhancement()
    return layer


def fallback_probability_style(layer: QgsRasterLayer) -> None:
    """Band 1 as a transparent-to-orange ramp at 60 % opacity: only where rs_seg wrote no
    sidecar style (QGIS's own default would draw grey, or RGB from two bands and a mask)."""
    provider = layer.dataProvider()
    scale, offset = provider.bandScale(1), provider.bandOffset(1)
    ramp = QgsColorRampShader(offset, 255 * scale + offset)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    ramp.setColorRampItemList(
        [
            QgsColorRampShader.ColorRampItem(offset, QColor(255, 255, 255, 0)),
            QgsColorRampShader.ColorRampItem(255 * scale + offset, QColor(255, 120, 0, 255)),
        ]
    )
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    layer.setRenderer(QgsSingleBandPseudoColorRenderer(provider, 1, shader))
    layer.setOpacity(0.6)


def pixels(image: QImage) -> np.ndarray:
    """The image's ARGB32 pixels as a (height, width) uint32 array."""
    image = image.convertToFormat(QImage.Format_ARGB32)
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    rows = np.frombuffer(bytes(bits), np.uint32).reshape(image.height(), -1)
    return rows[:, : image.width()]


def _render(settings: QgsMapSettings) -> QImage:
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def render(spec: dict[str, Any]) -> dict[str, Any]:
    """Scenes, probability rasters and field layers (drawn in that order) to ``spec["out"]``.

    The probability rasters keep their loaded style (a sidecar QML when present), else get
    ``fallback_probability_style``. The map covers the scenes' extent (or ``spec["extent"]``).
    The report compares the image with a render without the field layers: how many pixels the
    fields drew, how many of them lie outside the fields' extent, and whether the outline of
    each sampled field (its first vertex) was drawn.
    """
    scenes = [_scene_layer(p) for p in spec.get("scenes", [])]
    probs = [QgsRasterLayer(p, Path(p).stem, "gdal") for p in spec.get("probs", [])]
    for prob in probs:
        if not Path(prob.source()).with_suffix(".qml").exists():
            fallback_probability_style(prob)
    fields = [
        QgsVectorLayer(f"{f['path']}|layername={f.get('layer', 'fields')}", "fields", "ogr")
        for f in spec.get("fields", [])
    ]
    layers = [*fields, *probs, *scenes]  # QgsMapSettings: first is on top
    invalid = [layer.source() for layer in layers if not layer.isValid()]
    if invalid or not scenes:
        return {"ok": False, "error": f"invalid layers: {invalid}" if invalid else "no scene"}
    crs = scenes[0].crs()
    project = QgsProject.instance()
    extent = (
        QgsRectangle(*spec["extent"]) if spec.get("extent") else QgsRectangle(scenes[0].extent())
    )
    if not spec.get("extent"):
        for scene in scenes[1:]:
            extent.combineExtentWith(
                QgsCoordinateTransform(scene.crs(), crs, project).transformBoundingBox(
                    scene.extent()
                )
            )
    fields_extent = QgsRectangle()
    fields_extent.setMinimal()
    for layer in fields:
        fields_extent.combineExtentWith(
            QgsCoordinateTransform(layer.crs(), crs, project).transformBoundingBox(layer.extent())
        )
    width = int(spec.get("width", 1200))
    height = max(1, round(width * extent.height() / extent.width()))
    settings = QgsMapSettings()
    settings.setDestinationCrs(crs)
    settings.setOutputSize(QSize(width, height))
    settings.setExtent(extent)
    settings.setBackgroundColor(QColor(255, 255, 255))
    settings.setLayers(layers)
    image = _render(settings)
    out = Path(spec["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = image.save(str(out), "PNG")
    base = QgsMapSettings(settings)
    base.setLayers([*probs, *scenes])
    without = _render(base)
    to_pixel = settings.mapToPixel()
    changed = pixels(image) != pixels(without)  # what the field layers drew
    margin = int(spec.get("margin_px", 8))  # line widths and label halos reach past the extent
    corner_a = to_pixel.transform(fields_extent.xMinimum(), fields_extent.yMaximum())
    corner_b = to_pixel.transform(fields_extent.xMaximum(), fields_extent.yMinimum())
    inside = np.zeros_like(changed)
    if not fields_extent.isEmpty():
        inside[
            max(0, int(corner_a.y()) - margin) : int(corner_b.y()) + margin + 1,
            max(0, int(corner_a.x()) - margin) : int(corner_b.x()) + margin + 1,
        ] = True
    samples, drawn, radius = 0, 0, int(spec.get("sample_radius_px", 3))
    for layer in fields:
        transform = QgsCoordinateTransform(layer.crs(), crs, project)
        for feature in layer.getFeatures():
            if samples >= spec.get("samples", 200):
                break
            geometry = feature.geometry()
            geometry.transform(transform)
            # a point of the outline: drawn by fill and outline-only styles alike
            pixel = to_pixel.transform(geometry.vertexAt(0).x(), geometry.vertexAt(0).y())
            x, y = int(pixel.x()), int(pixel.y())
            if not (0 <= x < image.width() and 0 <= y < image.height()):
                continue
            samples += 1
            drawn += bool(changed[max(0, y - radius) : y + radius + 1,
                                  max(0, x - radius) : x + radius + 1].any())  # fmt: skip
    colours = np.unique(pixels(image)[::7, ::7]).size
    return {
        "ok": bool(saved),
        "out": str(out),
        "size": [image.width(), image.height()],
        "scene_extent": [
            extent.xMinimum(),
            extent.yMinimum(),
            extent.xMaximum(),
            extent.yMaximum(),
        ],
        "fields_extent": None
        if fields_extent.isEmpty()
        else [
            fields_extent.xMinimum(),
            fields_extent.yMinimum(),
            fields_extent.xMaximum(),
            fields_extent.yMaximum(),
        ],
        "fields_inside_scene": bool(extent.contains(fields_extent)),
        "field_samples": samples,
        "field_samples_drawn": drawn,
        "pixels_drawn_by_fields": int(changed.sum()),
        "pixels_drawn_outside_fields_extent": int((changed & ~inside).sum()),
        "distinct_colours": int(colours),
        "prob_renderers": [p.renderer().type() for p in probs],
    }


def start_qgis(profile: str | None = None) -> QgsApplication:
    """A headless QgsApplication with a throw-away profile (nothing written to $HOME)."""
    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], False, profile or tempfile.mkdtemp(prefix="qgis-profile-"))
    app.initQgis()
    return app


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    app = start_qgis(spec.get("profile"))
    try:
        report = {
            "qgis_version": Qgis.version(),
            "vectors": {
                n: vector_report(v["path"], v.get("layer", "fields"))
                for n, v in spec.get("vectors", {}).items()
            },
            "rasters": {n: raster_report(r["path"]) for n, r in spec.get("rasters", {}).items()},
            "renders": [render(r) for r in spec.get("renders", [])],
        }
        # Printed before exitQgis: a crash while Qt tears down must not lose the report.
        print("QGIS_REPORT " + json.dumps(report), flush=True)
    finally:
        app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
