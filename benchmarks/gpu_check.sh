#!/usr/bin/env bash
# GPU check, run on a CUDA machine from the repository root (not part of CI):
#   bash benchmarks/gpu_check.sh OUT_DIR
# 1. the network's training step in bf16 at the `paper` size (benchmarks/bench_model.py),
#    with a profile, with activation checkpointing and with fused Adam;
# 2. a short `paper`-preset training run in bf16 on a synthetic set, loading a ViT-B/16
#    checkpoint from a local file at 288x144 (random weights: no model hub is reachable), so the
#    whole path a GPU user takes is exercised: weight loading and grid resize, CLIP-Memory,
#    bf16 autocast, validation, checkpoints, test scoring and the feature cache.
set -euo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
work=$(mktemp -d)
python3 -m xtfclip_lib --quiet synth --root "$work/synth" --ids 120 --seed 0 --workers 16 --no-progress
python3 - "$work/vitb16.pt" <<'PY'
import sys, open_clip, torch
model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
torch.save(model.state_dict(), sys.argv[1])
PY
python3 benchmarks/bench_model.py --steps 10 | tee "$out/bench_model.txt"
# issue 15 on the GPU: a per-module profile, and activation checkpointing's memory and time
python3 benchmarks/bench_model.py --preset paper --device cuda --amp auto --steps 10 --profile 2>&1 | tee -a "$out/bench_model.txt"
python3 benchmarks/bench_model.py --preset paper --device cuda --amp auto --steps 10 --grad-checkpointing 2>&1 | tee -a "$out/bench_model.txt"
python3 benchmarks/bench_model.py --preset paper --device cuda --amp auto --steps 10 --optimizer-impl fused 2>&1 | tee -a "$out/bench_model.txt"
cp results/benchmarks/model*.json "$out/" || true
python3 -m xtfclip_lib train --preset paper --variant x_tfclip --seed 0 --out "$work/run" \
  --set data.root="$work/synth" --set model.pretrained="$work/vitb16.pt" --set data.num_val_ids=10 \
  --set train.epochs=3 --set train.warmup_epochs=1 --set train.eval_every_epochs=1 2>&1 | tail -n 40
for f in config.yaml metrics.csv test_metrics.csv test_metrics_before.csv summary.json train.log; do
  cp "$work/run/$f" "$out/" || true
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$out/nvidia_smi.txt"
