"""Self-describing model bundles: one file with the weights and everything inference needs.

A bundle records the architecture, encoder, the chip bands it reads (1-based, in model order, with
their names), the normalization, chip and pixel size, the tuned threshold and class names, plus
provenance: metrics, the chip-index fingerprint that names the test split, the training config,
package versions and the date. It is a torch zip file read with ``weights_only=True``, so opening a
bundle from someone else cannot run code. ``format_version`` changes only when the layout does;
older versions are upgraded on load where possible (``rs_seg/model/upgrades.py``), newer ones
are refused with a clear message.
The metadata is validated on load (:class:`BundleMeta`: types, ranges, lengths that agree), so an
edited or damaged bundle is refused in one line before any value sizes an array or names a file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from rs_seg.config import ChipSize, MaskTarget, ModelConfig
from rs_seg.config_files import format_validation_error
from rs_seg.errors import RsSegError
from rs_seg.model.fields import DEFAULT_MIN_AREA, FieldSettings
from rs_seg.model.normalization import Normalization
from rs_seg.model.upgrades import FORMAT_VERSION, upgrade
from rs_seg.records import BundleMetrics, Provenance
from rs_seg.staging import staged_file

BUNDLE_FORMAT = "rs_seg.model-bundle"
BUNDLE_FILE = "model-bundle.pt"
CLASSES = {0: "background", 1: "cropland"}
# Model ids are weight hashes (:func:`weights_id`): the registry names folders after them, the
# incoming flow output folders, so nothing else may pass for one.
MODEL_ID = re.compile(r"[0-9a-f]{12}")
MAX_BANDS = 65535  # a GeoTIFF holds at most this many bands
_VERSIONED_PACKAGES = (
    "rs-seg", "torch", "segmentation-models-pytorch", "timm", "lightning", "rasterio", "numpy",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a model's behaviour."""
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Band = Annotated[int, Field(ge=1, le=MAX_BANDS)]


class _Meta(BaseModel):
    """Base of the metadata schema: strict JSON types (no "3" for 3), unknown keys kept.

    Bundles written by a newer rs_seg or assembled by hand may carry keys rs_seg does not know;
    they are kept (and saved again), only the keys rs_seg reads are checked.
    """

    model_config = ConfigDict(strict=True, extra="allow")


class NormalizationMeta(_Meta):
    """Per-band mean and standard deviation (training divides by ``std``: never 0)."""

    mean: list[Finite]
    std: list[Positive]


class MetricsMeta(_Meta):
    """:class:`rs_seg.records.BundleMetrics`: the scores are read by name, so only mappings."""

    validation: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    threshold_rule: str | None = None
    fields_rule: str | None = None


class ProvenanceMeta(_Meta):
    """:class:`rs_seg.records.Provenance`; ``model_id`` must look like a weight hash."""

    model_id: Annotated[str, Field(pattern=f"^{MODEL_ID.pattern}$")] | None = None
    chip_index_fingerprint: str | None = None
    chips_dir: str | None = None
    config: dict[str, Any] | None = None
    versions: dict[str, Any] = Field(default_factory=dict)
    created: str | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None


class BundleMeta(_Meta):
    """A bundle's metadata as :meth:`ModelBundle.load` accepts it: the ranges inference relies on.

    Chip size bounds the window buffers (a huge one once asked for terabytes), bands index the
    scene, normalization divides by ``std``; lengths of bands, names and statistics must agree.
    """

    model: ModelConfig
    bands: Annotated[list[Band], Field(min_length=1)]
    band_names: list[str]
    normalization: NormalizationMeta
    chip_size: ChipSize
    threshold: Probability
    pixel_size: Annotated[list[Positive], Field(min_length=2, max_length=2)] | None = None
    fields: FieldSettings
    band_count: Annotated[int, Field(ge=1, le=MAX_BANDS)] | None = None
    crs: str | None = None
    dtype: str = "uint16"
    nodata: float | None = None
    classes: dict[Annotated[int, Field(strict=False)], str] = Field(
        default_factory=lambda: dict(CLASSES)
    )
    metrics: MetricsMeta = Field(default_factory=MetricsMeta)
    provenance: ProvenanceMeta = Field(default_factory=ProvenanceMeta)

    @field_validator("model", mode="before")
    @classmethod
    def _buildable(cls, model: object) -> object:
        missing = (
            [key for key in ("arch", "encoder") if key not in model]
            if isinstance(model, dict)
            else []
        )
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return model

    @field_validator("fields", mode="before")
    @classmethod
    def _every_setting(cls, fields: object) -> object:
        given = fields if isinstance(fields, dict) else dict.fromkeys(FieldSettings.model_fields)
        missing = [key for key in FieldSettings.model_fields if key not in given]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return fields

    @model_validator(mode="after")
    def _consistent(self) -> BundleMeta:
        count = len(self.bands)
        if len(set(self.bands)) != count:
            raise ValueError(f"bands {self.bands} repeat a band")
        if self.band_count is not None and max(self.bands) > self.band_count:
            raise ValueError(f"bands {self.bands} exceed band_count {self.band_count}")
        lengths = {
            "band_names": len(self.band_names),
            "normalization mean": len(self.normalization.mean),
            "normalization std": len(self.normalization.std),
        }
        wrong = [f"{name} has {n}" for name, n in lengths.items() if n != count]
        if wrong:
            raise ValueError(f"{count} bands but {', '.join(wrong)}")
        return self


def validate_meta(meta: object, path: Path) -> BundleMeta:
    """``meta`` checked against :class:`BundleMeta`; one line naming the bundle if it fails."""
    try:
        return BundleMeta.model_validate(meta)
    except ValidationError as exc:
        detail = format_validation_error(exc)
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise RsSegError(
            f"invalid model bundle metadata ({detail}); the bundle was edited or damaged, export "
            "it again from its run",
            path,
        ) from None


@dataclass
class ModelBundle:
    """A trained model with what inference needs (``meta``) and its weights."""

    model: ModelConfig
    bands: list[int]
    band_names: list[str]
    normalization: Normalization
    chip_size: int
    threshold: float  # the cropland (mask) threshold, tuned on validation mean IoU
    pixel_size: list[float] | None = None
    # how fields are made: tuned on validation object F1, else :meth:`default_fields`
    fields: FieldSettings | None = None
    band_count: int | None = None  # bands of the training imagery (bands picks from these)
    crs: str | None = None
    dtype: str = "uint16"
    nodata: float | None = None
    classes: dict[int, str] = field(default_factory=lambda: dict(CLASSES))
    metrics: BundleMetrics = field(default_factory=BundleMetrics)
    provenance: Provenance = field(default_factory=Provenance)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    source: Path | None = field(default=None, repr=False, compare=False)  # the file it came from

    @property
    def band_index(self) -> np.ndarray:
        """0-based indexes of the scene bands the model reads (``bands`` counts from 1, as GDAL)."""
        return np.asarray(self.bands) - 1

    @property
    def in_channels(self) -> int:
        """Bands the network reads."""
        return len(self.bands)

    @property
    def task(self) -> MaskTarget:
        """``fields`` (extent and boundary outputs), else ``cropland`` (also without a task)."""
        return "fields" if self.model.task == "fields" else "cropland"

    @property
    def outputs(self) -> int:
        """Output channels of the network: extent, and boundary for a fields model."""
        return 2 if self.task == "fields" else 1

    @property
    def field_settings(self) -> FieldSettings:
        """The settings that make fields of this model's output: the tuned ones, else defaults.

        The defaults are the cropland threshold, 0.5 for a fields model's boundary (none for a
        cropland model) and :data:`DEFAULT_MIN_AREA`.
        """
        if self.fields is not None:
            return self.fields
        boundary = 0.5 if self.task == "fields" else None
        return FieldSettings.checked(
            threshold=self.threshold, boundary_threshold=boundary, min_area=DEFAULT_MIN_AREA
        )

    @property
    def model_id(self) -> str:
        """A short content hash of the weights: the same weights always get the same id."""
        return str(self.provenance.get("model_id") or weights_id(self.state_dict))

    def meta(self) -> dict[str, Any]:
        """Everything except the weights, JSON-ready."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_META}
        data["model"] = self.model.model_dump(mode="json")
        data["fields"] = self.field_settings.model_dump()
        data["normalization"] = self.normalization.to_dict()
        data["classes"] = {str(k): v for k, v in self.classes.items()}
        data["in_channels"] = self.in_channels
        data["provenance"] = {**self.provenance, "model_id": self.model_id}
        return data

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The network with the bundle's weights, in eval mode; never downloads anything."""
        net = self._network()
        self.check_weights(net)
        net.load_state_dict(self.state_dict)
        return net.to(device).eval()

    def check_weights(self, net: nn.Module | None = None) -> None:
        """Refuse weights that do not fit the model the metadata describes, in one line.

        Another encoder, another band count, missing or extra tensors: the message names the
        bundle and the first misfits. Without ``net`` the model is built on the meta device
        (shapes only, no memory), which is what :meth:`load` does: cheap enough for every load.
        """
        if net is None:
            with torch.device("meta"):
                net = self._network()
        misfits = weight_misfits(net.state_dict(), self.state_dict)
        if misfits:
            model = self.model
            raise RsSegError(
                f"the weights do not fit the model its metadata describes ({model.arch}/"
                f"{model.encoder}, {self.in_channels} input bands): {misfits}; the bundle "
                "was edited or assembled wrongly, export it again from its run",
                self.source or "model bundle",
            )

    def _network(self) -> nn.Module:
        # smp is slow to import; a bundle's metadata (model info, registry, inbox scans) needs none
        from rs_seg.model.networks import build_model

        try:
            return build_model(self.model, self.in_channels, False)
        except RsSegError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise RsSegError(
                f"the model its metadata describes cannot be built ({detail})",
                self.source or "model bundle",
            ) from None

    def save(self, path: Path, overwrite: bool = False) -> Path:
        """Write the bundle atomically (a temporary file renamed into place)."""
        payload = {
            "format": BUNDLE_FORMAT,
            "format_version": FORMAT_VERSION,
            "meta": json.loads(json.dumps(self.meta())),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()},
        }
        with staged_file(Path(path), overwrite=overwrite) as temporary:
            torch.save(payload, temporary)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> ModelBundle:
        """Read a bundle, with one-line errors for what cannot be used.

        Other files, unsupported format versions, metadata outside :class:`BundleMeta` and weights
        that do not fit the model the metadata describes (:meth:`check_weights`) are refused.
        """
        path = Path(path)
        payload = _read_payload(path)
        meta = upgrade(_raw_meta(payload, path), _version(payload, path), path)
        checked = validate_meta(meta, path)
        bundle = cls(
            model=checked.model,
            bands=checked.bands,
            band_names=checked.band_names,
            normalization=Normalization(
                tuple(checked.normalization.mean), tuple(checked.normalization.std)
            ),
            chip_size=checked.chip_size,
            threshold=checked.threshold,
            pixel_size=checked.pixel_size,
            fields=checked.fields,
            band_count=checked.band_count,
            crs=checked.crs,
            dtype=checked.dtype,
            nodata=checked.nodata,
            classes=checked.classes,
            # the stored JSON itself (validated above), so unknown keys and their order survive
            metrics=cast(BundleMetrics, meta.get("metrics", {})),
            provenance=cast(Provenance, meta.get("provenance", {})),
            state_dict=_state_dict(payload, path),
            source=path,
        )
        bundle.check_weights()
        return bundle

    def describe(self) -> str:
        """The human-readable summary ``rs-seg model info`` prints."""
        return describe(self.meta(), self.state_dict)


_NOT_META = {"state_dict", "source"}


def weight_misfits(expected: dict[str, torch.Tensor], found: object, shown: int = 3) -> str:
    """How ``found`` differs from the state dict a model expects ("" when it fits exactly)."""
    if not isinstance(found, dict):
        return f"the weights are a {type(found).__name__}, not a state dict"
    shapes = [
        f"{key} is {tuple(found[key].shape)}, the model needs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in found and tuple(getattr(found[key], "shape", ())) != tuple(value.shape)
    ]
    missing = [key for key in expected if key not in found]
    extra = [key for key in found if key not in expected]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensors of another shape ({'; '.join(shapes[:shown])})")
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:shown])})")
    if extra:
        parts.append(f"{len(extra)} unexpected ({', '.join(extra[:shown])})")
    return "; ".join(parts)


def weights_id(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names and bytes, shortened to 12 hex digits."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise RsSegError("model bundle not found", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or damaged files
        raise RsSegError(
            f"not an rs_seg model bundle (cannot be read: {type(exc).__name__})", path
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
        hint = (
            " (a Lightning checkpoint? bundles are written by rs-seg train)"
            if (isinstance(payload, dict) and "pytorch-lightning_version" in payload)
            else ""
        )
        raise RsSegError(f"not an rs_seg model bundle{hint}", path)
    return payload


def _version(payload: dict[str, Any], path: Path) -> int:
    version = payload.get("format_version")
    if type(version) is not int:
        raise RsSegError("not an rs_seg model bundle (no format version)", path)
    return version


def _raw_meta(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    meta = payload.get("meta")
    if not isinstance(meta, dict):
        raise RsSegError("invalid model bundle metadata (not a mapping)", path)
    return meta


def _state_dict(payload: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The weights: tensors by name (:meth:`ModelBundle.check_weights` then checks the shapes)."""
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise RsSegError(
            "the weights are not a state dict of named tensors; the bundle was edited or damaged",
            path,
        )
    return state


def _format_metrics(metrics: BundleMetrics) -> list[str]:
    lines = []
    for split, scores in (("validation", metrics.get("validation")), ("test", metrics.get("test"))):
        if scores:
            values: Mapping[str, object] = scores  # bundles from elsewhere may hold only some
            shown = ", ".join(
                f"{k} {v:.4f}"
                for k in ("cropland_iou", "background_iou", "mean_iou", "f1")
                if isinstance(v := values.get(k), float)
            )
            lines.append(f"  {split:<11}{shown}")
    return lines


def describe(meta: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> str:
    """A few aligned lines: what the model is, what it expects, how good it is, where from."""
    model = meta["model"]
    prov: Provenance = meta.get("provenance", {})
    parameters = sum(v.numel() for v in state_dict.values() if v.is_floating_point())
    stride = f", output stride {model['output_stride']}" if model.get("output_stride") else ""
    bands = ", ".join(f"{b}:{n}" for b, n in zip(meta["bands"], meta["band_names"], strict=True))
    pixel = meta.get("pixel_size")
    lines = [
        f"model id      {prov.get('model_id', '?')}",
        f"architecture  {model['arch']} / {model['encoder']}{stride} "
        f"({parameters / 1e6:.1f}M parameters, encoder weights: {model.get('encoder_weights')})",
        f"input bands   {bands}  ({meta.get('dtype')}, nodata {meta.get('nodata')})",
        f"chip size     {meta['chip_size']} px"
        + (f", pixel size {pixel[0]:g} x {pixel[1]:g} ({meta.get('crs')})" if pixel else ""),
        "normalization mean "
        + ", ".join(f"{v:.1f}" for v in meta["normalization"]["mean"])
        + " / std "
        + ", ".join(f"{v:.1f}" for v in meta["normalization"]["std"]),
        f"threshold     {meta['threshold']:.4f}   classes {meta.get('classes')}",
        *_field_lines(meta["fields"], meta.get("metrics", {})),
        "metrics",
        *_format_metrics(meta.get("metrics", {})),
        f"chip index    {prov.get('chip_index_fingerprint')}  ({prov.get('chips_dir')})",
        f"trained       {prov.get('created')}, {prov.get('epochs_run')} epochs "
        f"(best {prov.get('best_epoch')}), rs_seg {prov.get('versions', {}).get('rs-seg')}, "
        f"torch {prov.get('versions', {}).get('torch')}",
    ]
    return "\n".join(lines)


def _field_lines(settings: dict[str, Any], metrics: Mapping[str, Any]) -> list[str]:
    """The field settings, one line, with the validation object F1 where it was tuned."""
    boundary = settings.get("boundary_threshold")
    tuned = (metrics.get("validation") or {}).get("objects", {}).get("object_f1")
    return [
        f"fields        extent {settings['threshold']:.3f}, "
        + (f"boundary {boundary:.2f}, " if boundary is not None else "no boundary split, ")
        + f"min area {settings['min_area']:g}, grow {settings['grow']} px"
        + (f" (validation object F1 {tuned:.3f})" if isinstance(tuned, float) else "")
    ]


def now_iso() -> str:
    """UTC timestamp for provenance."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
