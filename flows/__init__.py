"""Prefect flows: thin orchestration layers over the rs_seg stage functions.

rs_seg reports progress through the standard ``logging`` module (one line per epoch, per scene).
Naming its logger in ``PREFECT_LOGGING_EXTRA_LOGGERS`` (set here, before any flow module imports
Prefect, unless already set) sends those lines to the flow run's log in the Prefect UI; Prefect's
console handler prints them too once the logger passes INFO records, which it does not by default.
"""

import logging
import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "rs_seg")
# rs_seg also logs outside flow runs (the demo's set-up, plain function calls): no API warning.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
if logging.getLogger("rs_seg").level == logging.NOTSET:
    logging.getLogger("rs_seg").setLevel(logging.INFO)
