"""The model registry: storing bundles, moving ``latest`` only for models that earn it.

Bundles are built directly from an untrained network with made-up metrics, so no test trains;
each model's weights differ in one bias, so each has its own weight hash (its model id).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from rs_seg.config import ModelConfig, PrepareConfig, SplitConfig
from rs_seg.errors import RsSegError
from rs_seg.model.bundle import BUNDLE_FILE, ModelBundle, weights_id
from rs_seg.model.latest import LATEST_FILE, latest_bundle
from rs_seg.model.networks import build_model
from rs_seg.model.normalization import Normalization
from rs_seg.ops.registry import LOG_FILE, list_models, register
from rs_seg.prepare.run import prepare
from rs_seg.train.dataset import load_chip_splits
from tests.helpers import digest, pixel_box, write_labels, write_scene

# a small network (2.2 M parameters): bundles are copied, hashed and read again in every test
MODEL = ModelConfig(arch="Unet", encoder="tu-mobilenetv3_small_050")


@pytest.fixture(scope="module")
def weights() -> dict:
    return build_model(MODEL, in_channels=3, load_weights=False).state_dict()


def variant(weights: dict, name: str) -> dict:
    """The same network with its output bias set from ``name``: another model, another id."""
    key = "segmentation_head.0.bias"
    value = int(hashlib.sha256(name.encode()).hexdigest()[:6], 16) / 1e6
    return {**weights, key: torch.full_like(weights[key], value)}


def model_id(weights: dict, name: str) -> str:
    """The id of the model :func:`make_bundle` builds under ``name`` (3 bands)."""
    return weights_id(variant(weights, name))


def make_bundle(
    path: Path,
    weights: dict,
    name: str,
    score: float,
    fingerprint: str = "fp-a",
    chips_dir: Path | None = None,
    bands: int = 3,
) -> Path:
    """A bundle with fixed test metrics; ``name`` picks its weights (:func:`variant`)."""
    test = {"mean_iou": score, "cropland_iou": score, "chips": 2}
    state = variant(weights if bands == 3 else build_model(MODEL, bands, False).state_dict(), name)
    bundle = ModelBundle(
        model=MODEL,
        bands=list(range(1, bands + 1)),
        band_names=[f"band_{b}" for b in range(1, bands + 1)],
        normalization=Normalization((2000.0,) * bands, (1000.0,) * bands),
        chip_size=32,
        threshold=0.5,
        metrics={"validation": test, "test": test},
        provenance={
            "model_id": weights_id(state),
            "chip_index_fingerprint": fingerprint,
            "chips_dir": str(chips_dir) if chips_dir else None,
        },
        state_dict=state,
    )
    return bundle.save(path)


def latest(models: Path) -> dict:
    return json.loads((models / LATEST_FILE).read_text())


def decisions(models: Path) -> list[dict]:
    return [json.loads(line) for line in (models / LOG_FILE).read_text().splitlines()]


@pytest.fixture
def ids(weights) -> Ids:
    return Ids(weights)


class Ids:
    """``ids["m-a"]``: the model id of the bundle :func:`make_bundle` builds as ``m-a``."""

    def __init__(self, weights: dict) -> None:
        self.weights = weights

    def __getitem__(self, name: str) -> str:
        return model_id(self.weights, name)


def test_first_model_becomes_latest(tmp_path, weights, ids) -> None:
    models = tmp_path / "models"
    a = ids["m-a"]
    reg = register(make_bundle(tmp_path / "a.pt", weights, "m-a", 0.7), models)
    assert reg.promoted and reg.incumbent is None and reg.reason == "first registered model"
    assert reg.model_id == a and len(a) == 12
    assert reg.bundle == models / a / BUNDLE_FILE and reg.bundle.is_file()
    pointer = latest(models)
    assert pointer["model_id"] == a and pointer["bundle"] == f"{a}/{BUNDLE_FILE}"
    assert pointer["metric"] == "mean_iou" and pointer["score"] == 0.7
    assert pointer["chip_index_fingerprint"] == "fp-a" and pointer["promoted_at"]
    assert latest_bundle(models) == models / a / BUNDLE_FILE
    assert json.loads((models / a / "metrics.json").read_text())["model_id"] == a


def test_same_split_moves_latest_only_for_an_equal_or_better_model(tmp_path, weights, ids) -> None:
    models = tmp_path / "models"
    register(make_bundle(tmp_path / "a.pt", weights, "m-a", 0.7), models)
    worse = register(make_bundle(tmp_path / "b.pt", weights, "m-b", 0.6), models)
    assert not worse.promoted and worse.incumbent == ids["m-a"] and worse.incumbent_score == 0.7
    assert "0.6000 < 0.7000" in worse.reason and "same test split" in worse.reason
    assert latest(models)["model_id"] == ids["m-a"]
    stored = models / ids["m-b"] / BUNDLE_FILE
    assert stored.is_file(), "a model that is not promoted is still stored"
    equal = register(make_bundle(tmp_path / "c.pt", weights, "m-c", 0.7), models)
    assert equal.promoted and latest(models)["model_id"] == ids["m-c"]
    better = register(make_bundle(tmp_path / "d.pt", weights, "m-d", 0.8), models)
    assert better.promoted and better.incumbent == ids["m-c"]
    assert [d["promoted"] for d in decisions(models)] == [True, False, True, True]
    names = ["m-a", "m-b", "m-c", "m-d"]
    assert [d["model_id"] for d in decisions(models)] == [ids[name] for name in names]
    assert decisions(models)[1]["incumbent_score"] == 0.7


def test_promote_always_and_never(tmp_path, weights, ids) -> None:
    models = tmp_path / "models"
    register(make_bundle(tmp_path / "a.pt", weights, "m-a", 0.7), models)
    forced = register(make_bundle(tmp_path / "b.pt", weights, "m-b", 0.1), models, "always")
    assert forced.promoted and "always" in forced.reason
    assert latest(models)["model_id"] == ids["m-b"]
    kept = register(make_bundle(tmp_path / "c.pt", weights, "m-c", 0.9), models, "never")
    assert not kept.promoted and "never" in kept.reason
    assert latest(models)["model_id"] == ids["m-b"]
    assert {m["model_id"]: m["latest"] for m in list_models(models)} == {
        ids["m-a"]: False,
        ids["m-b"]: True,
        ids["m-c"]: False,
    }


def test_registering_twice_is_idempotent(tmp_path, weights, ids) -> None:
    models = tmp_path / "models"
    bundle = make_bundle(tmp_path / "a.pt", weights, "m-a", 0.7)
    first = register(bundle, models)
    again = register(bundle, models)
    assert again.bundle == first.bundle and not again.promoted
    assert again.reason == "already the latest model"
    assert sorted(p.name for p in models.iterdir() if p.is_dir()) == [ids["m-a"]]
    assert len(decisions(models)) == 2
    assert len(list_models(models)) == 1


def evaluated_run(tmp_path: Path, weights, ids) -> Path:
    """A run folder as evaluation leaves it: bundle, metrics and a report."""
    run = tmp_path / "runs" / "r1"
    make_bundle(run / BUNDLE_FILE, weights, "m-run", 0.5)
    (run / "metrics.json").write_text(json.dumps({"model_id": ids["m-run"], "threshold": 0.4}))
    (run / "report").mkdir()
    (run / "report" / "README.md").write_text("# report\n")
    return run


def test_a_run_folder_brings_its_metrics_and_report(tmp_path, weights, ids) -> None:
    run = evaluated_run(tmp_path, weights, ids)
    reg = register(run, tmp_path / "models", metric="cropland_iou")
    stored = reg.bundle.parent
    assert json.loads((stored / "metrics.json").read_text())["threshold"] == 0.4
    assert (stored / "report" / "README.md").read_text() == "# report\n"
    assert latest(tmp_path / "models")["metric"] == "cropland_iou"


def test_links_in_a_runs_report_are_not_copied_into_the_registry(tmp_path, weights, ids) -> None:
    run = evaluated_run(tmp_path, weights, ids)
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "key.txt").write_text("a secret of the user")
    (run / "report" / "figure.png").symlink_to(tmp_path / "private" / "key.txt")
    (run / "report" / "more").symlink_to(tmp_path / "private")
    stored = register(run, tmp_path / "models").bundle.parent / "report"
    assert sorted(p.name for p in stored.iterdir()) == ["README.md"]


def test_missing_things_give_one_line_errors(tmp_path, weights) -> None:
    empty = tmp_path / "models"
    with pytest.raises(RsSegError, match="no registered model; train one") as info:
        latest_bundle(empty)
    assert str(empty) in str(info.value)
    assert list_models(empty) == []
    with pytest.raises(RsSegError, match="evaluate the run first"):
        register(tmp_path, empty)
    bundle = make_bundle(tmp_path / "a.pt", weights, "m-a", 0.7)
    with pytest.raises(RsSegError, match="no test metric 'dice'"):
        register(bundle, empty, metric="dice")


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> tuple[Path, str]:
    """A tiny chip folder (25 chips of 32 px, one block each) and its index fingerprint.

    160 px rather than 128: the test split must hold more than one chip, because
    ``evaluation.score_split`` cannot yet score a batch of a single chip.
    """
    root = tmp_path_factory.mktemp("chips")
    scene = write_scene(root / "scene.tif", 160, 160)
    labels = write_labels(
        root / "fields.gpkg", [pixel_box(8, 8, 70, 90), pixel_box(90, 0, 128, 50)]
    )
    cfg = PrepareConfig(
        scenes=[str(scene)],
        labels=labels,
        out=root / "chips",
        chip_size=32,
        split=SplitConfig(block_chips=1),
    )
    prepare(cfg)
    return cfg.out, load_chip_splits(cfg.out).fingerprint


def test_another_split_rescores_the_incumbent_on_the_new_test_split(
    tmp_path, weights, chips, ids
) -> None:
    chips_dir, fingerprint = chips
    models = tmp_path / "models"
    register(make_bundle(tmp_path / "old.pt", weights, "m-old", 0.99, "fp-old"), models)
    worse = make_bundle(tmp_path / "w.pt", weights, "m-w", 0.0, fingerprint, chips_dir)
    reg = register(worse, models)
    assert reg.incumbent_score is not None and 0 < reg.incumbent_score <= 1
    assert not reg.promoted and "re-scored" in reg.reason
    better = make_bundle(tmp_path / "b.pt", weights, "m-b", 1.0, fingerprint, chips_dir)
    reg = register(better, models)
    assert reg.promoted and reg.incumbent == ids["m-old"]
    assert latest(models)["model_id"] == ids["m-b"]


def test_an_incumbent_that_cannot_read_the_new_chips_is_not_replaced(
    tmp_path, weights, chips
) -> None:
    chips_dir, fingerprint = chips
    models = tmp_path / "models"
    four_bands = make_bundle(tmp_path / "old.pt", weights, "m-old", 0.5, "fp-old", bands=4)
    register(four_bands, models)
    new = make_bundle(tmp_path / "n.pt", weights, "m-n", 0.9, fingerprint, chips_dir)
    reg = register(new, models)
    assert not reg.promoted and "cannot be scored" in reg.reason and "bands" in reg.reason
    assert "promote='always'" in reg.reason
    assert latest(models)["model_id"] == ModelBundle.load(four_bands).model_id
    stale = make_bundle(tmp_path / "s.pt", weights, "m-s", 0.9, "fp-other", chips_dir)
    reg = register(stale, models)
    assert not reg.promoted and "re-prepared" in reg.reason


# --- hostile bundles and registry files (issue 27): nothing read from a file becomes a path ----


def registered(tmp_path: Path, weights: dict) -> tuple[Path, dict[str, str]]:
    """A models folder holding one registered model, and the digest of everything beside it."""
    models = tmp_path / "models"
    register(make_bundle(tmp_path / "a.pt", weights, "m-a", 0.7), models)
    user = tmp_path / "user"
    (user / "thesis").mkdir(parents=True)
    (user / "thesis" / "chapter1.md").write_text("years of work\n")
    (user / "notes.txt").write_text("keep me\n")
    return models, digest(tmp_path)


def hostile(path: Path, weights: dict, claimed: str, name: str = "m-h") -> Path:
    """A bundle whose provenance claims ``claimed`` as its model id."""
    saved = make_bundle(path, weights, name, 0.9)
    payload = torch.load(saved, weights_only=True)
    payload["meta"]["provenance"]["model_id"] = claimed
    torch.save(payload, saved)
    return saved


@pytest.mark.parametrize("claimed", ["ABSOLUTE", "../user", "../../x", ".", "..", ""])
def test_a_model_id_that_is_a_path_never_names_a_folder(tmp_path, weights, claimed) -> None:
    """Registering used ``models_dir / model_id``: an absolute id, ``..`` or ``.`` replaced a
    user's folder, or the whole registry, with the new model."""
    models, before = registered(tmp_path, weights)
    claimed = str(tmp_path / "user") if claimed == "ABSOLUTE" else claimed
    bundle = hostile(tmp_path / "evil" / "h.pt", weights, claimed)
    before = digest(tmp_path)
    with pytest.raises(RsSegError, match=r"provenance\.model_id: String should match") as caught:
        register(bundle, models)
    assert str(bundle) in str(caught.value) and "\n" not in str(caught.value)
    assert digest(tmp_path) == before


def test_a_bundle_claiming_another_models_id_is_refused(tmp_path, weights, ids) -> None:
    """A well-formed id that is not the hash of the bundle's own weights would take the place of
    the model that has it (its folder, the latest pointer)."""
    models, _ = registered(tmp_path, weights)
    before = digest(tmp_path)
    bundle = hostile(tmp_path / "h.pt", weights, ids["m-a"], name="m-other")
    with pytest.raises(RsSegError, match=rf"claims model id '{ids['m-a']}', but its weights hash"):
        register(bundle, models)
    assert digest(tmp_path) == {**before, "h.pt": digest(bundle)["h.pt"]}


def test_only_an_incomplete_model_folder_is_replaced(tmp_path, weights, ids) -> None:
    models, _ = registered(tmp_path, weights)
    folder = models / ids["m-b"]
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")  # a copy cut short: metrics, no bundle
    reg = register(make_bundle(tmp_path / "b.pt", weights, "m-b", 0.1), models)
    assert reg.bundle == folder / BUNDLE_FILE and reg.bundle.is_file()
    assert json.loads((folder / "metrics.json").read_text())["model_id"] == ids["m-b"]

    theirs = models / ids["m-c"]
    theirs.mkdir()
    (theirs / "metrics.json").write_text("{}")
    (theirs / "mine.txt").write_text("a user's file\n")
    with pytest.raises(RsSegError, match=r"holds 'mine.txt', so it is not a model folder"):
        register(make_bundle(tmp_path / "c.pt", weights, "m-c", 0.1), models)
    assert (theirs / "mine.txt").read_text() == "a user's file\n"

    (models / ids["m-d"]).symlink_to(tmp_path / "user", target_is_directory=True)
    before = digest(tmp_path / "user")
    with pytest.raises(RsSegError, match="is in the way of the model of that id"):
        register(make_bundle(tmp_path / "d.pt", weights, "m-d", 0.1), models)
    assert digest(tmp_path / "user") == before and (models / ids["m-d"]).is_symlink()


@pytest.fixture(scope="module")
def new_bundle(tmp_path_factory, weights) -> Path:
    """A bundle to register (read only), beside an empty file as the lock file's digest."""
    folder = tmp_path_factory.mktemp("new")
    (folder / "lock").touch()
    return make_bundle(folder / "b.pt", weights, "m-b", 0.9)


def _pointer(**changes: object) -> dict:
    entry = {
        "model_id": "0123456789ab", "bundle": f"0123456789ab/{BUNDLE_FILE}", "metric": "mean_iou",
        "score": 0.5, "chip_index_fingerprint": "fp-a", "promoted_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip
    entry.update(changes)
    return {k: v for k, v in entry.items() if v != "DROP"}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "is not a latest-model pointer (Input should be a valid dictionary"),
        (json.dumps(_pointer(bundle="DROP")).encode(), "(bundle: Field required)"),
        (json.dumps(_pointer(score="high")).encode(), "(score: Input should be a valid number"),
        (json.dumps(_pointer(model_id=7)).encode(), "model_id: Input should be a valid string"),
        (json.dumps(_pointer(model_id="../user")).encode(), "model id '../user' is not a weight"),
        (json.dumps(_pointer(bundle="OUTSIDE")).encode(), "which is not inside the models folder"),
        (json.dumps(_pointer(bundle="../user/x.pt")).encode(), "not inside the models folder"),
        (json.dumps(_pointer(bundle=".")).encode(), "not inside the models folder"),
        (json.dumps(_pointer(bundle="link/x.pt")).encode(), "not inside the models folder"),
    ],
)
def test_a_malformed_latest_json_is_one_line_naming_it(
    tmp_path, new_bundle: Path, content: bytes, fragment: str
) -> None:
    """Register, ``latest_bundle`` (infer without --model) and listing all refuse it, and a
    registration stores nothing."""
    models, user = tmp_path / "models", tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("keep me\n")
    models.mkdir()
    (models / "link").symlink_to(user, target_is_directory=True)
    content = content.replace(b"OUTSIDE", str(user / "notes.txt").encode())
    (models / LATEST_FILE).write_bytes(content)
    before = digest(tmp_path)
    bundle = new_bundle
    for call in (lambda: register(bundle, models), lambda: latest_bundle(models),
                 lambda: list_models(models)):  # fmt: skip
        with pytest.raises(RsSegError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"{models / LATEST_FILE}: ") and fragment in message
        assert "\n" not in message
    assert digest(tmp_path) == {**before, "models/.registry.lock": digest(bundle.parent)["lock"]}


def test_registry_files_replaced_by_links_are_not_followed(tmp_path, weights) -> None:
    """The decision log is appended to and the lock file opened for writing: through a link
    planted in their place they would write into (or empty) a file outside the models folder."""
    models, _ = registered(tmp_path, weights)
    notes = tmp_path / "user" / "notes.txt"
    bundle = make_bundle(tmp_path / "b.pt", weights, "m-b", 0.9)
    for name in (LOG_FILE, ".registry.lock"):
        (models / name).unlink()
        (models / name).symlink_to(notes)
        with pytest.raises(RsSegError, match=f"{name}: "):
            register(bundle, models)
        assert notes.read_text() == "keep me\n"
        (models / name).unlink()
        (models / name).touch()


def test_malformed_registry_files_give_one_line_or_are_skipped(tmp_path, weights, ids) -> None:
    models, _ = registered(tmp_path, weights)
    with (models / LOG_FILE).open("a") as log:
        log.write('not json\n[1, 2]\n{"model_id": ["x"], "date": 3}\n\xff\n')
    assert [row["model_id"] for row in list_models(models)] == [ids["m-a"]]
    metrics = models / ids["m-a"] / "metrics.json"
    metrics.write_text("[")
    bundle = make_bundle(tmp_path / "b.pt", weights, "m-b", 0.9)
    with pytest.raises(RsSegError, match=rf"^{metrics}: not valid JSON"):
        register(bundle, models, metric="cropland_iou")  # latest.json holds mean_iou
    with pytest.raises(RsSegError, match=rf"^{metrics}: not valid JSON"):
        list_models(models)


def test_a_bundle_whose_metrics_hold_any_key_is_stored(tmp_path, weights) -> None:
    """A bundle's metrics become the stored metrics.json with the registry's keys added."""
    path = make_bundle(tmp_path / "a.pt", weights, "m-a", 0.7)
    payload = torch.load(path, weights_only=True)
    payload["meta"]["metrics"].update(model_id="someone else's", threshold="x")
    torch.save(payload, path)
    reg = register(path, tmp_path / "models")
    stored = json.loads((reg.bundle.parent / "metrics.json").read_text())
    assert stored["model_id"] == reg.model_id and stored["threshold"] == 0.5
