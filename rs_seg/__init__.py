"""rs_seg: cropland segmentation from satellite and aerial scenes to field polygons."""

from rs_seg import _compat

_compat.install()  # must run before anything imports torchvision; see rs_seg/_compat.py

__version__ = "0.1.0"
