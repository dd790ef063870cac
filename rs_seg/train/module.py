"""The Lightning module: a segmentation network with its loss, validation metrics and schedule.

Kept apart from the fit so that evaluation and bundles can rebuild the network from a checkpoint
without the training loop's machinery.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryStatScores

from rs_seg.config import (
    MASK_BOUNDARY,
    MASK_CROPLAND,
    MASK_IGNORE,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
)
from rs_seg.model.networks import build_model, encoder_of
from rs_seg.train.metrics import extent_target, metrics_from_counts

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig


def bce_dice_loss(
    logits: torch.Tensor,
    positive: torch.Tensor,
    valid: torch.Tensor,
    cfg: LossConfig,
    pos_weight: float = 1.0,
) -> torch.Tensor:
    """BCE + soft Dice over labelled pixels only: ignore (255) adds nothing to loss or gradient.

    Dice is computed over the whole batch rather than per chip, so chips without any positive
    pixel do not produce an undefined or maximal Dice term. ``pos_weight`` weights the BCE of
    positive pixels (thin boundaries).
    """
    logits = logits.float()
    positive, valid = positive.float(), valid.float()
    labelled = valid.sum().clamp(min=1.0)
    weight = torch.tensor(pos_weight, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, positive, reduction="none", pos_weight=weight)
    prob = torch.sigmoid(logits) * valid
    overlap = (prob * positive).sum()
    dice = 1.0 - (2.0 * overlap + 1.0) / (prob.sum() + positive.sum() + 1.0)
    return cfg.bce_weight * (bce * valid).sum() / labelled + cfg.dice_weight * dice


def task_loss(logits: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Extent loss (cropland = 1 or 2), plus the boundary loss when there is a boundary output.

    ``logits`` is (N, outputs, H, W); ``target`` the 0/1/2/255 mask chips.
    """
    valid = target != MASK_IGNORE
    loss = bce_dice_loss(logits[:, 0], extent_target(target) == MASK_CROPLAND, valid, cfg)
    if logits.shape[1] > 1:
        boundary = target == MASK_BOUNDARY
        loss = loss + cfg.boundary_weight * bce_dice_loss(
            logits[:, 1], boundary, valid, cfg, cfg.boundary_pos_weight
        )
    return loss


def lr_factor(step: int, warmup: int, total: int, min_ratio: float, frozen: int = 0) -> float:
    """Linear warm-up then cosine decay; 0 while a parameter group is frozen (encoder warm-up)."""
    if step < frozen:
        return 0.0
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CroplandModule(L.LightningModule):
    """A cropland (or fields: extent + boundary) network with its loss, metrics and optimizer."""

    def __init__(
        self,
        model: dict[str, Any],
        in_channels: int,
        loss: dict[str, Any],
        optimizer: dict[str, Any],
        channels_last: bool = True,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["load_weights"])
        self.model_cfg = ModelConfig.model_validate(model)
        self.loss_cfg = LossConfig.model_validate(loss)
        self.optim_cfg = OptimizerConfig.model_validate(optimizer)
        self.channels_last = channels_last
        self.net = build_model(self.model_cfg, in_channels, load_weights=load_weights)
        if channels_last:
            # Module.to accepts memory_format, but torch's overloads of it leave it out.
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.val_stats = BinaryStatScores(threshold=0.5, ignore_index=MASK_IGNORE)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, outputs, H, W): cropland extent, then field boundary for the fields task."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits: torch.Tensor = self.net(images)
        return logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        """One optimisation step on an augmented batch."""
        images, target = batch
        loss = task_loss(self(images), target, self.loss_cfg)
        self.log(
            "train/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(images)
        )
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        """Loss and confusion counts at 0.5 (the threshold is tuned after training)."""
        images, target = batch
        logits = self(images)
        loss = task_loss(logits, target, self.loss_cfg)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(images))
        self.val_stats.update(torch.sigmoid(logits[:, 0].float()), extent_target(target).long())

    def on_validation_epoch_end(self) -> None:
        """Cropland and mean IoU of the epoch, synchronised across processes by torchmetrics."""
        tp, fp, tn, fn, _ = (float(v) for v in self.val_stats.compute())
        self.val_stats.reset()
        scores = metrics_from_counts(tp, fp, tn, fn)
        # Already global (torchmetrics synchronised the counts); sync_dist keeps Lightning quiet.
        self.log("val/iou", _finite(scores["cropland_iou"]), sync_dist=True)
        self.log("val/mean_iou", _finite(scores["mean_iou"]), sync_dist=True)

    def on_train_epoch_start(self) -> None:
        """Keep encoder batch-norm statistics fixed while the encoder is frozen."""
        if self.current_epoch < self.optim_cfg.freeze_encoder_epochs:
            encoder_of(self.net).eval()

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """AdamW, encoder and head as separate groups so the encoder can be frozen first."""
        cfg = self.optim_cfg
        encoder = list(encoder_of(self.net).parameters())
        ids = {id(p) for p in encoder}
        head = [p for p in self.net.parameters() if id(p) not in ids]
        optimizer = torch.optim.AdamW(
            [{"params": encoder}, {"params": head}], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = round(cfg.warmup_epochs * per_epoch)
        min_ratio = cfg.min_lr_ratio
        frozen = cfg.freeze_encoder_epochs * per_epoch
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            [
                functools.partial(
                    lr_factor, warmup=warmup, total=total, min_ratio=min_ratio, frozen=frozen
                ),
                functools.partial(lr_factor, warmup=warmup, total=total, min_ratio=min_ratio),
            ],
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _finite(value: float) -> float:
    return 0.0 if math.isnan(value) else value
