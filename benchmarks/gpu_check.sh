#!/usr/bin/env bash
# The GPU check of the training engine, in under 5 minutes on one GPU: CUDA training throughput of
# resnet20_abn and resnet110_abn in fp32 and with --amp, a SIGTERM + --resume on CUDA that must give
# bit-identical weights, and torchrun with NCCL (1 process; 2 when there are 2 GPUs).
# Writes results/gpu_check.json (or $1). Run from the repository root with abnet installed.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python benchmarks/gpu_check.py --out "${1:-results/gpu_check.json}" "${@:2}"
