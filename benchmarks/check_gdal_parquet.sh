#!/usr/bin/env bash
# Does a real GDAL (ogrinfo, its Parquet driver) read the fiboa GeoParquet that rs_seg writes?
#
# Why the detour: Debian 12's GDAL 3.6 and the GDAL inside the pyogrio/rasterio wheels have no
# Parquet driver, and Debian's own GDAL (trixie, sid) is built without Arrow. Debian sid does ship
# libarrow-dev/libparquet-dev and libgdal-dev, so this bootstraps a sid chroot, builds only GDAL's
# Parquet driver from the matching GDAL source as a standalone plugin (ogr/ogrsf_frmts/parquet has
# a STANDALONE CMake mode, as conda-forge's libgdal-arrow-parquet uses), and then checks two files
# made by rs_seg (the `rs-seg vectorize -o *.parquet` CLI, and one written in many row groups)
# with ogrinfo, the osgeo API against geopandas, GDAL's validate_geoparquet.py --check-data and
# the geoparquet-validator wheel (whose embedded GeoParquet 1.1.0 JSON schema GDAL's validator
# gets too: it would otherwise download it from GitHub, which is not reachable here).
#
# Usage (as root): benchmarks/check_gdal_parquet.sh [CHROOT_DIR]  (default /tmp/rs_seg_gdal_sid)
# A rerun reuses the chroot and the plugin. Full output: $REPORT (default /tmp/gdal_parquet_check.txt).
# Exit 0: all checks passed, or "SKIP" printed (not root, no debootstrap); 1: a check failed.
set -euo pipefail

ROOT=$(realpath -m "${1:-/tmp/rs_seg_gdal_sid}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
REPORT=${REPORT:-/tmp/gdal_parquet_check.txt}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
GPV=geoparquet-validator==0.2.0

[[ $EUID -eq 0 ]] || { echo "SKIP: needs root (debootstrap, chroot)"; exit 0; }
command -v debootstrap >/dev/null || { echo "SKIP: no debootstrap (apt-get install debootstrap)"; exit 0; }

TIMES=()
step() { local name=$1 t0=$SECONDS; shift; echo "== $name" >&2; "$@"; TIMES+=("$name: $((SECONDS - t0))s"); }
in_root() {
  chroot "$ROOT" /usr/bin/env -i DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 HOME=/root \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin bash -euo pipefail -c "$1"
}

bootstrap() {
  [[ -x $ROOT/usr/bin/apt-get ]] || nice -n 19 debootstrap --variant=minbase sid "$ROOT" "$MIRROR" >/dev/null
  if ! mountpoint -q "$ROOT/proc"; then mount -t proc proc "$ROOT/proc"; trap 'umount "$ROOT/proc"' EXIT; fi
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  printf 'deb %s sid main\ndeb-src %s sid main\n' "$MIRROR" "$MIRROR" >"$ROOT/etc/apt/sources.list"
  # The mirror's sid Release file can read as expired against this machine's clock.
  echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99rs-seg"
  in_root "apt-get update -qq && nice -n 19 apt-get install -y -qq --no-install-recommends \
    gdal-bin libgdal-dev libarrow-dev libparquet-dev libarrow-dataset-dev libarrow-acero-dev \
    cmake g++ make pkgconf python3-gdal python3-jsonschema xz-utils dpkg-dev ca-certificates >/dev/null"
}

build_plugin() {
  # The driver uses GDAL's private headers: the source must be the exact installed version
  # (its CMake enforces that). Only the orig tarball is needed (the mirror may lack the .dsc).
  in_root 'ver=$(dpkg-query -W -f="\${source:Version}" libgdal-dev)
    [[ -f /build/plugin.version && $(cat /build/plugin.version) == "$ver" ]] && exit 0
    rm -rf /build && mkdir /build && cd /build
    apt-get source -qq --download-only --tar-only "gdal=$ver" 2>&1 | grep -v -e NOTICE -e unsandboxed || true
    tar xf gdal_*.orig.tar.xz
    src=$(echo /build/gdal-*/ogr/ogrsf_frmts/parquet)
    nice -n 19 cmake -S "$src" -B /build/parquet -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr >/build/cmake.log 2>&1
    nice -n 19 make -C /build/parquet -j2 >/build/make.log 2>&1 || { tail -30 /build/make.log; exit 1; }
    cmake --install /build/parquet >/dev/null
    echo "$ver" >/build/plugin.version'
  in_root 'ogrinfo --formats | grep -q "Parquet -vector-"'
}

make_parquet() {
  # Two rs_seg files from a synthetic UTM 33N probability raster (fields of several shapes, some
  # with holes): one through the CLI, one through vectorize() with 40 fields per row group.
  mkdir -p "$ROOT/check"
  "$PY" -m pip download -q --no-deps -d "$ROOT/check/wheel" "$GPV"
  (cd "$ROOT/check" && rm -rf gpv && "$PY" -m zipfile -e wheel/geoparquet_validator-*.whl gpv)
  HF_HUB_OFFLINE=1 "$PY" - "$ROOT/check" <<'EOF'
import glob, json, re, subprocess, sys
from pathlib import Path
import geopandas as gpd, numpy as np, pyarrow.parquet as pq, rasterio
from rasterio.transform import from_origin
import rs_seg.infer.field_layer as layer_module, rs_seg.infer.vectorize as module
from rs_seg.infer.vectorize import VectorizeSettings, vectorize

out = Path(sys.argv[1])
rng = np.random.default_rng(7)
prob = np.zeros((640, 640), np.uint8)
for i in range(0, 640, 40):
    for j in range(0, 640, 40):
        h, w = rng.integers(12, 37, 2)
        prob[i + 2 : i + 2 + h, j + 2 : j + 2 + w] = rng.integers(140, 256)
        if h > 24 and w > 24 and rng.random() < 0.3:
            prob[i + 8 : i + 14, j + 8 : j + 14] = 0  # a 3600 m2 hole: kept (holes < 500 m2 are filled)
        if rng.random() < 0.2:
            prob[i + 2 : i + 8, j + 2 : j + 8] = 0  # an L shape
profile = dict(driver="GTiff", height=640, width=640, count=1, dtype="uint8", crs="EPSG:32633",
               transform=from_origin(500_000.0, 5_300_000.0, 10.0, 10.0), tiled=True)
with rasterio.open(out / "prob.tif", "w", **profile) as dst:
    dst.write(prob, 1)
cli = Path(sys.executable).with_name("rs-seg")
subprocess.run([str(cli), "vectorize", str(out / "prob.tif"), "-o", str(out / "fields.parquet"),
                "--threshold", "0.5", "--overwrite"], check=True)
module.BATCH = layer_module.BATCH = 40
(out / "fields_rowgroups.parquet").unlink(missing_ok=True)
vectorize(out / "prob.tif", out / "fields_rowgroups.parquet", VectorizeSettings(), scene="north",
          model_id="m1")
expected = {}
for name in ("fields.parquet", "fields_rowgroups.parquet"):
    df = gpd.read_parquet(out / name)
    expected[name] = {"count": len(df), "epsg": df.crs.to_epsg(), "ids": list(df["id"]),
                      "area": df["area"].astype(float).tolist(),
                      "geom_area": float(df.geometry.area.sum()),
                      "row_groups": pq.ParquetFile(out / name).metadata.num_row_groups,
                      "dtypes": {c: str(t) for c, t in df.dtypes.items()}}
(out / "expected.json").write_text(json.dumps(expected))
# The GeoParquet 1.1.0 JSON schema, as embedded (verbatim) in the geoparquet-validator binary.
blob = Path(glob.glob(str(out / "gpv/geoparquet_validator/_native*.so"))[0]).read_bytes()
for m in re.finditer(rb'"title": "GeoParquet"', blob):
    start = blob.rfind(b"{\n", 0, m.start())
    schema, _ = json.JSONDecoder().raw_decode(blob[start : start + 100_000].decode("utf-8", "replace"))
    if schema["properties"]["version"].get("const") == "1.1.0":
        (out / "geoparquet-1.1.0.schema.json").write_text(json.dumps(schema, indent=2))
        break
else:
    sys.exit("no GeoParquet 1.1.0 schema found in the geoparquet-validator wheel")
print({k: (v["count"], v["row_groups"]) for k, v in expected.items()})
EOF
}

compare() {  # GDAL's reading of each file against geopandas', in the chroot's osgeo
  in_root 'cd /check && python3 - <<\EOF
import json
from osgeo import gdal, ogr
gdal.UseExceptions()
ok = True
for name, exp in json.load(open("expected.json")).items():
    ds = gdal.OpenEx(name, gdal.OF_VECTOR, allowed_drivers=["Parquet"])
    lyr = ds.GetLayer(0)
    defn = lyr.GetLayerDefn()
    srs = lyr.GetSpatialRef()
    srs.AutoIdentifyEPSG()
    feats = list(lyr)
    ids = [f["id"] for f in feats]
    area = [f["area"] for f in feats]
    geom_area = sum(f.GetGeometryRef().GetArea() for f in feats)
    types = {defn.GetFieldDefn(i).GetName(): ogr.GetFieldTypeName(defn.GetFieldDefn(i).GetType())
             + ("(" + ogr.GetFieldSubTypeName(defn.GetFieldDefn(i).GetSubType()) + ")"
                if defn.GetFieldDefn(i).GetSubType() else "") for i in range(defn.GetFieldCount())}
    checks = {
        "driver Parquet": ds.GetDriver().ShortName == "Parquet",
        "count %d (GDAL) == %d (geopandas)" % (lyr.GetFeatureCount(), exp["count"]):
            lyr.GetFeatureCount() == len(feats) == exp["count"],
        "EPSG:%s" % srs.GetAuthorityCode(None): srs.GetAuthorityCode(None) == str(exp["epsg"]),
        "geometry column %r %s" % (lyr.GetGeometryColumn(), ogr.GeometryTypeToName(lyr.GetGeomType())):
            lyr.GetGeometryColumn() == "geometry" and lyr.GetGeomType() == ogr.wkbMultiPolygon,
        "ids and areas as geopandas": ids == exp["ids"]
            and all(abs(a - b) <= 1e-6 * abs(b) for a, b in zip(area, exp["area"])),
        "geometry area %.1f m2 as geopandas" % geom_area: abs(geom_area - exp["geom_area"]) < 1e-3,
        "fiboa types": types["id"] == "String" and types["area"] == types["perimeter"] == "Real(Float32)"
            and types["determination_method"] == "String" and types["determination_datetime"] == "DateTime",
        "fiboa file metadata 0.2.0": json.loads(lyr.GetMetadataItem("fiboa", "_PARQUET_METADATA_")
            or "{}").get("fiboa_version") == "0.2.0",
    }
    print("%s (%d row groups): fields %s" % (name, exp["row_groups"], types))
    for what, good in checks.items():
        print("  [%s] %s" % ("ok" if good else "FAIL", what))
        ok &= good
raise SystemExit(0 if ok else 1)
EOF'
}

check() {
  local fail=0 f
  in_root 'ogrinfo --version; ogrinfo --formats | grep -i parquet' || fail=1
  for f in fields.parquet fields_rowgroups.parquet; do
    in_root "cd /check && ogrinfo -ro -al -so $f && ogrinfo -ro -al -q $f >/tmp/all.txt && head -30 /tmp/all.txt" || fail=1
    echo "-- GDAL validate_geoparquet.py --check-data $f"
    if in_root "cd /check && python3 /usr/share/doc/python3-gdal/examples/validate_geoparquet.py \
        --check-data --schema geoparquet-1.1.0.schema.json $f"; then echo "GDAL validator: OK $f"
    else echo "GDAL validator: FAIL $f"; fail=1; fi
    echo "-- geoparquet-validator check $f (core, covering: the bbox column, distribution)"
    if PYTHONPATH=$ROOT/check/gpv "$PY" -c 'import sys, geoparquet_validator as g
g.main(["check", sys.argv[1]]); r = g.check(sys.argv[1])
sys.exit(0 if all(g.conformant(r, c) for c in ("core", "covering", "distribution")) else 1)' \
        "$ROOT/check/$f"; then echo "geoparquet-validator: core, covering, distribution OK $f"
    else echo "geoparquet-validator: FAIL $f"; fail=1; fi
  done
  echo "-- GDAL (osgeo) against geopandas"
  compare || fail=1
  CHECK_FAILED=$fail
}

step "chroot + packages" bootstrap
step "build Parquet plugin" build_plugin
step "rs_seg parquet" make_parquet
CHECK_FAILED=1
step "GDAL checks" check >"$REPORT" 2>&1
status=$CHECK_FAILED
echo "== summary (full output: $REPORT)"
grep -E "^GDAL [0-9]|Parquet -vector-|^  \[(ok|FAIL)\]|validator: |row groups\): " "$REPORT" || true
printf '%s\n' "${TIMES[@]}"
[[ $status -eq 0 ]] && echo "PASS: GDAL's Parquet driver reads rs_seg's fiboa GeoParquet" || echo "FAIL: see $REPORT"
exit $status
