"""``python -m rs_seg`` runs the ``rs-seg`` command line."""

from rs_seg.cli import main

main()
