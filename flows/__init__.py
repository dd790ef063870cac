"""Prefect flows: thin orchestration layers over the rs_seg stage functions.

rs_seg reports progress through the standard ``logging`` module (one line per epoch, per scene).
Naming its logger in ``PREFECT_LOGGING_EXTRA_LOGGERS`` (set here, before any flow module imports
Prefect, unless already set) sends those lines to the flow run's log in the Prefect UI; Prefect
attaches only its API handler, so the console handler and the INFO level are added here.
"""

import logging
import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "rs_seg")


def _log_rs_seg_to_console() -> None:
    logger = logging.getLogger("rs_seg")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not any(type(h) is logging.StreamHandler for h in logger.handlers):
        handler = logging.StreamHandler()
        layout = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s"
        handler.setFormatter(logging.Formatter(layout, datefmt="%H:%M:%S"))
        logger.addHandler(handler)


_log_rs_seg_to_console()
