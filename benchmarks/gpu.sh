#!/usr/bin/env bash
# GPU checks and the GPU speed benchmark, in one go (about 6 minutes on one H100/H200; at most 585 s by its timeouts):
#   bash benchmarks/gpu.sh [RESULTS_DIR]
# 1. the CUDA tests: fused likelihood, device store, dense fill and whole minibatch loss
#    against the reference path on the GPU; no host sync inside a training step; GPU
#    training (float32 and mixed precision) integrates and the model loads on a CPU;
# 2. benchmarks/speed.py on 1M simulated cells x 2000 genes, scVI and scARKIDS in the same
#    call: scVI at batch 128 (capped at 2000 steps: the one exception to whole epochs, as
#    one scVI epoch at batch 128 takes minutes of the lent GPU) and 1024; scARKIDS at batch
#    128 (with inference timings), at 4096 and 16384, and one train() with every default
#    (automatic batch size and epochs: scarkids-unsup@auto/auto). The rows are added to
#    benchmarks/results/speed/runs.jsonl and speed.md is rebuilt; both are copied to
#    RESULTS_DIR (speed/runs.jsonl, speed.md) when it is another folder.
# Needs torch with CUDA, scvi-tools (the benchmark extra) and scarkids importable.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks/results}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, scvi; print('torch', torch.__version__, 'scvi', scvi.__version__)"

timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -30
timeout 45 python3 -m pytest -q -p no:cacheprovider tests/test_fast_path.py -k cuda 2>&1 | tail -15

timeout 420 python3 benchmarks/speed.py --device cuda --sizes 1000000 --epochs 1 --threads 16 \
    --scvi_max_steps 2000 \
    --methods scvi,scvi@1024,scarkids-unsup,scarkids-unsup@4096/3,scarkids-unsup@16384/5,scarkids-unsup@auto/auto,scarkids-sup@16384/5
if [ "$OUT_DIR" != benchmarks/results ]; then
    mkdir -p "$OUT_DIR"/speed
    cp benchmarks/results/speed/runs.jsonl "$OUT_DIR"/speed/ 2>/dev/null || true
    cp benchmarks/results/speed.md "$OUT_DIR"/ 2>/dev/null || true
fi
