"""rs_seg.config: the YAML sections a training run reads."""

from __future__ import annotations

import pytest

from rs_seg.config import TrainConfig
from rs_seg.config_files import load_training_configs
from rs_seg.errors import RsSegError


def test_config_file_sections_and_generated_scenes(tmp_path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("train:\n  epochs: 2\n")
    assert load_training_configs(plain)[0].epochs == 2 and load_training_configs(plain)[1] is None
    demo = tmp_path / "demo.yaml"
    demo.write_text(
        f"synth: {{out: {tmp_path / 'synth'}, size: 64, bands: 3, seed: 1}}\n"
        f"prepare: {{out: {tmp_path / 'chips'}, chip_size: 32}}\n"
    )
    train, prepare, synth = load_training_configs(demo)
    assert train == TrainConfig() and prepare is not None
    assert synth is not None and synth.out == tmp_path / "synth"
    assert prepare.scenes == [str(tmp_path / "synth" / "scenes" / "*.tif")]
    assert prepare.labels == tmp_path / "synth" / "fields.gpkg"
    assert not (tmp_path / "synth").exists(), "reading a config generates nothing"
    given = tmp_path / "given.yaml"
    given.write_text("synth: {size: 64}\nprepare: {scenes: [a.tif], labels: l.gpkg}\n")
    assert load_training_configs(given)[2] is None, "synth only fills a prepare without scenes"


def test_new_imagery_maps_with_the_settings_of_rs_seg_infer(tmp_path) -> None:
    from pathlib import Path

    from rs_seg.config import IncomingConfig, InferConfig, InferOptions
    from rs_seg.config_files import build_config

    nested = tmp_path / "nested.yaml"
    nested.write_text(
        "incoming:\n  incoming: inbox\n  infer: {model: m.pt, tta: true, threshold: 0.4}\n"
    )
    config = build_config(IncomingConfig, "incoming", nested, {})
    assert config.infer == InferOptions(model=Path("m.pt"), tta=True, threshold=0.4)
    scene = config.infer.for_scene(Path("s.tif"), Path("o/fields.gpkg"), Path("new.pt"))
    assert scene == InferConfig(
        scene=Path("s.tif"), out=Path("o/fields.gpkg"), model=Path("new.pt"), tta=True,
        threshold=0.4,
    )  # fmt: skip
    assert IncomingConfig(incoming="x").infer == InferOptions(), "defaults of rs-seg infer"
    top = tmp_path / "top.yaml"  # the settings of rs-seg infer live under infer: only
    top.write_text("incoming:\n  incoming: inbox\n  tta: true\n")
    with pytest.raises(RsSegError, match="tta: Extra inputs are not permitted"):
        build_config(IncomingConfig, "incoming", top, {})


def test_shipped_configs_validate_against_the_schema() -> None:
    """Every section of configs/*.yaml is a valid config (so no YAML states a range the schema
    refuses, such as an overlap of 0.95)."""
    from pathlib import Path

    from rs_seg.config import IncomingConfig
    from rs_seg.config_files import build_config, read_yaml

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    sections = set()
    for path in files:
        raw = read_yaml(path)
        sections |= raw.keys()
        if "train" in raw:  # with its prepare: and synth: sections
            load_training_configs(path)
        if "incoming" in raw:
            build_config(IncomingConfig, "incoming", path, {})
    assert sections == {"synth", "prepare", "train", "incoming"}


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"overlap": 0.9}, None),
        ({"overlap": 0.91}, "overlap: Input should be less than or equal to 0.9"),
        ({"overlap": 0.99}, "overlap"),
        ({"workers": 64}, None),
        ({"workers": 100_000}, "workers: Input should be less than or equal to 64"),
        ({"window": 15}, "window"),
    ],
)
def test_window_settings_that_would_hang_or_exhaust_the_machine_are_refused(
    tmp_path, settings: dict, refused: str | None
) -> None:
    """A 0.99 overlap is a one-pixel stride (a hang); 100 000 workers ran out of file handles."""
    from rs_seg.config import IncomingConfig
    from rs_seg.config_files import build_config

    path = tmp_path / "incoming.yaml"
    path.write_text("incoming:\n  incoming: inbox\n  infer: " + str(settings) + "\n")
    if refused is None:
        assert (
            build_config(IncomingConfig, "incoming", path, {}).infer.model_dump(
                include=set(settings)
            )
            == settings
        )
        return
    with pytest.raises(RsSegError, match=refused) as error:
        build_config(IncomingConfig, "incoming", path, {})
    assert "\n" not in str(error.value) and str(path) in str(error.value)
