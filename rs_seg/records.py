"""The metrics and provenance records that travel between evaluation, bundle, registry and flows.

Evaluation writes them (a run's ``metrics.json``, a bundle's ``metrics`` and ``provenance``), the
bundle stores them, the registry and the flows read them back: one definition here keeps the key
names and value types the same at every stage. They are TypedDicts, not dataclasses, because the
values *are* the JSON documents: files hold exactly what was built (key order is the order of
construction) and read back without a conversion step. ``total=False``
marks records that files may hold only in part. The module imports nothing beyond ``typing``, so
any stage, and the torch-free report, can use it without an import-order constraint.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class PixelMetrics(TypedDict):
    """Pixel scores from one confusion matrix (cropland positive); NaN where nothing was counted."""

    cropland_iou: float
    background_iou: float
    mean_iou: float
    f1: float
    precision: float
    recall: float
    accuracy: float


class SplitMetrics(PixelMetrics):
    """Scores of one split at the tuned threshold, with how much they cover."""

    pixels: int  # labelled (not ignored) pixels
    chips: int
    objects: NotRequired[ObjectMetrics]  # fields in the chips; absent where none were counted


class ObjectMetrics(TypedDict):
    """Field-level scores: one-to-one matches at IoU > 0.5 (``rs_seg.train.object_metrics``).

    NaN where undefined: precision without predictions, recall without labels, F1 without
    either, mean matched IoU without a match.
    """

    object_precision: float
    object_recall: float
    object_f1: float
    mean_matched_iou: float
    oversegmented: int  # labelled fields with >= 2 predictions each over half inside them
    undersegmented: int  # predictions with >= 2 labelled fields each over half inside them
    fields_predicted: int
    fields_labelled: int


class BundleMetrics(TypedDict, total=False):
    """How good a bundle's model is. Empty in bundles no evaluation wrote (tests, benchmarks)."""

    validation: SplitMetrics
    test: SplitMetrics
    threshold_rule: str
    fields_rule: str  # how a fields model's field settings were tuned


class Provenance(TypedDict, total=False):
    """Where a bundle's model came from.

    Evaluation records every key; bundles assembled elsewhere (tests, benchmarks, hand exports)
    hold only some, so readers use ``.get``. ``ModelBundle.meta`` always adds ``model_id``.
    """

    model_id: str
    chip_index_fingerprint: str  # names the chips, hence the test split, the scores are from
    chips_dir: str
    config: dict[str, Any]  # the TrainConfig as JSON
    versions: dict[str, str]  # package -> version
    created: str  # UTC, ISO 8601
    epochs_run: int
    best_epoch: int | None


class ModelSummary(TypedDict):
    """The model of a run, as its metrics and report describe it."""

    arch: str
    encoder: str
    bands: list[int]  # 1-based chip bands, in model order
    chip_size: int


class DataSummary(TypedDict):
    """Usable chips per split."""

    train_chips: int
    val_chips: int
    test_chips: int


class RunMetrics(TypedDict):
    """``metrics.json`` of an evaluated run folder, keys in file order."""

    threshold: float
    threshold_level: int
    threshold_rule: str
    validation: SplitMetrics
    test: SplitMetrics
    best_epoch: int | None
    epochs_run: int
    checkpoint: str
    chip_index_fingerprint: str
    model: ModelSummary
    data: DataSummary
    bundle: str  # the bundle file, relative to the run folder
    model_id: NotRequired[str]  # added once the bundle, which the weights name, exists
    # rs_seg.model.fields.FieldSettings as JSON: tuned on validation (fields models) or defaults
    fields: NotRequired[dict[str, float | int | None]]
    test_scenes: NotRequired[dict[str, ObjectMetrics]]  # test chips mosaicked per scene
