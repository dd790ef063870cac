"""The ``rs-seg`` command line: a thin layer over the stage functions.

Every command builds the same pydantic config the flows use: from a YAML section (``--config``)
with explicit flags on top. Problems with inputs end as one ``error:`` line and exit status 2;
an interrupt leaves no partial output (the stages write to staging folders).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from rs_seg.cli_runtime import reports_errors, setup_logging
from rs_seg.config import (
    InferConfig,
    InferOptions,
    LabelMap,
    PrepareConfig,
    SynthConfig,
    TrainConfig,
)
from rs_seg.config_files import build_config, schema_help
from rs_seg.errors import RsSegError, check_utf8_name

app = typer.Typer(
    name="rs-seg",
    help="Field polygons from satellite and aerial scenes: prepare chips, train and register "
    "models, map scenes into fields (infer, vectorize); new imagery is mapped by its Prefect flow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show defaults as [value]; rich would read them as markup
)
log = logging.getLogger("rs_seg")
F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config; flags override its values.")
]
OverwriteOption = Annotated[
    bool | None, typer.Option("--overwrite", help="Replace an existing output.", show_default=False)
]

# The fields of each command's config (rs_seg/config.py) that have no flag, with the reason: they
# are set in the command's section of the --config file (a section: its fields without a flag).
# Every other field is a flag whose help states the field's range and default
# (tests/test_cli_schema.py holds the commands to both).
CONFIG_ONLY: dict[str, dict[str, str]] = {
    "synth": {},
    "prepare": {},
    "train": {
        "model.output_stride": "DeepLabV3/DeepLabV3Plus only, set beside model.arch",
        "augment": "flip and rot90 probabilities, part of the training recipe",
        "loss": "loss weights, part of the training recipe",
        "optimizer": "weight decay and schedule, part of the training recipe; --lr is a flag",
        "early_stopping_patience": "part of the training recipe",
        "num_nodes": "multi-node runs are launched with a config file",
        "channels_last": "a performance setting with a working default",
        "num_workers": "a performance setting with a working default",
        "cache_chips": "a performance setting with a working default",
        "limit_train_batches": "quick looks at a run only",
    },
    "infer": {"scene_name": "new-imagery runs name each scene uniquely; here: the file stem"},
}


def _config_only(command: str) -> str | None:
    """The config-only fields of a command, for its ``--help``."""
    fields = CONFIG_ONLY[command]
    if not fields:
        return None
    listed = "; ".join(f"{name} ({why})" for name, why in fields.items())
    return f"Set only in the {command}: section of --config: {listed}."


def _infer_help(name: str, text: str, default: str | None = None) -> str:
    return schema_help(InferOptions, name, text, default)


def _synth_help(name: str, text: str) -> str:
    return schema_help(SynthConfig, name, text)


def _prepare_help(name: str, text: str, default: str | None = None) -> str:
    return schema_help(PrepareConfig, name, text, default)


def _train_help(name: str, text: str, default: str | None = None) -> str:
    return schema_help(TrainConfig, name, text, default)


SimplifyOption = Annotated[
    float | None,
    typer.Option(
        help=_infer_help("simplify", "Simplify tolerance in CRS units (0: off)", "1 pixel")
    ),
]
FillHolesOption = Annotated[
    float | None,
    typer.Option(
        help=_infer_help("fill_holes_below", "Fill holes smaller than this, m2", "min area")
    ),
]


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail.")] = False,
) -> None:
    setup_logging(verbose)


@app.command()
@reports_errors
def synth(
    out: Annotated[Path | None, typer.Option(help=_synth_help("out", "Output folder"))] = None,
    size: Annotated[
        int | None, typer.Option(help=_synth_help("size", "Scene width and height in pixels"))
    ] = None,
    bands: Annotated[
        int | None, typer.Option(help=_synth_help("bands", "Bands (NIR from 4 on)"))
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=_synth_help("seed", "Random seed; same seed, same scenes"))
    ] = None,
    scenes: Annotated[int | None, typer.Option(help=_synth_help("scenes", "Scenes"))] = None,
    pixel_size: Annotated[
        float | None, typer.Option(help=_synth_help("pixel_size", "Pixel size in metres"))
    ] = None,
    epsg: Annotated[
        int | None, typer.Option(help=_synth_help("epsg", "UTM CRS of the scenes (EPSG code)"))
    ] = None,
    overwrite: OverwriteOption = None,
    config: ConfigOption = None,
) -> None:
    """Write synthetic farm scenes (GeoTIFF) and their cropland polygons (GeoPackage, EPSG:4326)."""
    # deferred: `rs-seg --help` and config errors answer without loading GDAL or torch
    from rs_seg.synthetic import generate_scenes

    cfg = build_config(
        SynthConfig,
        "synth",
        config,
        {
            "out": out,
            "size": size,
            "bands": bands,
            "seed": seed,
            "scenes": scenes,
            "pixel_size": pixel_size,
            "epsg": epsg,
            "overwrite": overwrite,
        },
    )
    result = generate_scenes(cfg, progress=sys.stderr.isatty())
    typer.echo(f"{len(result.scenes)} scenes in {cfg.out / 'scenes'}")
    typer.echo(f"cropland polygons (EPSG:4326): {result.labels}")


def _label_map(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        return LabelMap.parse(text).model_dump()
    except ValueError as exc:
        raise RsSegError(f"--label-map: {exc}") from None


@app.command()
@reports_errors
def prepare(
    scenes: Annotated[
        list[str] | None, typer.Option(help="Scene file or glob (repeatable), e.g. 'data/*.tif'.")
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Vector labels (any CRS) or label raster ({stem}: per scene)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help=_prepare_help("out", "Output folder for chips and index"))
    ] = None,
    chip_size: Annotated[
        int | None, typer.Option(help=_prepare_help("chip_size", "Chip size in pixels"))
    ] = None,
    stride: Annotated[
        int | None, typer.Option(help=_prepare_help("stride", "Step between chips", "chip size"))
    ] = None,
    split: Annotated[
        str | None, typer.Option(help=_prepare_help("split.method", "block (spatial) or random"))
    ] = None,
    ratios: Annotated[
        tuple[float, float, float] | None,
        typer.Option(help=_prepare_help("split.ratios", "Train, validation and test shares")),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=_prepare_help("split.seed", "Split seed"))
    ] = None,
    block_chips: Annotated[
        str | None,
        typer.Option(help=_prepare_help("split.block_chips", "Block side in chips, or 'auto'")),
    ] = None,
    aoi: Annotated[Path | None, typer.Option(help="Polygons where labels are complete.")] = None,
    label_map: Annotated[
        str | None,
        typer.Option(help="Raster label values, e.g. '1=cropland,5=ignore' (YAML: the same text)."),
    ] = None,
    label_layer: Annotated[str | None, typer.Option(help="Layer of the vector labels.")] = None,
    label_where: Annotated[str | None, typer.Option(help="SQL filter on vector labels.")] = None,
    boundary_width: Annotated[
        float | None,
        typer.Option(
            help=_prepare_help(
                "boundary_width",
                "Field outlines burned as boundary (2), metres (0: binary masks)",
                "2 px",
            )
        ),
    ] = None,
    max_nodata: Annotated[
        float | None,
        typer.Option(
            help=_prepare_help(
                "max_nodata_fraction", "Skip chips with more nodata than this fraction"
            )
        ),
    ] = None,
    compression: Annotated[
        str | None,
        typer.Option(
            help=_prepare_help("compression", "Chip compression: zstd, deflate, lzw, none")
        ),
    ] = None,
    chips_dir: Annotated[Path | None, typer.Option(help="Index an existing chip folder.")] = None,
    image_glob: Annotated[
        str | None, typer.Option(help=_prepare_help("image_glob", "Images below --chips-dir"))
    ] = None,
    mask_glob: Annotated[
        str | None, typer.Option(help=_prepare_help("mask_glob", "Masks below --chips-dir"))
    ] = None,
    overwrite: OverwriteOption = None,
    config: ConfigOption = None,
) -> None:
    """Cut scenes into chips, split them 8:1:1 and write a chip index.

    Masks: 0 background, 1 field, 2 field boundary (vector labels), 255 ignore.
    """
    # deferred: `rs-seg --help` and config errors answer without loading GDAL or torch
    from rs_seg.prepare.run import prepare as run_prepare

    block = int(block_chips) if block_chips and block_chips.isdigit() else block_chips
    cfg = build_config(
        PrepareConfig,
        "prepare",
        config,
        {
            "scenes": scenes or None,
            "labels": labels,
            "out": out,
            "chip_size": chip_size,
            "stride": stride,
            "split.method": split,
            "split.ratios": ratios,
            "split.seed": seed,
            "split.block_chips": block,
            "aoi": aoi,
            "label_map": _label_map(label_map),
            "label_layer": label_layer,
            "label_where": label_where,
            "boundary_width": boundary_width,
            "max_nodata_fraction": max_nodata,
            "compression": compression,
            "chips_dir": chips_dir,
            "image_glob": image_glob,
            "mask_glob": mask_glob,
            "overwrite": overwrite,
        },
    )
    summary = run_prepare(cfg, progress=sys.stderr.isatty())
    typer.echo(summary.report())


@app.command(epilog=_config_only("train"))
@reports_errors
def train(
    chips: Annotated[
        Path | None, typer.Option(help=_train_help("chips", "Chip folder from 'rs-seg prepare'"))
    ] = None,
    out: Annotated[Path | None, typer.Option(help=_train_help("out", "Run folder"))] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    arch: Annotated[
        str | None, typer.Option(help=_train_help("model.arch", "Unet, DeepLabV3Plus, FPN, ..."))
    ] = None,
    encoder: Annotated[
        str | None, typer.Option(help=_train_help("model.encoder", "smp encoder"))
    ] = None,
    encoder_weights: Annotated[
        str | None,
        typer.Option(help="imagenet (hub), imagenet-lite0/1/2 (offline), a weights file [none]."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="fields (extent + boundary) or cropland [fields if chips have them]."),
    ] = None,
    bands: Annotated[
        str | None, typer.Option(help="1-based chip bands in model order, e.g. '3,2,1' [all].")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help=_train_help("epochs", "Maximum epochs"))
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=_train_help("batch_size", "Chips per batch and device"))
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help=_train_help("optimizer.lr", "Peak learning rate"))
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(help=_train_help("devices", "Devices per node (a number or 'auto')")),
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help=_train_help("strategy", "Lightning strategy, e.g. ddp"))
    ] = None,
    accelerator: Annotated[
        str | None,
        typer.Option(help=_train_help("accelerator", "auto, cpu, gpu, cuda or mps")),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help=_train_help("precision", "auto, 32-true, bf16-mixed or 16-mixed")),
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_train_help("seed", "Random seed"))] = None,
    overwrite: OverwriteOption = None,
    config: ConfigOption = None,
) -> None:
    """Train a cropland model on prepared chips; writes a model bundle and a report."""
    # deferred: `rs-seg --help` and config errors answer without loading GDAL or torch
    from rs_seg.evaluate.run import train_and_evaluate

    cfg = build_config(
        TrainConfig,
        "train",
        config,
        {
            "chips": chips,
            "out": out,
            "model.arch": arch,
            "model.encoder": encoder,
            "model.encoder_weights": encoder_weights,
            "model.task": task,
            "model.bands": _int_list(bands, "--bands"),
            "epochs": epochs,
            "batch_size": batch_size,
            "optimizer.lr": lr,
            "devices": int(devices) if devices and devices.isdigit() else devices,
            "strategy": strategy,
            "accelerator": accelerator,
            "precision": precision,
            "seed": seed,
            "overwrite": overwrite,
        },
    )
    trained = train_and_evaluate(cfg, resume=resume, progress=sys.stderr.isatty())
    if trained is None:  # an extra DDP process: rank 0 evaluates and reports
        return
    outcome = trained.training
    typer.echo(f"trained {outcome.epochs_run} epochs (best: epoch {outcome.best_epoch})")
    typer.echo(trained.summary())


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise RsSegError(f"{option}: expected comma-separated integers, got {text!r}") from None


@app.command(epilog=_config_only("infer"))
@reports_errors
def infer(
    scene: Annotated[
        str,
        typer.Argument(
            help="Scene to map: a GeoTIFF, or an http(s):// or s3:// URL of a COG (read window "
            "by window)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help=schema_help(
                InferConfig, "out", "Fields: .gpkg, .fgb, .geojson or .parquet (fiboa)"
            ),
        ),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="Model bundle [latest in --models-dir].")
    ] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help=_infer_help("models_dir", "Model registry"))
    ] = None,
    window: Annotated[
        int | None, typer.Option(help=_infer_help("window", "Window in pixels", "bundle chip size"))
    ] = None,
    overlap: Annotated[
        float | None, typer.Option(help=_infer_help("overlap", "Window overlap"))
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=_infer_help("batch_size", "Windows per batch"))
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=_infer_help("device", "auto, cpu or cuda"))
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help=_infer_help("workers", "Reading / normalizing threads", "one per core, max 8")
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help=_infer_help("precision", "auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16")
        ),
    ] = None,
    tta: Annotated[bool | None, typer.Option("--tta", help="Average over flips (4x).")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help=_infer_help("threshold", "Probability threshold", "the bundle's")),
    ] = None,
    boundary_threshold: Annotated[
        float | None,
        typer.Option(
            help=_infer_help(
                "boundary_threshold",
                "Fields models: boundary probability that parts fields",
                "the bundle's",
            )
        ),
    ] = None,
    prob_out: Annotated[
        Path | None, typer.Option(help="Probability COG [<out stem>_prob.tif].")
    ] = None,
    mask_out: Annotated[Path | None, typer.Option(help="Also write a 0/1 mask COG.")] = None,
    min_area: Annotated[
        float | None,
        typer.Option(
            help=_infer_help("min_area", "Smallest field in m2", "fields models: the bundle's; 500")
        ),
    ] = None,
    simplify: SimplifyOption = None,
    fill_holes_below: FillHolesOption = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help=_infer_help(
                "timeout", "URL scenes: seconds the scene may take to read", "no limit"
            )
        ),
    ] = None,
    overwrite: OverwriteOption = None,
    config: ConfigOption = None,
) -> None:
    """Map cropland in a whole scene: probability COG and field polygons for QGIS."""
    # deferred: `rs-seg --help` and config errors answer without loading GDAL or torch
    from rs_seg.infer.run import run_infer

    cfg = build_config(
        InferConfig,
        "infer",
        config,
        {
            "scene": scene, "out": out, "model": model, "models_dir": models_dir,
            "window": window, "overlap": overlap, "batch_size": batch_size, "device": device,
            "workers": workers, "precision": precision, "tta": tta, "threshold": threshold,
            "boundary_threshold": boundary_threshold, "prob_out": prob_out, "mask_out": mask_out,
            "min_area": min_area, "simplify": simplify, "fill_holes_below": fill_holes_below,
            "timeout": timeout, "overwrite": overwrite,
        },
    )  # fmt: skip
    summary = run_infer(cfg, progress=sys.stderr.isatty())
    typer.echo(summary.report())
    typer.echo(f"open in QGIS: drag {summary.fields} (styled) and {summary.prob} onto the map")


@app.command()
@reports_errors
def vectorize(
    prob: Annotated[Path, typer.Argument(help="Probability raster from rs-seg infer.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Fields: .gpkg, .fgb, .geojson or .parquet (fiboa).")
    ],
    threshold: Annotated[
        float | None,
        typer.Option(
            help=_infer_help("threshold", "Probability threshold", "stored in the raster")
        ),
    ] = None,
    min_area: Annotated[
        float | None,
        typer.Option(help=_infer_help("min_area", "Smallest field in m2", "stored, else 500")),
    ] = None,
    simplify: SimplifyOption = None,
    fill_holes_below: FillHolesOption = None,
    boundary_threshold: Annotated[
        float | None,
        typer.Option(
            help=_infer_help(
                "boundary_threshold",
                "Two-band rasters: boundary probability threshold",
                "stored, else 0.5",
            )
        ),
    ] = None,
    grow: Annotated[
        int | None,
        typer.Option(help="Two-band rasters: pixels a boundary may lie from a field's core [3]."),
    ] = None,
    split: Annotated[
        bool,
        typer.Option(help="Two-band rasters: split cropland into fields by the boundary band."),
    ] = True,
    overwrite: OverwriteOption = None,
) -> None:
    """Re-polygonize a saved probability raster with other settings, without the model.

    A fields model's raster (bands cropland, boundary) is split into individual fields again,
    with the thresholds and growth given here.
    """
    # deferred: `rs-seg --help` and config errors answer without loading GDAL or torch
    from rs_seg.infer.vectorize import VectorizeSettings
    from rs_seg.infer.vectorize import vectorize as run_vectorize
    from rs_seg.model.fields import DEFAULT_MIN_AREA, FieldSettings
    from rs_seg.rasters import open_raster

    check_utf8_name(prob)
    check_utf8_name(out)
    given = {
        "threshold": threshold,
        "min_area": min_area,
        "simplify": simplify,
        "fill_holes_below": fill_holes_below,
        "boundary_threshold": boundary_threshold,
    }
    build_config(InferOptions, None, None, given)  # the flags' ranges, as for rs-seg infer
    with open_raster(prob, "probability raster") as src:
        tags = src.tags()
        pixel = (abs(src.res[0]) + abs(src.res[1])) / 2
    try:  # a tag out of range is the raster's problem: name it
        stored = FieldSettings.from_tags(tags)
    except RsSegError as exc:
        raise RsSegError(str(exc), prob) from None
    if threshold is None and stored is None:
        raise RsSegError("no field settings stored in the raster; pass --threshold", prob)
    chosen = (stored or FieldSettings(min_area=DEFAULT_MIN_AREA)).overridden(
        threshold=threshold, boundary_threshold=boundary_threshold, min_area=min_area, grow=grow
    )
    fields = chosen if split else chosen.without_split()
    settings = VectorizeSettings.for_raster(fields, pixel, simplify, fill_holes_below)
    summary = run_vectorize(
        prob, out, settings, scene=Path(tags.get("scene", prob.stem)).stem,
        model_id=tags.get("model_id", ""), overwrite=bool(overwrite),
        progress=sys.stderr.isatty(),
    )  # fmt: skip
    typer.echo(
        f"{summary.polygons} fields ({summary.area_ha:,.1f} ha) -> {summary.out} "
        f"({summary.megapixels:.1f} Mpx in {summary.seconds:.2f} s)"
    )


model_app = typer.Typer(help="Inspect and register model bundles.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("info")
@reports_errors
def model_info(
    bundle: Annotated[Path, typer.Argument(help="A model bundle (model-bundle.pt).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full metadata as JSON.")
    ] = False,
) -> None:
    """Show what a model bundle holds: architecture, bands, normalization, metrics, provenance."""
    # deferred: `rs-seg --help` and config errors answer without loading GDAL or torch
    from rs_seg.model.bundle import ModelBundle

    loaded = ModelBundle.load(bundle)
    typer.echo(json.dumps(loaded.meta(), indent=2) if as_json else loaded.describe())


@model_app.command("register")
@reports_errors
def model_register(
    run: Annotated[Path, typer.Argument(help="An evaluated run folder or a model-bundle.pt.")],
    models_dir: Annotated[Path, typer.Option(help="The model registry.")] = Path("models"),
    promote: Annotated[
        str, typer.Option(help="When latest moves: if_better, always or never.")
    ] = "if_better",
) -> None:
    """Store a model in the registry; ``latest`` moves only if it is at least as good."""
    # deferred: `rs-seg --help` and config errors answer without loading GDAL or torch
    from rs_seg.ops.registry import register

    if promote not in ("if_better", "always", "never"):
        raise RsSegError(f"--promote must be if_better, always or never, not {promote!r}")
    done = register(run, models_dir, promote)  # type: ignore[arg-type]
    latest = "now this model" if done.promoted else "unchanged"
    typer.echo(f"model {done.model_id} stored in {done.bundle}; latest {latest}: {done.reason}")


@app.command()
@reports_errors
def demo(
    config: ConfigOption = Path("configs/demo.yaml"),
    out: Annotated[Path, typer.Option(help="Folder the demo owns and replaces.")] = Path(
        "data/demo"
    ),
) -> None:
    """The demo without Prefect: synthetic scenes -> chips -> model -> fields of an unseen scene."""
    # deferred: `rs-seg --help` and config errors answer without loading GDAL or torch
    from rs_seg.demo import run_demo

    run_demo(config, out)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
