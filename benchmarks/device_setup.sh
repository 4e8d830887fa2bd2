# Source at the start of a GPU-machine call (the `device` tool), from the project root:
#     source benchmarks/device_setup.sh && step 300 fusion benchmarks.encoder_fusion --fused --compile --name $OUT/x
# It installs the wheels carried in .whl/ (../shared/device/wheels.sh downloads them) into /tmp/site once per warm
# machine, installs rsrs from the tree, checks that every module a pipeline run imports is there (the workers fail
# later and less clearly otherwise), and defines `step`. Send each call's output to $OUT, run each step under a
# deadline: a call cut off by the tool's limit brings back only what is under $OUT.
#
# Carry limit (64 MiB with the tree): rasterio 1.4.3's wheel is 22 MB against 39 MB for 1.5.2, and pystac >= 1.15
# splits its extensions into pystac-ext-* wheels (projection, raster, xarray-assets are imported here). So:
#     ../shared/device/wheels.sh rioxarray pycocotools psutil tqdm rasterio==1.4.3 pyproj==3.7.1 \
#         pystac-ext-projection pystac-ext-raster pystac-ext-xarray-assets
# and move large tracked files the call does not need (docs/demo.png, benchmarks/results/traces*) out of the tree.

export PYTHONPATH=/tmp/site:$PWD RSRS_COMPILE_CACHE=/tmp/rsrs-inductor
_rsrs_imports="import rsrs.model, rsrs.workflows.run, benchmarks.run_gpu, rasterio, dask, distributed, rioxarray"
_rsrs_imports+=", pystac.extensions.projection, pystac.extensions.raster, pystac.extensions.xarray_assets"
python3 -c "$_rsrs_imports" 2>/dev/null || {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
}
python3 -c "$_rsrs_imports" || { echo "device_setup: a module is missing; add its wheel to .whl/ (see above)"; exit 3; }
mkdir -p "$OUT"
echo "device_setup: ready at ${SECONDS}s"

# step END NAME MODULE ARGS...: python3 -m MODULE ARGS, killed when the call's clock ($SECONDS) reaches END;
# its output goes to $OUT/log.txt between '== NAME' lines that give its exit status and times.
step() {
  local end=$1 name=$2
  shift 2
  echo "== $name start ${SECONDS}s" >> "$OUT/log.txt"
  timeout -s KILL $((end - SECONDS)) python3 -m "$@" >> "$OUT/log.txt" 2>&1
  echo "== $name rc=$? end ${SECONDS}s" >> "$OUT/log.txt"
}
