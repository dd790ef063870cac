<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<!-- rs_seg style: probability raster. Written by rs-seg infer beside <name>.tif as <name>.qml, which
     QGIS loads as the layer's default style; rs-seg replaces (with overwrite) only a file that still
     carries this comment, so a style saved from QGIS ("Save as Default") is the user's and never replaced. -->
<!-- Values: QGIS's GDAL provider applies the band's scale/offset (1/255, 0) to every block before
     the renderer sees it (QgsRasterDataProvider::block -> QgsRasterBlock::applyScaleOffset, QGIS 3.x
     including 3.22), so the ramp is on probabilities 0-1, not on the stored levels 0-254.
     Level 255 is the nodata value: QGIS draws it with nodataColor, empty here = transparent. -->
<qgis version="3.22.0-Białowieża" styleCategories="Symbology" hasScaleBasedVisibilityFlag="0" minScale="1e+08" maxScale="0">
  <pipe>
    <provider>
      <resampling enabled="false" maxOversampling="2" zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour"/>
    </provider>
    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" alphaBand="-1" classificationMin="0" classificationMax="1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <rastershader>
        <!-- Interpolated: colour and alpha blend between items. Fully transparent up to 0.3 (the
             imagery shows through where the model sees no cropland), then ever more opaque, up to
             70 % at p = 1, so the scene stays readable under confident cropland. -->
        <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0" minimumValue="0" maximumValue="1" labelPrecision="2">
          <item value="0" color="#ffffcc" alpha="0" label="0.00"/>
          <item value="0.3" color="#ffffcc" alpha="0" label="0.30"/>
          <item value="0.5" color="#fed976" alpha="100" label="0.50"/>
          <item value="0.7" color="#a1d76a" alpha="135" label="0.70"/>
          <item value="0.9" color="#4dac26" alpha="160" label="0.90"/>
          <item value="1" color="#1b7837" alpha="175" label="1.00 cropland probability"/>
        </colorrampshader>
      </rastershader>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0" colorizeRed="255" colorizeGreen="128" colorizeBlue="128" colorizeStrength="100" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
