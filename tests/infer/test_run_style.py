"""QGIS style sidecars: ``rs-seg infer`` publishes ``<raster stem>.qml`` beside each raster with the
rest of the run, and ``--overwrite`` replaces only a style rs_seg wrote."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rs_seg.config import InferConfig
from rs_seg.errors import RsSegError
from rs_seg.infer.run import run_infer
from rs_seg.staging import STYLE_MARKER, style_written_by_rs_seg
from tests.helpers import FunctionPredictor, digest, hidden_leftovers, make_bundle, write_scene

# What QGIS writes on "Save as Default" for a raster layer: its own QML, no rs_seg marker.
QGIS_SAVED_STYLE = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.4-Białowieża" styleCategories="AllStyleCategories">
  <pipe><rasterrenderer type="singlebandgray" band="1" opacity="0.8"/></pipe>
</qgis>
"""


def pointwise(model: FunctionPredictor, batch: np.ndarray) -> np.ndarray:
    extent = 1 / (1 + np.exp(-batch[:, :1]))
    return np.concatenate([extent, 1 - extent], axis=1)[:, : model.bundle.outputs]


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "model-bundle.pt")


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "s.tif", 96, 80, nodata_cols=4)


def infer(
    tmp_path: Path,
    scene: Path,
    bundle: Path,
    model: Callable[[FunctionPredictor, np.ndarray], np.ndarray] = pointwise,
    **kwargs: object,
):
    """``rs-seg infer`` of ``scene`` with ``model`` (a ``FunctionPredictor`` function)."""
    cfg = InferConfig(scene=scene, out=tmp_path / "fields.gpkg", model=bundle, device="cpu",
                      min_area=0, **kwargs)  # fmt: skip
    return run_infer(cfg, predictor=FunctionPredictor(bundle, model))


def ramp(style: Path) -> list[tuple[float, int]]:
    """(value, alpha) of the pseudocolor items on band 1, checking the renderer around them."""
    root = ET.parse(style).getroot()
    assert root.tag == "qgis"
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "singlebandpseudocolor"
    assert renderer.get("band") == "1" and renderer.get("nodataColor") == ""
    assert renderer.findtext("minMaxOrigin/limits") == "None", "QGIS keeps the 0-1 range"
    shader = renderer.find("rastershader/colorrampshader")
    assert shader is not None and shader.get("colorRampType") == "INTERPOLATED"
    assert (shader.get("minimumValue"), shader.get("maximumValue")) == ("0", "1")
    return [(float(i.get("value", "nan")), int(i.get("alpha", "-1"))) for i in shader.iter("item")]


def test_probability_style_ramps_over_probabilities_transparent_when_low(
    tmp_path, scene, bundle_path
) -> None:
    summary = infer(tmp_path, scene, bundle_path)
    style = tmp_path / "fields_prob.qml"
    assert summary.styles == (style,) and style.exists() and style_written_by_rs_seg(style)
    items = ramp(style)
    values = [value for value, _ in items]
    assert values == sorted(values) and values[0] == 0 and values[-1] == 1, "scaled 0-1, not 0-255"
    assert all(alpha == 0 for value, alpha in items if value <= 0.3)
    above = [alpha for value, alpha in items if value > 0.3]
    assert above == sorted(above) and above[0] > 0 and 128 <= above[-1] < 255, "imagery shows"
    with rasterio.open(summary.prob) as src:
        run_id = src.tags()["run_id"]
    assert f"<!-- rs_seg run_id: {run_id} -->" in style.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fields.gpkg", "fields_prob.qml", "fields_prob.tif", "s.tif",
    ]  # fmt: skip


def test_mask_gets_a_palette_style(tmp_path, scene, bundle_path) -> None:
    summary = infer(tmp_path, scene, bundle_path, mask_out=tmp_path / "mask.tif")
    style = tmp_path / "mask.qml"
    assert summary.styles == (tmp_path / "fields_prob.qml", style)
    renderer = ET.parse(style).getroot().find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted"
    entries = {e.get("value"): e.get("label") for e in renderer.iter("paletteEntry")}
    assert entries == {"0": "background (0)", "1": "cropland (1)"}
    assert style_written_by_rs_seg(style) and hidden_leftovers(tmp_path) == []
    assert "QGIS styles:" in summary.report()


def test_overwrite_replaces_an_rs_seg_style(tmp_path, scene, bundle_path) -> None:
    infer(tmp_path, scene, bundle_path)
    style = tmp_path / "fields_prob.qml"
    first = style.read_text(encoding="utf-8")
    with pytest.raises(RsSegError, match="--overwrite"):
        infer(tmp_path, scene, bundle_path)
    infer(tmp_path, scene, bundle_path, overwrite=True)
    second = style.read_text(encoding="utf-8")
    assert second != first and style_written_by_rs_seg(style), "a new run id, still rs_seg's"
    assert first.split("-->", 1)[1] == second.split("-->", 1)[1], "the same style otherwise"


def test_a_style_saved_from_qgis_is_never_replaced(tmp_path, scene, bundle_path) -> None:
    infer(tmp_path, scene, bundle_path)
    style = tmp_path / "fields_prob.qml"
    style.write_text(QGIS_SAVED_STYLE, encoding="utf-8")
    before = digest(tmp_path)
    with pytest.raises(RsSegError, match=r"fields_prob\.qml: was not written by rs-seg"):
        infer(tmp_path, scene, bundle_path, overwrite=True)
    assert digest(tmp_path) == before, "refused before any work: nothing changed"


def test_a_lone_style_at_the_sidecar_path_needs_overwrite(tmp_path, scene, bundle_path) -> None:
    (tmp_path / "fields_prob.qml").write_text(QGIS_SAVED_STYLE, encoding="utf-8")
    with pytest.raises(RsSegError, match=r"fields_prob\.qml: output already exists"):
        infer(tmp_path, scene, bundle_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fields_prob.qml", "s.tif"]


def test_a_failed_run_leaves_no_style(tmp_path, scene, bundle_path) -> None:
    def broken(model: FunctionPredictor, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        infer(tmp_path, scene, bundle_path, broken, mask_out=tmp_path / "mask.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


@pytest.mark.parametrize("name", ["probability.qml", "mask.qml"])
def test_shipped_styles_are_packaged_valid_xml_with_the_marker(name: str, tmp_path) -> None:
    shipped = resources.files("rs_seg.styles").joinpath(name)
    text = shipped.read_text(encoding="utf-8")
    assert ET.fromstring(text.encode()).tag == "qgis"
    assert STYLE_MARKER in text[:4096]
    copy = tmp_path / name
    copy.write_text(text, encoding="utf-8")
    assert style_written_by_rs_seg(copy)


def test_style_recognizer_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "qgis.qml").write_text(QGIS_SAVED_STYLE, encoding="utf-8")
    (tmp_path / "binary.qml").write_bytes(bytes(range(256)) * 64)
    assert not style_written_by_rs_seg(tmp_path / "qgis.qml")
    assert not style_written_by_rs_seg(tmp_path / "binary.qml")
    assert not style_written_by_rs_seg(tmp_path / "missing.qml")
    assert not style_written_by_rs_seg(tmp_path)  # a folder
