"""Training with Lightning: trainer, callbacks, devices, resume and the work folder of a run.

A run folder (:class:`rs_seg.run_folder.RunFolder`) holds ``train.yaml`` (the config),
``normalization.json`` (train-split statistics), ``checkpoints/{best,last}.ckpt``,
``history.json`` (one row per epoch) and ``run.json`` (status).
Evaluation (:func:`rs_seg.evaluate.run.train_and_evaluate`) then adds the model bundle, metrics and
report. A run that fails before its first checkpoint is removed; a later failure leaves a consistent
folder that ``--resume`` continues from ``last.ckpt`` at the right epoch with optimizer and schedule
state.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar

from rs_seg.config import TrainConfig
from rs_seg.errors import RsSegError
from rs_seg.model.networks import check_names, count_parameters
from rs_seg.model.normalization import Normalization
from rs_seg.prepare.index import read_target
from rs_seg.run_folder import (
    RUN_FOLDER,
    RunFolder,
    best_epoch_of,
    checkpoint_problem,
    read_status,
    replacement_folder,
    write_status,
)
from rs_seg.staging import (
    check_folder_output,
    check_not_inputs,
    check_not_interrupted,
    is_disk_full,
    staging_path,
    write_json,
)
from rs_seg.train.chip_cache import remove_caches, training_caches
from rs_seg.train.dataset import (
    ChipDataModule,
    ChipSplits,
    auto_workers,
    band_statistics,
    load_chip_splits,
)
from rs_seg.train.module import CroplandModule

log = logging.getLogger(__name__)
# Lightning sets its loggers to INFO when imported; its start-up banner and tips are noise in our
# logs (warnings still show). The progress bar and our one line per epoch say what matters.
for _name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

MONITOR = "val/iou"
# Settings that define what a run learns; resuming with any of them changed is refused.
RESUME_KEYS = ("model", "loss", "optimizer", "augment", "batch_size", "seed")
# Rank 0 tells the DDP processes Lightning starts which folder this run trains in.
RUN_DIR_ENV = "RS_SEG_RUN_DIR"


class InterruptSeen(Callback):
    """Remembers a Ctrl-C or SIGTERM during ``fit``.

    Lightning turns both into ``sys.exit(1)`` after its graceful shutdown; re-raising the interrupt
    lets the command line report it as such (exit 130 or 143, nothing partial kept).
    """

    def __init__(self) -> None:
        self.seen: KeyboardInterrupt | None = None

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """An interrupt that library code swallowed stops training at the next batch."""
        check_not_interrupted()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Likewise while validating."""
        check_not_interrupted()

    def on_exception(
        self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException
    ) -> None:
        """Keep the interrupt; other exceptions propagate on their own."""
        if isinstance(exception, KeyboardInterrupt):
            self.seen = exception


class EpochHistory(Callback):
    """One row per finished epoch in ``history.json``, restored with the checkpoint on resume.

    It also starts every epoch's optimisation steps from a global torch random state that depends
    only on the run's seed and the epoch (:func:`epoch_seed`), so dropout and anything else drawing
    from it continue after ``--resume`` exactly as in an uninterrupted run. (The chip order and the
    augmentation are seeded per epoch by :class:`rs_seg.train.dataset.EpochSampler`.)
    """

    def __init__(self, path: Path, epochs: int, seed: int | None = None) -> None:
        self.path = path
        self.epochs = epochs
        # The seed train() gave seed_everything, which runs before the trainer is built.
        self.seed = seed if seed is not None else _global_seed()
        self.rows: list[dict[str, float]] = []
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Start the epoch clock."""
        self._started = time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Reseed the global random state before the epoch's first step.

        Not at epoch start: the loader iterator draws from it when it is created, which happens
        after the epoch-start hooks in an uninterrupted run but before them after ``--resume``.
        """
        if batch_idx == 0:
            torch.manual_seed(epoch_seed(self.seed, trainer.current_epoch))

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Record losses, validation IoU and learning rate; log one readable line."""
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics

        def value(key: str) -> float:
            return float(metrics[key]) if key in metrics else math.nan

        row = {
            "epoch": trainer.current_epoch + 1,
            "train_loss": value("train/loss"),
            "val_loss": value("val/loss"),
            "val_iou": value("val/iou"),
            "val_mean_iou": value("val/mean_iou"),
            "lr": float(trainer.optimizers[0].param_groups[1]["lr"]),
            "seconds": round(time.perf_counter() - self._started, 2),
        }
        self.rows.append(row)
        if trainer.is_global_zero:
            write_json(self.path, self.rows)
            log.info(
                "epoch %d/%d  train loss %.4f  val loss %.4f  val IoU %.4f  mIoU %.4f  (%.0f s)",
                row["epoch"], self.epochs, row["train_loss"], row["val_loss"], row["val_iou"],
                row["val_mean_iou"], row["seconds"],
            )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint, so a resumed run keeps its earlier epochs."""
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the rows of the epochs before the checkpoint."""
        self.rows = list(state_dict.get("rows", []))


def _global_seed() -> int:
    """The seed of the last ``seed_everything`` (Lightning keeps it in ``PL_GLOBAL_SEED``)."""
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value else int(torch.initial_seed())


def epoch_seed(seed: int, epoch: int) -> int:
    """The global torch seed of an epoch's optimisation steps: a function of seed and epoch."""
    state = np.random.SeedSequence([seed % 2**32, 0x5EED, epoch]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) | (int(state[1]) >> 1)


@dataclass(frozen=True)
class Hardware:
    """Where and how training runs, resolved from the config's ``auto`` settings."""

    accelerator: str
    precision: str
    num_workers: int

    @property
    def on_gpu(self) -> bool:
        """True for CUDA/MPS training."""
        return self.accelerator != "cpu"


def resolve_hardware(cfg: TrainConfig) -> Hardware:
    """GPU when there is one; bf16 (or fp16) mixed precision on GPUs, fp32 on CPUs."""
    accelerator = cfg.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precision = cfg.precision
    if precision == "auto":
        if accelerator == "cpu":
            precision = "32-true"
        else:
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            precision = "bf16-mixed" if bf16 else "16-mixed"
    workers = cfg.num_workers
    if workers == "auto":
        workers = auto_workers(on_gpu=accelerator != "cpu")
    return Hardware(accelerator, precision, int(workers))


# Rank variables of Lightning's own launcher (LOCAL_RANK, NODE_RANK), torchrun (RANK, GROUP_RANK)
# and SLURM's srun (SLURM_PROCID): any of them above 0 marks a process other than global rank 0.
_RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK", "GROUP_RANK", "SLURM_PROCID")


def is_ddp_child() -> bool:
    """True in every DDP process but global rank 0 (they re-run the command and only train)."""
    return any(int(os.environ.get(name) or "0") > 0 for name in _RANK_VARIABLES)


def _resume_key(cfg: TrainConfig, fingerprint: str) -> dict[str, Any]:
    dump = cfg.model_dump(mode="json")
    return {**{k: dump[k] for k in RESUME_KEYS}, "chip_index": fingerprint}


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


def check_resumable(run: Path, cfg: TrainConfig, fingerprint: str) -> Path:
    """The checkpoint to resume from.

    Refuses a run that is still training, a checkpoint that is damaged or incomplete (e.g. cut
    short by a kill while it was written), and a run trained with other settings or chips.
    """
    last = RunFolder(run).last_checkpoint
    if not last.exists():
        raise RsSegError("nothing to resume: no checkpoints/last.ckpt in the run folder", run)
    status = read_status(run)
    if status.get("status") == "running" and status.get("host") == socket.gethostname():
        raise RsSegError(
            f"the run is still training (pid {status.get('pid')}); wait for it to end or stop it "
            "before resuming",
            run,
        )
    problem = checkpoint_problem(last)
    if problem:
        raise RsSegError(
            f"cannot resume: the checkpoint is {problem}; start the run again with --overwrite "
            "(or train into another --out)",
            last,
        )
    saved = yaml.safe_load(RunFolder(run).config.read_text())
    old_key = saved.get("resume_key", {})
    changed = _differences(old_key, _resume_key(cfg, fingerprint))
    if changed:
        raise RsSegError(
            "cannot resume: the run was trained with other settings ("
            + "; ".join(changed[:4])
            + "); start a new run with another --out",
            run,
        )
    return last


@dataclass(frozen=True)
class TrainOutcome:
    """What :func:`train` leaves behind for evaluation."""

    run: Path
    best_checkpoint: Path
    epochs_run: int
    best_epoch: int | None


def work_folder(cfg: TrainConfig, resume: bool) -> Path:
    """The folder this run trains in: ``out`` itself, or its replacement beside it.

    A new run trains in ``out`` when that is free (a killed run there is resumable). When
    ``--overwrite`` replaces an earlier run, the new one trains beside it and the earlier one stays
    untouched until the new one has succeeded. ``--resume`` continues an interrupted replacement
    if there is one, otherwise the run in ``out``. What a dead earlier attempt left beside ``out``
    is removed (rank 0 only, after the inputs were checked); a live one is never touched.
    """
    if is_ddp_child():
        return _ddp_work_folder(cfg)
    out = Path(cfg.out)
    replacement = replacement_folder(out)
    state, status = _replacement_state(out)
    if state == "live":
        raise RsSegError(
            f"another training run (pid {status.get('pid')}) is replacing this run right now in "
            f"{replacement.name}",
            out,
        )
    if resume and state == "resumable":
        return replacement
    if resume and status.get("replaces"):
        raise RsSegError(
            f"the new run in {replacement.name} was interrupted before its first checkpoint, so "
            "there is nothing to resume; start it again with --overwrite",
            out,
        )
    if state != "none":
        if state == "resumable":
            log.warning("discarding the interrupted new run in %s (--resume would continue it)",
                        replacement)  # fmt: skip
        shutil.rmtree(replacement)  # a dead attempt's folder, or an old run a swap moved aside
    if not resume and out.is_dir() and any(out.iterdir()):
        return replacement
    return out


def _replacement_state(out: Path) -> tuple[str, dict[str, Any]]:
    """What the replacement folder beside ``out`` holds: none, live, resumable or stale.

    ``resumable`` is a replacement (its run.json says whom it ``replaces``) with a checkpoint;
    ``stale`` is anything else left there: a replacement killed before its first checkpoint, or
    the earlier run that a swap moved aside before a kill.
    """
    folder = replacement_folder(out)
    if not folder.exists():
        return "none", {}
    try:
        status = read_status(folder)  # a dead run's "running" reads as "interrupted"
    except RsSegError:
        status = {}
    if status.get("status") == "running":
        return "live", status
    if status.get("replaces") and RunFolder(folder).last_checkpoint.exists():
        return "resumable", status
    return "stale", status


def _ddp_work_folder(cfg: TrainConfig) -> Path:
    """Rank 0's choice: from the environment (Lightning's launcher), else where it appears."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    out = Path(cfg.out)
    replacement = replacement_folder(out)
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:  # torchrun / srun start every rank at once
        for folder in (replacement, out):
            if RunFolder(folder).normalization.exists():
                return folder
        time.sleep(0.5)
    raise RsSegError("DDP worker: rank 0 never wrote normalization.json", out)


def _check_out(cfg: TrainConfig) -> None:
    """Before any work: ``out`` is not the chips, and is free or a run folder we may replace."""
    out = Path(cfg.out)
    check_not_inputs([out], [cfg.chips])
    check_folder_output(out, cfg.overwrite, RUN_FOLDER)


def _prepare_run(
    cfg: TrainConfig, run: Path, resume: bool, splits: ChipSplits
) -> tuple[Normalization, Path | None]:
    """Create (or re-open) the work folder ``run``; returns normalization and the checkpoint."""
    if is_ddp_child():
        return _wait_for_normalization(run), None
    if resume:
        checkpoint = check_resumable(run, cfg, splits.fingerprint)
        stats = json.loads(RunFolder(run).normalization.read_text())
        return Normalization.from_dict(stats), checkpoint
    train_images, _ = splits.paths("train")
    log.info("normalization statistics from %d train chips ...", len(train_images))
    normalization = band_statistics(train_images, splits.bands)
    RunFolder(run).checkpoints.mkdir(parents=True, exist_ok=True)
    document = {
        "train": cfg.model_dump(mode="json"),
        "resume_key": _resume_key(cfg, splits.fingerprint),
    }
    RunFolder(run).config.write_text(yaml.safe_dump(document, sort_keys=False))
    write_json(
        RunFolder(run).normalization, {**normalization.to_dict(), "bands": list(splits.bands)}
    )
    return normalization, None


def _wait_for_normalization(run: Path, timeout: float = 120.0) -> Normalization:
    path = RunFolder(run).normalization
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RsSegError("DDP worker: rank 0 never wrote normalization.json", run)
        time.sleep(0.5)
    stats = json.loads(path.read_text())
    return Normalization.from_dict(stats)


class CheckpointsBesideTheRun(TorchCheckpointIO):
    """Checkpoints written to a staging file in their own folder, then renamed into place.

    Lightning's own atomic save stages in the system temp folder and moves the file over; where
    that is another file system the move is a copy, and a kill or a full disk during it leaves a
    truncated ``last.ckpt``. One rename in the same folder cannot be seen half done.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Save ``checkpoint`` at ``path`` in one rename; a failure leaves the old file."""
        if storage_options is not None:
            raise TypeError("storage_options are not supported by rs_seg's checkpoint writer")
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = staging_path(final)
        try:
            torch.save(checkpoint, temporary)
            temporary.replace(final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def build_trainer(cfg: TrainConfig, hardware: Hardware, progress: bool) -> L.Trainer:
    """A Lightning trainer with checkpoints, early stopping, history and the chosen devices."""
    run = cfg.out
    callbacks: list[Callback] = [
        # Two writers: Lightning's save_last only refreshes last.ckpt on epochs that improve the
        # best, and a resume must continue from the latest epoch, not the best one.
        ModelCheckpoint(
            dirpath=RunFolder(run).checkpoints,
            filename="best",
            monitor=MONITOR,
            mode="max",
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        ModelCheckpoint(
            dirpath=RunFolder(run).checkpoints,
            filename="last",
            monitor=None,
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        EpochHistory(RunFolder(run).history, cfg.epochs),
    ]
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStopping(MONITOR, mode="max", patience=cfg.early_stopping_patience))
    if progress:
        callbacks.append(TQDMProgressBar())
    if hardware.on_gpu:
        torch.set_float32_matmul_precision("high")
    return L.Trainer(
        accelerator=hardware.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=hardware.precision,  # type: ignore[arg-type]
        max_epochs=cfg.epochs,
        limit_train_batches=cfg.limit_train_batches,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=True if not hardware.on_gpu else None,
        num_sanity_val_steps=0,
        default_root_dir=run,
        plugins=[CheckpointsBesideTheRun()],
    )


def with_task(cfg: TrainConfig) -> TrainConfig:
    """The config with ``model.task`` decided: what the chips' masks hold, unless it is given.

    The run records the decided task (``train.yaml``, checkpoints, the bundle), so evaluation,
    resuming and inference never guess it again.
    """
    available = read_target(cfg.chips)
    task = cfg.model.task or available
    if task == "fields" and available != "fields":
        raise RsSegError(
            "model.task fields needs chips with field boundaries (rs-seg prepare with vector "
            "labels and a boundary_width other than 0); these masks are cropland only",
            cfg.chips,
        )
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"task": task})})


def train(cfg: TrainConfig, resume: bool = False, progress: bool = False) -> TrainOutcome | None:
    """Train a model on a prepared chip folder; ``None`` in DDP worker processes.

    Inputs and the output folder are checked before anything is written. A run that replaces an
    earlier one trains beside it (:func:`work_folder`);
    :func:`rs_seg.evaluate.run.train_and_evaluate` puts it in place once it is evaluated. GPU
    out-of-memory ends in a one-line hint.
    """
    check_names(cfg.model)
    cfg = with_task(cfg)
    rank_zero = not is_ddp_child()
    if rank_zero and not resume:
        _check_out(cfg)
    splits = load_chip_splits(cfg.chips, cfg.model.bands)
    hardware = resolve_hardware(cfg)
    work = work_folder(cfg, resume)
    normalization, checkpoint = _prepare_run(cfg, work, resume, splits)
    if rank_zero:
        os.environ[RUN_DIR_ENV] = str(work)  # inherited by the processes Lightning launches
    running = cfg.model_copy(update={"out": work})
    interrupts = InterruptSeen()
    # From here on the work folder is this run's: a failure or an interrupt at any point (also
    # while the network is built, before run.json says "running") is recorded or cleaned up.
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module = CroplandModule(
            model=cfg.model.model_dump(mode="json"),
            in_channels=len(splits.bands),
            loss=cfg.loss.model_dump(mode="json"),
            optimizer=cfg.optimizer.model_dump(mode="json"),
            channels_last=cfg.channels_last,
            load_weights=checkpoint is None,
        )
        data = ChipDataModule(
            splits, normalization, cfg.augment, cfg.batch_size, hardware.num_workers, cfg.seed,
            pin_memory=hardware.on_gpu, caches=training_caches(splits, cfg.cache_chips, work),
        )  # fmt: skip
        _log_start(running, splits, hardware, module, resume)
        trainer = build_trainer(running, hardware, progress)
        # Lightning's callback connector sets Trainer.callbacks, which Trainer does not declare.
        trainer.callbacks.append(interrupts)  # type: ignore[attr-defined]
        if rank_zero:
            write_status(work, "running", pid=os.getpid(),
                         replaces=str(cfg.out) if work != cfg.out else None)  # fmt: skip
        trainer.fit(module, datamodule=data, ckpt_path=checkpoint)
        check_not_interrupted()  # one that arrived after the last batch
    except BaseException as exc:
        full = is_disk_full(exc, work.parent)  # before a failed run's folder frees the space
        if rank_zero:
            remove_caches(work)
        _record_failure(running, interrupts.seen or exc, Path(cfg.out))
        if _is_oom(exc):
            raise _out_of_memory(cfg) from None
        if full:
            raise RsSegError(
                "no space left on the device while writing the run; free some space or train "
                "into another --out"
                + (" (the earlier run there is untouched)" if work != cfg.out else ""),
                cfg.out,
            ) from None
        if interrupts.seen is not None:
            # Ctrl-C / SIGTERM, not Lightning's exit(1) after its shutdown, nor the error its
            # teardown raises when the interrupt came before the loaders were iterated.
            raise interrupts.seen from None
        raise
    if not trainer.is_global_zero or is_ddp_child():
        return None
    remove_caches(work)
    return _finish(running, trainer)


def _log_start(
    cfg: TrainConfig, splits: ChipSplits, hw: Hardware, module: CroplandModule, resume: bool
) -> None:
    counts = splits.counts()
    log.info(
        "%s %s/%s (%.1fM parameters), bands %s, chips train %d / val %d / test %d, "
        "%s %s, batch %d, %d loader workers",
        "resuming" if resume else "training", cfg.model.arch, cfg.model.encoder,
        count_parameters(module) / 1e6, list(splits.bands), counts["train"], counts["val"],
        counts["test"], hw.accelerator, hw.precision, cfg.batch_size, hw.num_workers,
    )  # fmt: skip


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _out_of_memory(cfg: TrainConfig) -> RsSegError:
    smaller = max(1, cfg.batch_size // 2)
    return RsSegError(
        f"out of memory at batch_size {cfg.batch_size}; try --batch-size {smaller} "
        "(or precision bf16-mixed, or a smaller encoder)",
        cfg.out,
    )


def _record_failure(cfg: TrainConfig, exc: BaseException, out: Path) -> None:
    """A run without any checkpoint is removed; otherwise it is marked resumable.

    ``cfg.out`` is the work folder; when it is a replacement, the earlier run in ``out`` was never
    touched, and the log says so.
    """
    if is_ddp_child() or not cfg.out.exists():
        return
    if cfg.out != out:
        log.warning("%s: the new run failed; the earlier run there is untouched", out)
    if not RunFolder(cfg.out).last_checkpoint.exists():
        shutil.rmtree(cfg.out, ignore_errors=True)
        return
    # Lightning turns Ctrl-C into SystemExit after a graceful shutdown.
    status = "interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else "failed"
    write_status(cfg.out, status, error=f"{type(exc).__name__}: {exc}"[:500], resumable=True)


def _finish(cfg: TrainConfig, trainer: L.Trainer) -> TrainOutcome:
    checkpoint = trainer.checkpoint_callback  # the first ModelCheckpoint of build_trainer, or None
    best = (
        Path(checkpoint.best_model_path)
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path
        else None
    )
    if best is None or not best.exists():
        best = RunFolder(cfg.out).last_checkpoint
    history = json.loads(RunFolder(cfg.out).history.read_text())
    best_epoch = best_epoch_of(history)
    write_status(cfg.out, "trained", epochs_run=len(history), best_epoch=best_epoch)
    return TrainOutcome(cfg.out, best, len(history), best_epoch)
