#!/usr/bin/env bash
# Packages that travel with benchmarks/gpu_job.py to a GPU machine that reaches no package index.
#
# The GPU machine (python3 3.12, torch 2.11+cu130, no internet; /work/.library/device/KINDS.md)
# lacks what the cohort job needs beyond torch and the scientific stack: Ray (and jsonschema, which
# Ray imports), Zarr 3 (numcodecs, donfig, google-crc32c), OpenSlide (openslide-python,
# openslide-bin) and imagecodecs (JPEG tiles of the phantom slide); for the GPU decode path, cuCIM
# with nvImageCodec and nvJPEG. Their wheels weigh ~160 MB (ray alone 79 MB) against 64 MiB for
# everything that travels, so what travels is their *installed trees*, pruned and xz-compressed:
#
#   .whl/job.tar.xz         Ray without its Java jar (35 MB), the dashboard's web client (the job
#                           runs with --no-dashboard), the libraries the job never imports (rllib,
#                           serve, tune, train) and the debug sections of its binaries; imagecodecs
#                           with its JPEG codec alone (tifffile writes and reads the phantom's tiles
#                           through imagecodecs.jpeg8_*); the others whole.
#   .whl/gpu_decode.tar.xz  cuCIM (its tests left out), nvImageCodec for CPython 3.12 with its
#                           nvJPEG / TIFF extensions (not OpenCV's or JPEG 2000's), libnvjpeg 13.0.
#                           Skipped with GPU_DECODE=0.
#
# .whl/ is git-ignored (.gitignore). On the GPU machine (carry: [".whl"]) the trees are unpacked
# into python3's own site-packages, as pip would install them (the machine is a fresh one each
# time; nvImageCodec's files go into the `nvidia` package folder the CUDA wheels already share):
#
#     SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
#     for a in .whl/*.tar.xz; do tar -xJf "$a" -C "$SP" || exit; done
#
# Usage (from the repository root, where PyPI is reachable): bash benchmarks/gpu_bundle.sh
# (PY=python to use another interpreter for pip; it need not be 3.12). Prints the size of every
# wheel, of each pruned tree and of each archive. Takes ~3 minutes on 2 cores (xz -9e).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
WORK=${WORK:-/tmp/tupac-gpu-bundle}   # wheels and staging stay outside the tree: only the archives travel
OUT_DIR=$ROOT/.whl
GPU_DECODE=${GPU_DECODE:-1}

# Pinned to the versions the project's venv runs (pyproject bounds: ray>=2.40,<3, zarr>=3,<4, ...).
JOB_PKGS=(
  ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
  openslide-python==1.4.7 openslide-bin==4.0.1.2
  imagecodecs==2026.3.6
)
# cupy-cuda13x, which cuCIM needs, is on the GPU machine already; libnvjpeg matches its CUDA 13.0.
DECODE_PKGS=(cucim-cu13==26.10.0 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.0.4.44)
PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
           --platform manylinux_2_5_x86_64)

mib() { awk '{s = $1; $1 = ""; printf "  %8.1f MiB %s\n", s / 1048576, $0}'; }

# pack NAME PRUNE_FUNCTION PACKAGE...: download, install for CPython 3.12 into a staging tree,
# prune, and write .whl/NAME.tar.xz.
pack() {
  local name=$1 prune=$2
  shift 2
  local wheels=$WORK/$name/wheels stage=$WORK/$name/site
  mkdir -p "$wheels" "$OUT_DIR"
  "$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d "$wheels" "$@" 2> >(grep -v '^WARNING: Location' >&2)
  echo "$name: wheels (CPython 3.12, manylinux x86_64)"
  for w in "$wheels"/*.whl; do echo "$(stat -c %s "$w") $(basename "$w")"; done | mib
  du -cb "$wheels"/*.whl | tail -1 | awk '{print $1, "all wheels"}' | mib
  # --target with --platform installs the cp312 wheels as pip would there (executable bits of
  # raylet and gcs_server kept), whatever Python runs this script.
  rm -rf "$stage"
  "$PY" -m pip install -q --no-deps --no-compile --only-binary=:all: "${PLATFORMS[@]}" --target "$stage" \
    "$wheels"/*.whl 2> >(grep -v '^WARNING: Location' >&2)
  (cd "$stage" && "$prune" && find . -name __pycache__ -prune -exec rm -rf {} + && rm -rf bin)
  du -sb "$stage" | awk '{print $1, "pruned installed tree"}' | mib
  tar -C "$stage" -cf - . | xz -T0 -9e > "$OUT_DIR/$name.tar.xz"
  echo "$(stat -c %s "$OUT_DIR/$name.tar.xz") .whl/$name.tar.xz (travels)" | mib
}

prune_job() {
  rm -rf ray/jars ray/dashboard/client/build ray/rllib ray/serve ray/tune ray/train
  find ray -name '*.map' -delete
  strip --strip-debug ray/_raylet.so ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server 2>/dev/null || true
  find imagecodecs -maxdepth 1 -name '_*.so' ! -name '_imcd.*' ! -name '_jpeg8.*' ! -name '_shared*' -delete
  find imagecodecs.libs -type f ! -name 'libjpeg-*' -delete
}

prune_decode() {
  find nvidia/nvimgcodec -name 'nvimgcodec_impl.cpython-*' ! -name '*cpython-312-*' -delete
  rm -f nvidia/nvimgcodec/extensions/libopencv_ext* nvidia/nvimgcodec/extensions/libnvjpeg2k_ext*
  find cucim -type d -name tests -prune -exec rm -rf {} +
}

pack job prune_job "${JOB_PKGS[@]}"
if [ "$GPU_DECODE" = 1 ]; then
  pack gpu_decode prune_decode "${DECODE_PKGS[@]}"
else
  rm -f "$OUT_DIR/gpu_decode.tar.xz"
fi
tracked=$(cd "$ROOT" && git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "$tracked tracked files of the working tree" | mib
du -cb "$OUT_DIR"/*.tar.xz | tail -1 | awk -v t="$tracked" '{print $1 + t, "travels in all (limit: 64 MiB)"}' | mib
