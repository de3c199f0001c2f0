#!/usr/bin/env bash
# One GPU session, about 15 minutes: the CUDA checks and timings falign publishes.
#   FALIGN_DATA=/path/to/data bench/gpu.sh [OUT]       (run from the repository root)
# Prepared for a first GPU run; it has not run on a GPU yet, so falign publishes no GPU timings.
# 1. step-time ratios of every rule to BP on CUDA, eager and with the fast path
#    (bf16 autocast + channels-last + torch.compile) on Arch 1 and ResNet-20;
# 2. the shipped configs train one short epoch each on CUDA (NCCL when 2+ GPUs);
# 3. the Lance & Kieu reproduction at full scale (their grids, then five 50-epoch CIFAR-10
#    runs), resumable: rerun the script to continue where a session stopped.
set -euo pipefail
out=${1:-runs/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m bench.step_time --device cuda --models mlp,arch1,resnet20 --runs 3 | tee "$out/step_time.txt"
gpus=$(nvidia-smi -L | wc -l)
launch=(python -m falign)
[ "$gpus" -ge 2 ] && launch=(torchrun --standalone --nproc_per_node "$gpus" -m falign)
for cfg in arch1-cifar10 resnet20-cifar10 lenet-mnist dfa-mnist; do
  for fast in "" "--set train.amp=bf16 --set train.channels_last=true --set train.compile=true"; do
    tag=$cfg${fast:+-fast}
    # shellcheck disable=SC2086
    "${launch[@]}" train "$cfg" --set device=cuda --set train.epochs=1 $fast --out "$out/$tag" --overwrite \
      | tail -n 2 | tee -a "$out/configs.txt"
  done
done
# the shipped configs say device: auto, so the reproduction trains on the GPU
python -m falign reproduce lance-kieu-2026 --scale full --out "$out/lance-kieu-2026" --resume
