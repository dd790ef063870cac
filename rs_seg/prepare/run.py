"""Chip preparation: scenes + labels (or an existing chip folder) in, chips + index + split out.

The work is split into three steps so the CLI and the Prefect flow share them:
:func:`plan_prepare` checks every input before anything is written (cheap header reads), then
:func:`chip_scene` cuts one scene (the unit the flow distributes), and :func:`finish` splits the
chips and writes the index. :func:`prepare` runs all three inside a staging folder that becomes the
output only when everything succeeded.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import shapely
from tqdm import tqdm

from rs_seg.config import PrepareConfig
from rs_seg.errors import RsSegError
from rs_seg.prepare.chips import (
    ChipSettings,
    LabelSource,
    RasterLabels,
    SceneChipper,
    SceneChips,
    SceneInput,
    VectorLabels,
)
from rs_seg.prepare.index import (
    CONFIG_FILE,
    INDEX_FILE,
    SUMMARY_FILE,
    PrepareSummary,
    build_index,
    mask_target,
    write_outputs,
)
from rs_seg.prepare.labels import is_vector_path
from rs_seg.prepare.split import SceneLayout, assign_splits
from rs_seg.prepare.vector_labels import VectorLayer
from rs_seg.rasters import RasterInfo
from rs_seg.staging import FolderKind, check_folder_output, check_not_inputs, staged_dir
from rs_seg.windows import axis_offsets

log = logging.getLogger(__name__)
_WILDCARD = re.compile(r"[*?\[]")
CHIP_FOLDER = FolderKind(
    "rs-seg prepare", SUMMARY_FILE, ("images", "masks", INDEX_FILE, SUMMARY_FILE, CONFIG_FILE)
)
"""What ``rs-seg prepare`` writes: ``--overwrite`` replaces such a folder and nothing else."""


def expand_paths(patterns: list[str], role: str = "scene") -> list[Path]:
    """Expand paths and glob patterns (``**`` recurses) into a sorted, de-duplicated file list."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        if _WILDCARD.search(pattern):
            matches = sorted(
                Path(p)
                for p in glob.glob(pattern, recursive=True)  # noqa: PTH207 - absolute patterns if Path(p).is_file()
            )
            if not matches:
                raise RsSegError(f"{role} pattern matched no files", pattern)
        else:
            if not Path(pattern).exists():
                raise RsSegError(f"{role} not found", pattern)
            matches = [Path(pattern)]
        found.update(dict.fromkeys(matches))
    return list(found)


def unique_names(paths: list[Path]) -> list[str]:
    """Short, unique, filesystem-safe names: the stem, or the path below the common folder."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    return [
        re.sub(r"[^\w.-]+", "_", p.resolve().relative_to(root).with_suffix("").as_posix())
        for p in paths
    ]


def _glob_root_and_key(path: Path, root: Path, pattern: str) -> str:
    """The part of ``path`` matched by the wildcard part of ``pattern``, without its suffix."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if _WILDCARD.search(part)), len(parts) - 1)
    base = root.joinpath(*parts[:fixed])
    return path.relative_to(base).with_suffix("").as_posix()


def pair_chip_folder(root: Path, image_glob: str, mask_glob: str) -> list[SceneInput]:
    """Pair images and masks of a VOC-style folder by their path below the globs' fixed parts.

    ``image/farmland/1.tif`` pairs with ``label_gray/farmland/1.tif`` for the globs
    ``image/**/*.tif`` and ``label_gray/**/*.tif``; ``JPEGImages/a.jpg`` with
    ``SegmentationClass/a.png``.
    """
    if not root.is_dir():
        raise RsSegError("chip folder not found", root)
    images = {_glob_root_and_key(p, root, image_glob): p for p in sorted(root.glob(image_glob))}
    masks = {_glob_root_and_key(p, root, mask_glob): p for p in sorted(root.glob(mask_glob))}
    if not images:
        raise RsSegError(f"no images match {image_glob!r}", root)
    if not masks:
        raise RsSegError(f"no masks match {mask_glob!r}", root)
    keys = sorted(images.keys() & masks.keys())
    if not keys:
        raise RsSegError("no image has a mask with the same relative name", root)
    unpaired = len(images) - len(keys)
    if unpaired:
        log.warning("%d images in %s have no mask and are left out", unpaired, root)
    names = [re.sub(r"[^\w.-]+", "_", key) for key in keys]
    return [SceneInput(n, images[k], masks[k]) for n, k in zip(names, keys, strict=True)]


@dataclass
class PreparePlan:
    """Everything checked and resolved before the first chip is written."""

    config: PrepareConfig
    scenes: list[SceneInput]
    infos: dict[str, RasterInfo]
    labels: LabelSource
    aoi: VectorLayer | None
    settings: ChipSettings

    @property
    def total_windows(self) -> int:
        """Grid windows over all scenes (for progress bars)."""
        size, stride = self.settings.size, self.settings.stride
        return sum(
            len(axis_offsets(i.height, size, stride)) * len(axis_offsets(i.width, size, stride))
            for i in self.infos.values()
        )

    def chipper(self, scene: SceneInput, out_dir: Path) -> SceneChipper:
        """The chipper of one scene writing into ``out_dir``."""
        return SceneChipper(scene, self.infos[scene.name], self.settings, out_dir, self.aoi)


def _check_bands(infos: dict[str, RasterInfo]) -> None:
    first = next(iter(infos.values()))
    for info in infos.values():
        if info.count != first.count:
            raise RsSegError(
                f"has {info.count} bands but {first.path.name} has {first.count}; "
                "all scenes of one chip set need the same bands",
                info.path,
            )


STEM_PLACEHOLDER = "{stem}"


def _scene_inputs(cfg: PrepareConfig) -> list[SceneInput]:
    """Scenes to chip, each with its own label raster when ``labels`` names one per scene."""
    if cfg.chips_dir is not None:
        return pair_chip_folder(cfg.chips_dir, cfg.image_glob, cfg.mask_glob)
    paths = expand_paths(cfg.scenes)
    template = str(cfg.labels) if STEM_PLACEHOLDER in str(cfg.labels) else None
    scenes = []
    for name, path in zip(unique_names(paths), paths, strict=True):
        mask = Path(template.replace(STEM_PLACEHOLDER, path.stem)) if template else None
        if mask is not None and not mask.exists():
            raise RsSegError(f"label raster for scene {path.name} not found", mask)
        scenes.append(SceneInput(name, path, mask))
    return scenes


def _label_source(cfg: PrepareConfig) -> LabelSource:
    if cfg.chips_dir is None and cfg.labels is not None and is_vector_path(cfg.labels):
        layer = VectorLayer(cfg.labels, "labels", cfg.label_layer, cfg.label_where)
        return VectorLabels(layer, cfg.boundary_width)
    if cfg.label_map is None:  # chip folders always have one (PrepareConfig checks)
        raise RsSegError(
            "labels are a raster: give a --label-map such as '255=cropland'", cfg.labels
        )
    if cfg.chips_dir is not None or STEM_PLACEHOLDER in str(cfg.labels):
        return RasterLabels(cfg.label_map)  # each scene carries its own mask path
    return RasterLabels(cfg.label_map, shared_path=cfg.labels)


def _check_vector_overlap(labels: VectorLabels, infos: dict[str, RasterInfo]) -> None:
    """Vector labels must reach at least one scene; scenes they miss are only warned about."""
    hits = {}
    for name, info in infos.items():
        if info.crs is None:
            raise RsSegError(
                f"scene has no CRS, so vector labels ({labels.layer.path.name}) cannot be placed",
                info.path,
            )
        hits[name] = labels.layer.count_in(info.bounds, info.crs)
    if not any(hits.values()):
        raise RsSegError(
            f"labels overlap none of the {len(infos)} scenes (check the CRS of labels and scenes)",
            labels.layer.path,
        )
    missed = [n for n, count in hits.items() if count == 0]
    if missed:
        log.warning(
            "%d scenes have no label polygon and count as all background: %s",
            len(missed),
            ", ".join(missed[:5]) + (" ..." if len(missed) > 5 else ""),
        )


def _input_paths(cfg: PrepareConfig, scenes: list[SceneInput]) -> list[Path]:
    """Every file or folder the run reads: none of them may lie in the output folder."""
    paths = [s.image for s in scenes] + [s.mask for s in scenes if s.mask is not None]
    return paths + [Path(p) for p in (cfg.labels, cfg.aoi, cfg.chips_dir) if p is not None]


def plan_prepare(cfg: PrepareConfig) -> PreparePlan:
    """Resolve and check all inputs; raises :class:`RsSegError` before anything is written."""
    scenes = _scene_inputs(cfg)
    check_not_inputs([cfg.out], _input_paths(cfg, scenes))
    check_folder_output(cfg.out, cfg.overwrite, CHIP_FOLDER)
    infos = {s.name: RasterInfo.read(s.image, "scene") for s in scenes}
    _check_bands(infos)
    labels = _label_source(cfg)
    labels.check(scenes)  # label rasters: header checks, before anything is written
    if isinstance(labels, VectorLabels):
        _check_vector_overlap(labels, infos)
    aoi = VectorLayer(cfg.aoi, "AOI", None, None) if cfg.aoi is not None else None
    settings = ChipSettings(
        cfg.chip_size, cfg.effective_stride, cfg.max_nodata_fraction, cfg.compression
    )
    return PreparePlan(cfg, scenes, infos, labels, aoi, settings)


def chip_scene(
    plan: PreparePlan, scene: SceneInput, out_dir: Path, on_chip: Callable[[], None] | None = None
) -> SceneChips:
    """Cut one scene into chips under ``out_dir`` (the unit of work a flow can distribute)."""
    return plan.chipper(scene, out_dir).run(plan.labels, on_chip)


def _layouts(plan: PreparePlan, results: list[SceneChips]) -> dict[str, SceneLayout]:
    layouts = {}
    for result in results:
        info = result.info
        footprint = None
        if info.crs is not None:
            box = gpd.GeoSeries([shapely.box(*info.bounds)], crs=info.crs)
            footprint = box.to_crs("EPSG:4326").iloc[0]
        px, py = info.pixel_size
        stride = plan.settings.stride
        layouts[result.scene.name] = SceneLayout(
            name=result.scene.name,
            grid_rows=result.grid_shape[0],
            grid_cols=result.grid_shape[1],
            crs_key=info.crs.to_string() if info.crs is not None else None,
            block_metres=(stride * px, stride * py),
            footprint_wgs84=footprint,
        )
    return layouts


def finish(plan: PreparePlan, results: list[SceneChips], out_dir: Path) -> PrepareSummary:
    """Split the chips of all scenes and write the index, summary and config into ``out_dir``."""
    chips = build_index(results)
    if len(chips) == 0:
        skipped: Counter[str] = Counter()
        for result in results:
            skipped.update(result.skipped)
        raise RsSegError(f"no chips were produced (skipped: {dict(skipped)})", plan.config.out)
    outcome = assign_splits(chips, _layouts(plan, results), plan.config.split)
    chips["block"] = outcome.block
    chips["split"] = outcome.split
    return write_outputs(plan.config, chips, results, outcome, out_dir)


def prepare(cfg: PrepareConfig, progress: bool = False) -> PrepareSummary:
    """Run chip preparation end to end; the output appears only when everything succeeded."""
    plan = plan_prepare(cfg)
    with (
        staged_dir(cfg.out, cfg.overwrite, CHIP_FOLDER) as staging,
        tqdm(total=plan.total_windows, unit="chip", disable=not progress, desc="chips") as bar,
    ):
        results = [chip_scene(plan, scene, staging, bar.update) for scene in plan.scenes]
        summary = finish(plan, results, staging)
    return summary.moved_to(cfg.out)


def chips_up_to_date(cfg: PrepareConfig) -> tuple[bool, str]:
    """Whether ``cfg.out`` already holds the chips this config would produce, and why (not).

    Lets a scheduled pipeline skip re-chipping when nothing changed: the chip folder must be
    complete, prepared with the same settings (``overwrite`` aside) from the same set of input
    files, and every input must still have the size and modification time it had then. Content is
    not hashed (scenes are large); a changed mtime counts as a change.

    Returns:
        ``(True, "up to date")`` or ``(False, reason)`` with a short human-readable reason.
    """

    def differences(old: object, new: object, prefix: str = "") -> list[str]:
        if isinstance(old, dict) and isinstance(new, dict):
            keys = sorted(set(old) | set(new))
            return [d for k in keys for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
        return [] if old == new else [prefix.rstrip(".")]

    def current_inputs() -> set[str]:  # what write_outputs would list as inputs today
        scenes = _scene_inputs(cfg)
        paths = [s.image for s in scenes] + [s.mask for s in scenes if s.mask is not None]
        paths += [Path(p) for p in (cfg.labels, cfg.aoi) if p is not None and Path(p).exists()]
        return {str(Path(p)) for p in paths}

    out = Path(cfg.out)
    for name in (INDEX_FILE, SUMMARY_FILE):
        if not (out / name).is_file():
            return False, f"no {name} in {out}"
    try:
        summary = json.loads((out / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return False, f"{out / SUMMARY_FILE} cannot be read"
    made, wanted = summary.get("target"), mask_target(cfg)
    if made != wanted:  # another label kind
        return False, f"the chips hold {made} masks, this config makes {wanted} masks"
    old = {k: v for k, v in summary.get("config", {}).items() if k != "overwrite"}
    changed = differences(old, json.loads(cfg.model_dump_json(exclude={"overwrite"})))
    if changed:
        return False, f"config changed: {', '.join(changed)}"
    stored = {str(e["path"]): e for e in summary.get("inputs", [])}
    try:
        now = current_inputs()
    except RsSegError as exc:
        return False, f"inputs cannot be resolved now ({exc})"
    if now - stored.keys():
        return False, f"new input {sorted(now - stored.keys())[0]}"
    if stored.keys() - now:
        return False, f"input {sorted(stored.keys() - now)[0]} is no longer selected"
    for path, entry in stored.items():
        stat = Path(path).stat()
        if (stat.st_size, stat.st_mtime_ns) != (entry.get("bytes"), entry.get("mtime_ns")):
            return False, f"input {path} changed (size or modification time)"
    return True, "up to date"
