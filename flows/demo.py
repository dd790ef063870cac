"""``make demo``: the main job through the Prefect flows, on data the demo generates itself.

1. ``train-cropland``: synthetic scenes -> chips (8:1:1 block split) -> a small model trained on
   CPU -> test metrics and report -> registered as the latest model.
2. New imagery arrives: scenes generated with other seeds (never seen in training).
3. ``infer-new-imagery``: every new scene mapped once with the latest model, plus one merged
   GeoPackage of all fields; a second run finds nothing new, as a schedule would.

Settings come from the ``synth``, ``prepare`` and ``train`` sections of the demo config; the demo
only wires the paths under its own folder (``data/demo``, marked by ``demo.json``), which it owns:
models, runs, arrivals and maps are replaced on each run, while synthetic scenes and chips are
reused while current. The earlier results are moved aside, not deleted, until the new run has
succeeded; a folder the demo did not make is refused.
Without ``PREFECT_API_URL`` the flows run on Prefect's temporary local server, whose database
(``PREFECT_HOME``) the UI of ``make serve`` later shows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyogrio

import rs_seg  # noqa: F401 - arms the torchvision shim before torch libraries are imported
from flows.infer_new_imagery import infer_new_imagery
from flows.server import run_command
from flows.train_cropland import train_cropland
from rs_seg.config import (
    IncomingConfig,
    InferOptions,
    PrepareConfig,
    SynthConfig,
    TrainConfig,
)
from rs_seg.config_files import load_training_configs
from rs_seg.errors import RsSegError
from rs_seg.infer.field_layer import LAYER
from rs_seg.infer.run import choose_fields, load_model
from rs_seg.records import ObjectMetrics
from rs_seg.staging import (
    FolderKind,
    check_folder_output,
    remove_leftovers,
    staging_path,
    write_json,
)
from rs_seg.synthetic import LABELS_FILE, generate_scenes
from rs_seg.train.object_metrics import object_metrics, polygon_object_counts

NEW_SCENES = 3
SEED_OFFSET = 1000  # new imagery: seeds far from the training scenes'
REPLACED = ("runs", "models", "arrivals", "mapped", "fields.gpkg")
MARKER = "demo.json"
DEMO_FOLDER = FolderKind(
    "make demo", MARKER, ("synthetic", "chips", *REPLACED, MARKER, ".previous.partial-*")
)


def run_demo(config: Path, out: Path) -> dict[str, Any]:
    """Train through ``train-cropland``, then map new scenes through ``infer-new-imagery``."""
    started = time.perf_counter()
    train, prepare, synth = load_training_configs(config)
    if prepare is None or synth is None:
        raise RsSegError("the demo needs synth: and prepare: sections without scenes", config)
    _check_demo_folder(out)
    with _previous_results_aside(out):
        return _run(train, prepare, synth, out, started)


def _run(
    train: TrainConfig, prepare: PrepareConfig, synth: SynthConfig, out: Path, started: float
) -> dict[str, Any]:
    synth = synth.model_copy(update={"out": out / "synthetic"})
    prepare = prepare.model_copy(update={**synth.prepare_inputs(), "out": out / "chips"})
    train = train.model_copy(update={"out": out / "runs" / "cropland"})
    _say(f"[1/3] flow train-cropland: {synth.scenes} synthetic scenes of {synth.size} px -> chips "
         f"-> {train.model.arch}/{train.model.encoder}, {train.epochs} epochs on CPU")  # fmt: skip
    trained = train_cropland(train, prepare, out / "models", "always", synth=synth)
    test = trained["metrics"]
    _say(f"model {trained['model_id']}: test cropland IoU {test['cropland_iou']:.3f}, mean IoU "
         f"{test['mean_iou']:.3f}; report in {trained['run']}/report")  # fmt: skip

    arrivals = _new_imagery(synth, out / "arrivals")
    incoming = IncomingConfig(
        incoming=str(arrivals / "scenes" / "*.tif"), out_dir=out / "mapped",
        merged=out / "fields.gpkg", infer=InferOptions(models_dir=out / "models", device="cpu"),
        settle_seconds=0,  # the demo wrote these scenes itself: complete, no copy to wait for
    )  # fmt: skip
    _say(f"[3/3] flow infer-new-imagery over {incoming.incoming}")
    mapped = infer_new_imagery(incoming)
    again = infer_new_imagery(incoming)
    _say(f"mapped {mapped['mapped']} scenes ({mapped['failed']} failed); a second scheduled run: "
         f"{again['mapped']} mapped, {again['skipped']} already done")  # fmt: skip
    fields = _fields_against_parcels(incoming, arrivals / LABELS_FILE)
    _print_next_steps(incoming, mapped)
    _say(f"demo finished in {time.perf_counter() - started:.0f} s")
    return {"train": trained, "mapped": mapped, "again": again, "fields": fields}


def _fields_against_parcels(incoming: IncomingConfig, labels: Path) -> ObjectMetrics | None:
    """Mapped fields against the new scenes' parcels, one to one at IoU > 0.5 (says how many).

    Parcels smaller than the smallest field the map keeps (``min_area``) are left out: the map
    cannot show them, so they would only count against it.
    """
    if incoming.merged is None or not incoming.merged.exists():
        return None
    predicted = pyogrio.read_dataframe(incoming.merged, layer=LAYER)
    parcels = pyogrio.read_dataframe(labels).to_crs(predicted.crs)
    bundle = load_model(incoming.infer.model, incoming.infer.models_dir)
    parcels = parcels[parcels.area >= choose_fields(incoming.infer, bundle).min_area]
    scores = object_metrics(polygon_object_counts(predicted, parcels))
    _say(f"fields found: {scores['fields_predicted']} for {scores['fields_labelled']} parcels in "
         f"the new scenes' labels; object F1 {scores['object_f1']:.3f} (one-to-one at IoU > "
         f"0.5), over-segmented {scores['oversegmented']}, under-segmented "
         f"{scores['undersegmented']}")  # fmt: skip
    return scores


def _new_imagery(base: SynthConfig, out: Path) -> Path:
    """Scenes that arrive after training: the demo's synth settings with unseen seeds."""
    arrivals = base.model_copy(
        update={"out": out, "seed": base.seed + SEED_OFFSET, "scenes": NEW_SCENES}
    )
    _say(f"[2/3] new imagery arrives: {NEW_SCENES} scenes (seed {arrivals.seed}) in {out}/scenes")
    generate_scenes(arrivals)
    return out


def _print_next_steps(incoming: IncomingConfig, mapped: dict[str, Any]) -> None:
    merged = mapped.get("merged") or {}
    per_scene = [row["fields"] for row in mapped["results"] if row["fields"]]
    lines = [
        "",
        f"fields: {incoming.merged} ({merged.get('fields', 0)} fields from "
        f"{merged.get('scenes', 0)} scenes; one GeoPackage per scene under {incoming.out_dir})",
        "open in QGIS: Layer > Add Layer > Add Vector Layer (or drag the file onto the map);",
        "  the fields style loads with the layer. Probabilities: fields_prob.tif beside each",
        f"  scene's fields, e.g. {Path(per_scene[0]).with_name('fields_prob.tif')}"
        if per_scene
        else "  (no scene produced fields)",
        "Prefect UI: `make serve`, then open http://127.0.0.1:4200 - the Runs page lists these",
        "  flow runs with their logs and artifacts (metrics, scenes mapped).",
    ]
    _say("\n".join(lines))


def _check_demo_folder(out: Path) -> None:
    """The demo replaces parts of ``out``: only a folder it made (or an empty or new one)."""
    check_folder_output(out, True, DEMO_FOLDER)


@contextlib.contextmanager
def _previous_results_aside(out: Path) -> Iterator[None]:
    """Move the last run's results into a hidden folder; delete them only after success.

    On failure the partial new results are removed and the earlier ones put back. A run killed
    outright leaves the hidden folder, which the next demo run removes as a leftover.
    """
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out / "previous")
    aside = staging_path(out / "previous")  # hidden: .previous.partial-<owner>-...
    aside.mkdir()
    for name in REPLACED:
        if (out / name).exists():
            (out / name).rename(aside / name)
    write_json(out / MARKER, {"created_by": "make demo", "updated": _now()})
    try:
        yield
    except BaseException:
        for name in REPLACED:
            _remove(out / name)
            if (aside / name).exists():
                (aside / name).rename(out / name)
        raise
    finally:
        _remove(aside)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.demo [--config configs/demo.yaml] [--out data/demo]``."""
    parser = argparse.ArgumentParser(description="The rs_seg demo through the Prefect flows.")
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--out", type=Path, default=Path("data/demo"))
    args = parser.parse_args(argv)

    def run() -> None:
        run_demo(args.config, args.out)

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
