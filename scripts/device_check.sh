#!/usr/bin/env bash
# GPU check for the README's performance table: MAE ViT-B/16 at 224, batch 256, bf16 + torch.compile
# (our defaults) against EndoViT's settings (fp16 + GradScaler, eager, unfused AdamW, per-step sync),
# on one GPU with synthetic on-device batches. About 3-5 minutes on one H100. Results: $OUT or ./
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-.}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 python scripts/benchmark.py --model mae_vit_base_patch16 --img_size 224 --batch_size 256 \
    --mixed_precision bf16 --torch_compile true --steps 30 --warmup 5 --configs endovit,endovit_fp32,baseline \
    --json "$out_dir/benchmark_vit_b16_bs256.json"
