#!/usr/bin/env bash
# Does a 2-process torchrun CPU job follow the 1-process run with the same global batch?
# Same seed, data, recipe; prints each run's final metrics line. Takes ~4 minutes on 2 cores.
set -euo pipefail
out=${1:-/tmp/abnet-ddp-check}
rm -rf "$out" && mkdir -p "$out"
args=(--model resnet20_abn --data shapes --limit-train 4000 --limit-val 1000 --batch-size 64 --epochs 5
      --schedule cosine --warmup-epochs 0.5 --weight-decay 5e-4)
echo "one process:";   python -m abnet train "${args[@]}" --out "$out/one" 2>/dev/null
echo "two processes:"; OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 \
    -m abnet train "${args[@]}" --out "$out/two" 2>/dev/null
