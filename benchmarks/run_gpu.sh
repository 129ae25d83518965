#!/usr/bin/env bash
# One call on a lent GPU machine (its image has torch/CUDA but not diffusers, and reaches
# no package index). Carry the wheels made here beforehand (.whl is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata onnxslim polygraphy
# then run, with .whl carried:   bash benchmarks/run_gpu.sh bench   (< 10 min; results to $OUT)
#                           or:  bash benchmarks/run_gpu.sh tests   (every test marked gpu)
#                           or:  bash benchmarks/run_gpu.sh adapt   (bench_adaptation.py and bench_adaptation_kernel.py on CUDA)
# tensorrt and onnxruntime-gpu are not on that image and too large to carry: their rows
# and tests report "skipped" there; install them to get those figures.
set -euo pipefail
cd "$(dirname "$0")/.."
site=/tmp/adabldm-site
mkdir -p "$site"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
fi
# The repository's folders under their installed names (pyproject's package-dir), no build.
for pair in adabldm_core:core adabldm_ref:adabldm_ref adabldm_engine:engine adabldm_export:export adabldm_calibration:calibration; do
  ln -sfn "$PWD/${pair#*:}" "$site/${pair%%:*}"
done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
case "${1:-bench}" in
  bench) python3 benchmarks/bench_gpu.py --out "${OUT:-benchmarks/results}" "${@:2}" ;;
  tests) python3 -m pytest tests -m gpu -q -p no:cacheprovider -rs "${@:2}" ;;
  adapt) python3 benchmarks/bench_adaptation.py --device cuda --out "${OUT:-benchmarks/results}" "${@:2}"
         python3 benchmarks/bench_adaptation_kernel.py --device cuda --out "${OUT:-benchmarks/results}" ;;
  *) echo "usage: $0 bench|tests|adapt [args]" >&2; exit 2 ;;
esac
