"""Deterministic synthetic farm landscapes: multi-band GeoTIFF scenes plus matching crop polygons.

Why synthetic scenes: demos, tests and benchmarks need realistic-looking inputs of any size,
offline, with labels that agree with the pixels exactly. Everything here is a pure function of
the config (hashes and RNGs seeded from ``cfg.seed``, never global state), so two runs with the
same config and library versions produce identical pixels and polygons.

Design, chosen so that a 20000 x 20000 scene renders in bounded memory:

* **One infinite landscape per seed, in global pixel coordinates.** Scenes are windows onto it at
  different, non-overlapping places, so scene ``k`` looks different from scene ``k + 1``. Each
  window is nudged by whole cells so that its centre lies in farmland (small scenes would
  otherwise sometimes be all forest). On the ground, scenes form rows with gaps in one UTM zone.
* **Cells.** A global grid of ~512 px cells with hash-jittered corners tiles the plane; cell edges
  are the road network. A cell's land cover (farmland, pasture, forest, lake, village) comes from
  low-frequency value noise at its centre, so forests and pastures form clusters. Its content comes
  from an RNG seeded by ``(seed, i, j)`` alone, so any cell can be rebuilt anywhere, in any order.
  Farmland is split recursively along slightly rotated, sometimes kinked lines into parcels of
  ~30-200 px, which are inset from the roads and from each other (field margins).
* **Objects in painter's layers.** A cell yields polygons (ground, parcels, lake/village overlays,
  river, roads) with a land-cover class and a spectral recipe: a ground and a canopy spectrum, a
  cover fraction, crop-row stripes along a per-parcel direction and period, and noise amplitudes.
* **Pixels.** A window (256 rows x <= 1024 columns) rasterizes the objects of the cells around it
  into an object-id raster and computes all bands vectorised from per-object arrays. All noise
  (crowns, within-field variation, haze, sensor grain) is a hash of global pixel coordinates, so a
  pixel does not depend on how the scene is cut into windows.
* **Labels.** A crop parcel minus what is painted over it (lake, village, river) is exactly the
  set of cropland pixels. When the renderer is done with a cell, its parcels are clipped to the
  scene, reprojected to EPSG:4326 and appended to ``fields.gpkg`` in small batches. Like real
  reference data, they are not cut at the nodata swath; consumers must mask nodata themselves.
* **Memory.** Only the current window, the one or two rows of cells it touches and a capped GDAL
  block cache are alive at any time, so peak memory does not grow with the scene size.

Modules, from the bottom up; each imports only from the ones listed before it:

* ``spectra``: material reflectances at anchor wavelengths, the band table (:func:`band_names`).
* ``noise``: stable hashes of (seed, purpose, coordinates) and value noise.
* ``objects``: land-cover classes (:class:`LandCover`), looks (the spectral recipe of an object)
  and the object tables cells hand to the renderer.
* ``landscape``: the cell grid and cell content (parcels, lakes, villages, rivers, roads, crop
  labels), with the geometry tools that cut and shape it.
* ``scenes``: where each scene lies in the landscape and on the ground (:func:`scene_specs`,
  :class:`SceneSpec`).
* ``render``: a window of a scene into band values and land-cover truth (:func:`render_window`).
* ``write``: GeoTIFF scenes, the GeoPackage labels and the summary (:func:`generate_scenes`).

This package re-exports the names other modules use; the rest is internal to it.
"""

from __future__ import annotations

from rs_seg.synthetic.objects import LandCover
from rs_seg.synthetic.render import RenderedWindow, render_window
from rs_seg.synthetic.scenes import SceneSpec, scene_specs
from rs_seg.synthetic.spectra import band_names
from rs_seg.synthetic.write import (
    CHUNK_COLS,
    LABELS_FILE,
    SynthResult,
    generate_scenes,
    reuse_or_generate,
)

__all__ = [
    "CHUNK_COLS",
    "LABELS_FILE",
    "LandCover",
    "RenderedWindow",
    "SceneSpec",
    "SynthResult",
    "band_names",
    "generate_scenes",
    "render_window",
    "reuse_or_generate",
    "scene_specs",
]
