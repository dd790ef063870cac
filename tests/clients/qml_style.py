"""QGIS styles read without QGIS (stdlib only): the expectations the client checks compare with.

Imported by ``qgis_check.py`` under the system Python and by the tests in the venv, so what a
test expects comes from the style rs_seg ships and stores, never from a copy in the tests.
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def stored_styles(gpkg: str, layer: str) -> list[dict[str, Any]]:
    """Rows of the GeoPackage's ``layer_styles`` table for ``layer`` (none: no table)."""
    connection = sqlite3.connect(f"file:{gpkg}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        if "layer_styles" not in tables:
            return []
        rows = connection.execute(
            "SELECT styleName, useAsDefault, styleQML FROM layer_styles WHERE f_table_name = ?",
            (layer,),
        ).fetchall()
    finally:
        connection.close()
    return [{"name": n, "default": bool(d), "qml": q} for n, d, q in rows]


def rgba(text: str | None) -> list[int] | None:
    """QML colour text ("r,g,b,a", newer QGIS adds ",rgb:..." after it) as [r, g, b, a]."""
    if not text:
        return None
    parts = text.split(",")
    return [int(float(p)) for p in parts[:4]]


def _symbol_layer_options(layer: ET.Element) -> dict[str, str]:
    options = {p.get("k", ""): p.get("v", "") for p in layer.findall("prop")}
    for option in layer.findall("./Option/Option"):
        if option.get("name") and option.get("value") is not None:
            options[option.get("name", "")] = option.get("value", "")
    return options


def _symbol_order(symbol: ET.Element) -> tuple[int, str]:
    name = symbol.get("name", "")
    return (int(name), name) if name.isdigit() else (1 << 30, name)


def qml_expectations(qml: str) -> dict[str, Any]:
    """What a QML vector style sets: renderer, each symbol layer's class and colours (in drawing
    order), labels, aliases, display expression and map tip."""
    root = ET.fromstring(qml)
    renderer = root.find("renderer-v2")
    symbol_layers = []
    if renderer is not None:
        for symbol in sorted(renderer.findall("./symbols/symbol"), key=_symbol_order):
            for layer in symbol.findall("layer"):
                options = _symbol_layer_options(layer)
                symbol_layers.append(
                    {
                        "class": layer.get("class"),
                        # fills and markers: color (+ outline_color); lines: line_color
                        "color": rgba(options.get("color") or options.get("line_color")),
                        "stroke_color": rgba(options.get("outline_color")),
                    }
                )
    labeling = root.find("labeling")
    text_style = root.find("./labeling/settings/text-style")
    aliases = {
        a.get("field"): a.get("name") for a in root.findall("./aliases/alias") if a.get("name")
    }
    preview, map_tip = root.find("previewExpression"), root.find("mapTip")
    return {
        "renderer": renderer.get("type") if renderer is not None else None,
        "symbol_layers": symbol_layers,
        "labels_enabled": root.get("labelsEnabled") == "1",
        "labeling": labeling.get("type") if labeling is not None else None,
        "label_expression": text_style.get("fieldName") if text_style is not None else None,
        "aliases": aliases,
        "display_expression": (preview.text or "") if preview is not None else None,
        "map_tip": (map_tip.text or "") if map_tip is not None else None,
    }


def raster_renderer(qml: str) -> str | None:
    """The renderer type a raster QML sets (``<pipe><rasterrenderer type=...>``)."""
    renderer = ET.fromstring(qml).find("./pipe/rasterrenderer")
    return renderer.get("type") if renderer is not None else None


def read_qml(path: Path) -> str:
    return Path(path).read_text(encoding="utf-8")
