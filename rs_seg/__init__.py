"""rs_seg: cropland segmentation from satellite and aerial scenes to field polygons."""

from rs_seg import torchvision_shim

torchvision_shim.install()  # must run before anything imports torchvision (see its docstring)

__version__ = "0.1.0"
