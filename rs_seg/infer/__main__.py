"""``python -m rs_seg.infer scene.tif -o fields.gpkg``: the same command as ``rs-seg infer``."""

from __future__ import annotations

import sys

from rs_seg.cli import app


def main(argv: list[str] | None = None) -> None:
    """Run ``rs-seg infer`` with the given arguments (default: the process arguments)."""
    app(["infer", *(sys.argv[1:] if argv is None else argv)], prog_name="python -m rs_seg.infer")


if __name__ == "__main__":
    main()
