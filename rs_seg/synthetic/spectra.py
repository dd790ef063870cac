"""Spectra: material reflectances at anchor wavelengths and the band tables of the scenes.

At the bottom of the package: every look is painted with these spectra, and :func:`band_names`
(the band descriptions of a scene, which callers need before or without any scene) must answer
without building a landscape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rs_seg.errors import RsSegError

# Reflectance x 10000 at anchor wavelengths; any band is interpolated linearly between them, so
# the number of bands changes neither the landscape nor the spectra of the common bands.
ANCHOR_WAVELENGTHS_NM = np.array(
    [443, 490, 560, 665, 705, 740, 783, 842, 945, 1240, 1610, 2190], float
)
_MATERIALS: dict[str, tuple[float, ...]] = {
    "soil": (600, 700, 950, 1300, 1450, 1550, 1650, 1750, 1850, 2300, 2600, 2300),
    "soil_dry": (950, 1100, 1450, 1850, 2000, 2100, 2200, 2300, 2400, 2900, 3300, 2900),
    "wheat": (250, 330, 650, 330, 1000, 2600, 3500, 3900, 3900, 3000, 2000, 950),
    "maize": (270, 360, 720, 380, 1150, 3000, 4000, 4400, 4350, 3300, 2100, 1000),
    "barley": (420, 520, 880, 950, 1500, 2400, 2900, 3100, 3200, 3100, 2800, 1900),
    "rapeseed": (330, 420, 1250, 1050, 1800, 3200, 3900, 4200, 4150, 3300, 2200, 1100),
    "sugar_beet": (220, 290, 640, 270, 950, 2900, 4200, 4700, 4650, 3500, 1900, 820),
    "weeds": (320, 420, 780, 560, 1200, 2300, 2800, 3000, 3000, 2800, 2300, 1350),
    "grass": (280, 370, 760, 450, 1150, 2600, 3200, 3500, 3450, 2900, 2100, 1100),
    "grass_dry": (600, 700, 1000, 1150, 1400, 1850, 2150, 2350, 2400, 2700, 2900, 2200),
    "canopy": (170, 240, 480, 220, 680, 2000, 2800, 3100, 3050, 2200, 1300, 540),
    "shadow": (110, 140, 230, 140, 280, 650, 950, 1050, 1050, 780, 480, 240),
    "water": (700, 650, 560, 300, 250, 200, 170, 150, 120, 100, 90, 80),
    "water_turbid": (700, 700, 760, 520, 480, 420, 380, 350, 300, 200, 120, 100),
    "asphalt": (850, 900, 950, 1000, 1050, 1080, 1100, 1150, 1200, 1350, 1500, 1400),
    "gravel": (1100, 1250, 1500, 1750, 1850, 1950, 2000, 2100, 2200, 2600, 3000, 2700),
    "roof_grey": (1700, 1800, 1900, 2000, 2050, 2100, 2150, 2200, 2250, 2450, 2700, 2500),
    "roof_red": (750, 800, 950, 2000, 2400, 2650, 2750, 2850, 2900, 3100, 3300, 2900),
    "roof_dark": (550, 580, 620, 680, 700, 720, 740, 760, 790, 880, 980, 930),
}

# Band order: the six common bands by wavelength, then extras; see band_names().
_CORE_BANDS = (
    ("blue", 490),
    ("green", 560),
    ("red", 665),
    ("nir", 842),
    ("swir16", 1610),
    ("swir22", 2190),
)
_EXTRA_BANDS = (
    ("rededge1", 705),
    ("rededge2", 740),
    ("rededge3", 783),
    ("nir08", 865),
    ("coastal", 443),
    ("nir09", 945),
    ("yellow", 610),
    ("swir12", 1240),
    ("swir20", 2040),
    ("deepblue", 412),
)


def band_table(count: int) -> list[tuple[str, int]]:
    """Band names and centre wavelengths; NIR appears exactly when there are 4 bands or more."""
    if count == 1:
        return [("red", 665)]
    if count == 2:
        return [("green", 560), ("red", 665)]
    if count <= len(_CORE_BANDS):
        return list(_CORE_BANDS[:count])
    extras = count - len(_CORE_BANDS)
    if extras > len(_EXTRA_BANDS):
        raise RsSegError(f"at most {len(_CORE_BANDS) + len(_EXTRA_BANDS)} bands are supported")
    return list(_CORE_BANDS) + list(_EXTRA_BANDS[:extras])


def band_names(count: int) -> list[str]:
    """The band descriptions a scene with ``count`` bands gets, in band order."""
    return [name for name, _ in band_table(count)]


def band_interpolation_matrix(wavelengths: Sequence[float]) -> np.ndarray:
    """Matrix (bands x anchors) that turns an anchor spectrum into band values in one product."""
    eye = np.eye(len(ANCHOR_WAVELENGTHS_NM))
    return np.array(
        [[np.interp(w, ANCHOR_WAVELENGTHS_NM, row) for row in eye] for w in wavelengths]
    )


def material_spectrum(name: str) -> np.ndarray:
    """Reflectance x 10000 of a named material at :data:`ANCHOR_WAVELENGTHS_NM`."""
    return np.asarray(_MATERIALS[name], dtype=np.float64)
