<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<!-- rs_seg field style: outlines only (no fill, so the imagery stays readable inside fields),
     a bright line over a dark casing so edges read on light and dark imagery at scene scale and
     at field scale; area labels (ha) from 1:25 000 inwards. -->
<qgis version="3.22.16-Białowieża" styleCategories="Symbology|Labeling|Fields|MapTips" labelsEnabled="1">
  <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0" referencescale="-1">
    <symbols>
      <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
        <data_defined_properties>
          <Option type="Map">
            <Option type="QString" name="name" value=""/>
            <Option name="properties"/>
            <Option type="QString" name="type" value="collection"/>
          </Option>
        </data_defined_properties>
        <layer class="SimpleLine" enabled="1" locked="0" pass="0">
          <Option type="Map">
            <Option type="QString" name="capstyle" value="round"/>
            <Option type="QString" name="joinstyle" value="round"/>
            <Option type="QString" name="line_color" value="20,20,20,190"/>
            <Option type="QString" name="line_style" value="solid"/>
            <Option type="QString" name="line_width" value="1.1"/>
            <Option type="QString" name="line_width_unit" value="MM"/>
            <Option type="QString" name="offset" value="0"/>
            <Option type="QString" name="offset_unit" value="MM"/>
          </Option>
          <prop k="capstyle" v="round"/>
          <prop k="joinstyle" v="round"/>
          <prop k="line_color" v="20,20,20,190"/>
          <prop k="line_style" v="solid"/>
          <prop k="line_width" v="1.1"/>
          <prop k="line_width_unit" v="MM"/>
          <prop k="offset" v="0"/>
          <prop k="offset_unit" v="MM"/>
        </layer>
        <layer class="SimpleLine" enabled="1" locked="0" pass="0">
          <Option type="Map">
            <Option type="QString" name="capstyle" value="round"/>
            <Option type="QString" name="joinstyle" value="round"/>
            <Option type="QString" name="line_color" value="255,221,0,255"/>
            <Option type="QString" name="line_style" value="solid"/>
            <Option type="QString" name="line_width" value="0.5"/>
            <Option type="QString" name="line_width_unit" value="MM"/>
            <Option type="QString" name="offset" value="0"/>
            <Option type="QString" name="offset_unit" value="MM"/>
          </Option>
          <prop k="capstyle" v="round"/>
          <prop k="joinstyle" v="round"/>
          <prop k="line_color" v="255,221,0,255"/>
          <prop k="line_style" v="solid"/>
          <prop k="line_width" v="0.5"/>
          <prop k="line_width_unit" v="MM"/>
          <prop k="offset" v="0"/>
          <prop k="offset_unit" v="MM"/>
        </layer>
      </symbol>
    </symbols>
    <rotation/>
    <sizescale/>
  </renderer-v2>
  <labeling type="simple">
    <settings calloutType="simple">
      <text-style fieldName="format_number(&quot;area_ha&quot;, 1) || ' ha'" isExpression="1" fontFamily="Sans Serif" fontSize="8" fontSizeUnit="Point" fontWeight="63" textColor="255,255,255,255" textOpacity="1" namedStyle="Bold" multilineHeight="1" allowHtml="0">
        <text-buffer bufferDraw="1" bufferSize="0.9" bufferSizeUnits="MM" bufferColor="20,20,20,230" bufferOpacity="1" bufferJoinStyle="128" bufferNoFill="1"/>
      </text-style>
      <text-format wrapChar="" multilineAlign="1" plussign="0" decimals="1" formatNumbers="0"/>
      <placement placement="1" fitInPolygonOnly="1" centroidInside="1" centroidWhole="0" priority="5" offsetType="0" overrunDistance="0"/>
      <rendering scaleVisibility="1" scaleMin="1" scaleMax="25000" obstacle="1" obstacleType="1" obstacleFactor="1" displayAll="0" upsidedownLabels="0" limitNumLabels="0" maxNumLabels="2000" minFeatureSize="0" fontMinPixelSize="3" fontMaxPixelSize="10000" fontLimitPixelSize="0" drawLabels="1" labelPerPart="0" mergeLines="0" zIndex="0"/>
    </settings>
  </labeling>
  <aliases>
    <alias field="field_id" index="1" name="Field"/>
    <alias field="area_ha" index="2" name="Area (ha)"/>
    <alias field="perimeter_m" index="3" name="Perimeter (m)"/>
    <alias field="mean_prob" index="4" name="Mean cropland probability"/>
    <alias field="scene" index="5" name="Scene"/>
    <alias field="model_id" index="6" name="Model"/>
    <alias field="date" index="7" name="Mapped on (UTC)"/>
  </aliases>
  <mapTip>field [% "field_id" %]: [% format_number("area_ha", 2) %] ha, mean probability [% format_number("mean_prob", 2) %]</mapTip>
  <previewExpression>"field_id"</previewExpression>
  <layerGeometryType>2</layerGeometryType>
</qgis>
