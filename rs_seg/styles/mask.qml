<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<!-- rs_seg style: cropland mask. Written by rs-seg infer beside <name>.tif as <name>.qml, which
     QGIS loads as the layer's default style; rs-seg replaces (with overwrite) only a file that still
     carries this comment, so a style saved from QGIS ("Save as Default") is the user's and never replaced. -->
<!-- Values: 1 cropland, 0 background, 255 nodata (the raster's nodata value: QGIS draws it with
     nodataColor, empty here = transparent). The mask has no scale/offset, so these are the stored
     values. -->
<qgis version="3.22.0-Białowieża" styleCategories="Symbology" hasScaleBasedVisibilityFlag="0" minScale="1e+08" maxScale="0">
  <pipe>
    <provider>
      <resampling enabled="false" maxOversampling="2" zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour"/>
    </provider>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
        <paletteEntry value="0" color="#f0f0f0" alpha="0" label="background (0)"/>
        <paletteEntry value="1" color="#4dac26" alpha="170" label="cropland (1)"/>
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0" colorizeRed="255" colorizeGreen="128" colorizeBlue="128" colorizeStrength="100" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
