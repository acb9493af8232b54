#!/usr/bin/env bash
# Packages that travel with benchmarks/gpu_job.py to a GPU machine that reaches no package index.
#
# The GPU machine (python3 3.12, torch 2.11+cu130; see /work/.library/device/KINDS.md) lacks what
# the cohort job needs beyond torch and the scientific stack: Ray (and jsonschema, which Ray
# imports), Zarr 3 (numcodecs, donfig, google-crc32c), OpenSlide (openslide-python and
# openslide-bin) and imagecodecs (JPEG tiles of the phantom slide). Their wheels for CPython 3.12
# weigh ~118 MB (ray alone 79 MB) against 64 MiB for everything that travels, so what travels is
# an *installed tree* of them, pruned and compressed with xz:
#
# - Ray without its Java jar (35 MB), the dashboard's web client (static files; the job runs with
#   --no-dashboard), the libraries the job does not import (rllib, serve, tune, train) and debug
#   symbols of _raylet.so (strip --strip-debug: the code is the same, only the DWARF goes);
# - imagecodecs with the JPEG codec alone (tifffile writes and reads the phantom's JPEG tiles
#   through imagecodecs.jpeg8_*; the other 50 codecs and their libraries are left here);
# - the others whole.
#
# Output: .whl/site.tar.xz (git-ignored through .git/info/exclude: `echo /.whl/ >>
# .git/info/exclude` once). On the GPU machine (carry: [".whl"]):
#
#     mkdir -p /tmp/site && tar -xJf .whl/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
#
# Usage (from the repository root, where PyPI is reachable): bash benchmarks/gpu_bundle.sh
# Prints the size of every wheel, of the pruned tree and of the archive.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
CACHE=${CACHE:-/tmp/tupac-gpu-bundle/wheels}   # downloads stay outside the tree: only the archive travels
STAGE=${STAGE:-/tmp/tupac-gpu-bundle/site}
OUT_DIR=$ROOT/.whl
OUT=$OUT_DIR/site.tar.xz

# Pinned to the versions the project's venv runs (pyproject bounds: ray>=2.40,<3, zarr>=3,<4, ...).
PKGS=(
  ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
  openslide-python==1.4.7 openslide-bin==4.0.1.2
  imagecodecs==2026.3.6
)
PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
           --platform manylinux_2_5_x86_64)

mkdir -p "$CACHE" "$OUT_DIR"
"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d "$CACHE" "${PKGS[@]}"
echo "wheels (CPython 3.12, manylinux x86_64):"
ls -l "$CACHE"/*.whl | awk '{printf "  %8.1f MiB  %s\n", $5 / 1048576, $9}'
du -cb "$CACHE"/*.whl | tail -1 | awk '{printf "  %8.1f MiB  all wheels\n", $1 / 1048576}'

# --target with --platform installs the cp312 wheels as they would be installed there (scripts,
# executable bits of raylet and gcs_server kept), whatever Python runs this script.
rm -rf "$STAGE"
"$PY" -m pip install -q --no-deps --no-compile --only-binary=:all: "${PLATFORMS[@]}" --target "$STAGE" "$CACHE"/*.whl

cd "$STAGE"
rm -rf ray/jars ray/dashboard/client/build ray/rllib ray/serve ray/tune ray/train bin
find ray -name '*.map' -delete
strip --strip-debug ray/_raylet.so ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server 2>/dev/null || true
find imagecodecs -maxdepth 1 -name '_*.so' ! -name '_imcd.*' ! -name '_jpeg8.*' ! -name '_shared*' -delete
find imagecodecs.libs -type f ! -name 'libjpeg-*' -delete
find . -name __pycache__ -prune -exec rm -rf {} +
du -sb . | awk '{printf "  %8.1f MiB  pruned installed tree\n", $1 / 1048576}'

tar -cf - . | xz -T0 -9e > "$OUT"
ls -l "$OUT" | awk '{printf "  %8.1f MiB  %s (travels; the limit is 64 MiB with the working tree)\n", $5 / 1048576, $9}'
