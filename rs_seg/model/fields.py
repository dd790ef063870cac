"""How a model's probabilities become fields: one type for tuning, bundles, rasters, vectorizing.

Evaluation tunes these settings on validation object F1, the bundle stores them, ``rs-seg infer``
applies them (with the user's overrides) and records them in the probability raster's tags, and
``rs-seg vectorize`` reads them back from there. One type, so a setting cannot mean one thing
where it is tuned and another where it is applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rs_seg.errors import RsSegError
from rs_seg.field_rule import GROW, FieldRule
from rs_seg.levels import threshold_to_level

DEFAULT_MIN_AREA = 500.0  # m², where neither the user nor the model says
MAX_GROW = 256  # pixels: streaming growth reads as many rows above and below each strip

OpenProbability = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]

# The probability raster's tags that record the settings its fields were made with.
THRESHOLD_TAG = "field_threshold_used"
BOUNDARY_TAG = "boundary_threshold_used"
MIN_AREA_TAG = "min_area_used"
GROW_TAG = "grow_used"
# The flag that overrides each setting, named in errors about a stored value.
_FLAGS = {
    "threshold": "--threshold",
    "boundary_threshold": "--boundary-threshold",
    "min_area": "--min-area",
    "grow": "--grow",
}


class FieldSettings(BaseModel):
    """Extent and boundary thresholds (probabilities), smallest field (m²) and boundary growth.

    ``boundary_threshold`` None: the connected cropland is the field (a cropland model, or a
    fields model vectorized without its boundary band).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    threshold: OpenProbability = 0.5
    boundary_threshold: OpenProbability | None = 0.5
    min_area: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    grow: Annotated[int, Field(ge=0, le=MAX_GROW)] = GROW

    @classmethod
    def checked(cls, **values: object) -> FieldSettings:
        """Settings from loose values (flags, tags), with one line naming what is wrong."""
        try:
            return cls.model_validate(values, strict=False)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = ".".join(str(part) for part in error["loc"])
            raise RsSegError(f"field setting {name}: {error['msg'].lower()}") from None

    def overridden(
        self,
        *,
        threshold: float | None = None,
        boundary_threshold: float | None = None,
        min_area: float | None = None,
        grow: int | None = None,
    ) -> FieldSettings:
        """These settings with each value the user gave in its place (None keeps the setting).

        A boundary threshold is only taken where the settings split by boundaries: a cropland
        model has no boundary band to apply it to.
        """
        given = {
            "threshold": threshold,
            "boundary_threshold": boundary_threshold if self.splits else None,
            "min_area": min_area,
            "grow": grow,
        }
        return self.checked(
            **{**self.model_dump(), **{k: v for k, v in given.items() if v is not None}}
        )

    def without_split(self) -> FieldSettings:
        """The same settings vectorizing connected cropland, without the boundary band."""
        return self.model_copy(update={"boundary_threshold": None})

    @property
    def splits(self) -> bool:
        """Whether touching fields are parted by a boundary band."""
        return self.boundary_threshold is not None

    def rule(self, pixel_area: float | None) -> FieldRule:
        """The raster rule these settings imply, minimum area in pixels of ``pixel_area`` m²."""
        boundary = self.boundary_threshold
        return FieldRule(
            threshold_to_level(self.threshold),
            None if boundary is None else threshold_to_level(boundary),
            self.min_area / (pixel_area or 1.0),
            self.grow,
        )

    def to_tags(self) -> dict[str, str]:
        """Raster tags, so ``rs-seg vectorize`` re-splits with the same settings by default."""
        tags = {
            THRESHOLD_TAG: f"{self.threshold:.6f}",
            MIN_AREA_TAG: f"{self.min_area:g}",
            GROW_TAG: str(self.grow),
        }
        if self.boundary_threshold is not None:
            tags[BOUNDARY_TAG] = f"{self.boundary_threshold:.6f}"
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> FieldSettings | None:
        """The settings :meth:`to_tags` stored, None for a raster that stores none.

        A stored value that is no number or out of range is refused with the flag that
        overrides it, so the user knows how to go on.
        """
        if not tags.get(THRESHOLD_TAG):
            return None
        names = {"threshold": THRESHOLD_TAG, "min_area": MIN_AREA_TAG, "grow": GROW_TAG,
                 "boundary_threshold": BOUNDARY_TAG}  # fmt: skip
        values: dict[str, object] = {"boundary_threshold": None}
        for setting, tag in names.items():
            if tags.get(tag):
                values[setting] = _stored_number(tags, tag, _FLAGS[setting])
        try:
            return cls.model_validate(values, strict=False)
        except ValidationError as exc:
            setting = str(exc.errors()[0]["loc"][0])
            raise RsSegError(
                f"stored {names[setting]} tag {tags[names[setting]]!r} is out of range; pass "
                f"{_FLAGS[setting]}"
            ) from None


def _stored_number(tags: Mapping[str, str], name: str, flag: str) -> float | int:
    text = tags[name]
    try:
        return int(text) if name == GROW_TAG else float(text)
    except ValueError:
        raise RsSegError(f"unreadable {name} tag in the raster: {text!r}; pass {flag}") from None
