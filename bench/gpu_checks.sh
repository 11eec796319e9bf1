#!/usr/bin/env bash
# The checks only a CUDA machine can make, in one go (each step's output also lands in OUTDIR):
#   1. bench/gpu_throughput.py: raw SAM2 against `reelmask run`, 1/4/16 objects, uncompiled;
#   2. tests/test_gpu.py: the measured memory cost against a real job's peak;
#   3. bench/gpu_throughput.py with models.compile=vos (1 and 4 objects; its compile time is printed apart).
# Usage: bash bench/gpu_checks.sh [OUTDIR]; PYTHON, FRAMES (200) and VOS_SECONDS (240, the limit on step 3)
# change the defaults. Needs the shared clip long/dog (REELMASK_TEST_DATA points at its data folder).
set -u
out=${1:-gpu-checks}
py=${PYTHON:-python3}
frames=${FRAMES:-200}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
"$py" bench/gpu_throughput.py --frames "$frames" 2>&1 | tee "$out/throughput.txt" || status=1
"$py" -m pytest -q -s -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.txt" || status=1
timeout "${VOS_SECONDS:-240}" "$py" bench/gpu_throughput.py --frames "$frames" --objects 1,4 --set models.compile=vos \
    2>&1 | tee "$out/throughput_vos.txt" || status=1
exit $status
