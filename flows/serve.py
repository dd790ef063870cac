"""Serve every rs_seg deployment from one process: ``make serve`` (or ``python -m flows.serve``).

Deployments are named after their flows, so ``prefect deployment run train-cropland/train-cropland``
(``<flow>/<deployment>``, with ``-p key=value`` overrides) works against the server in
``PREFECT_API_URL``. ``infer-new-imagery`` carries a schedule (every ``RS_SEG_INCOMING_INTERVAL``
seconds, 600 by default; ``RS_SEG_INCOMING_CRON`` takes a cron string instead) and the incoming
settings from ``configs/incoming.yaml`` when that file exists.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from prefect import serve

import rs_seg  # noqa: F401 - arms the torchvision shim before torch libraries are imported
from flows.infer_scene import infer_new_imagery, infer_scene
from flows.prepare_chips import prepare_chips
from flows.train_cropland import train_cropland
from rs_seg.config import IncomingConfig, build_config

INCOMING_CONFIG = Path(os.environ.get("RS_SEG_INCOMING_CONFIG", "configs/incoming.yaml"))


def _schedule() -> dict[str, Any]:
    cron = os.environ.get("RS_SEG_INCOMING_CRON")
    if cron:
        return {"cron": cron}
    return {"interval": int(os.environ.get("RS_SEG_INCOMING_INTERVAL", "600"))}


def deployments() -> list[Any]:
    """One deployment per flow, each named like its flow."""
    incoming: dict[str, Any] = {}
    if INCOMING_CONFIG.exists():
        incoming = {"config": build_config(IncomingConfig, "incoming", INCOMING_CONFIG, {})}
    return [
        prepare_chips.to_deployment(name="prepare-chips"),
        train_cropland.to_deployment(name="train-cropland"),
        infer_scene.to_deployment(name="infer-scene"),
        infer_new_imagery.to_deployment(
            name="infer-new-imagery", parameters=incoming, **_schedule()
        ),
    ]


def main() -> None:
    """Serve until interrupted; runs start within the runner's poll interval."""
    serve(*deployments())


if __name__ == "__main__":
    sys.exit(main())
