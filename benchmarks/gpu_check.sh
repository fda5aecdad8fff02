#!/usr/bin/env bash
# GPU checks for a machine with CUDA, in under 8 minutes: `bash benchmarks/gpu_check.sh`.
#  1. the CUDA-marked tests (tests/test_cuda.py: AMP training and search steps, sliding window on the
#     GPU against the CPU, NCCL between two processes when there are two GPUs);
#  2. a training step (U-ResNet 32 channels, and the FLOPs-matched searched network; 4x128^3, batch 2)
#     and a search step (stem 48, two ops per edge, 128^3, batch 1) with AMP: time per step and peak
#     torch.cuda.max_memory_allocated (benchmarks/gpu_step.py).
# Results go to $OUT when set (the device tool's output folder), else benchmarks/results/:
# gpu_tests.xml (JUnit), gpu_tests.log, gpu_<device>.json, nvidia-smi.txt.
# Python: $PYTHON if set, else the first of .venv/bin/python, python3 whose torch sees CUDA; it needs the
# package's dependencies (pip install -e '.[test]' with a CUDA build of torch).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-benchmarks/results}"
mkdir -p "$out"

sees_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
py="${PYTHON:-}"
if [ -z "$py" ]; then
    for candidate in .venv/bin/python python3; do
        if command -v "$candidate" >/dev/null && sees_cuda "$candidate"; then py="$candidate"; break; fi
    done
fi
if [ -z "$py" ] || ! sees_cuda "$py"; then
    echo "gpu_check: no Python here has a torch that sees a CUDA device (set PYTHON=...)" >&2
    exit 2
fi
"$py" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")'
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

status=0
timeout 240 "$py" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider \
    --junitxml="$out/gpu_tests.xml" 2>&1 | tee "$out/gpu_tests.log" || status=1
timeout 300 "$py" -m benchmarks.gpu_step --out "$out" || status=1
exit $status
