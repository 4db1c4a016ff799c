#!/usr/bin/env bash
# One device call (TRAINING.md "Next" 1): continue MSP base's transforms jointly on a lent GPU.
#   bash bench/gpu_train.sh MINUTES [more licbench train options for the first phase]
# with .gpu-kit/ carried (bench/gpu_kit.py makes it). Phase 1 warms up and trains at a constant
# learning rate until MINUTES have passed (the decay of its 10^6-step schedule is never reached);
# phase 2 re-spans the schedule to 1.25x the steps reached, so the lr decays x0.1 at once and
# x0.01 for the last 5 %: about MINUTES/4 more. Everything comes back through $OUT: the log, both
# checkpoints exported in float32 (best held-out validation and last step; ~10 MB each), and the
# training checkpoint (Adam state included) split into parts under the 16 MiB a file may have
# (`cat gpu.ckpt.part-* > runs/gpu.ckpt` here). Keep MINUTES <= 6.5 for the 10-minute call limit.
# INIT: the model file to continue (default: the zoo's MSP base).
set -euo pipefail
minutes=${1:?usage: bench/gpu_train.sh MINUTES [train options]}
shift
out=${OUT:?set OUT, the folder whose files come back}
mkdir -p "$out" runs
if ! python3 -c "import compressai, pytorch_msssim" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-kit/whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="$out/train.log"
python3 -c "import torch, compressai; print('torch', torch.__version__, 'compressai', compressai.__version__,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" | tee -a "$log"
ckpt=runs/gpu.ckpt
train() { python3 -m licbench.cli train "$@" 2>&1 | tee -a "$log"; }
ship() {  # what has to come back even if the call is cut short later
  rm -f "$out"/gpu.ckpt.part-*
  split -b 15M "$ckpt" "$out/gpu.ckpt.part-"
  for which in best last; do
    source=$ckpt; [ "$which" = best ] && source=runs/gpu.best.ckpt
    train --export "$source" --out "$out/msp-gpu-$which.pt" --export-precision float32 --export-check 0 >/dev/null
  done
}
train --model msp --model-option 'quantizer="ste"' --init "${INIT:-licbench/zoo/msp-base-small.pt}" --init-whole \
  --data .gpu-kit/train --crop 256 --batch-size 16 --lr 1e-4 --warmup-steps 500 --steps 1000000 \
  --time-limit "$minutes" --val-every 1000 --save-every 1000 --workers "${WORKERS:-12}" \
  --device "${DEVICE:-cuda}" --out "$ckpt" --no-progress "$@"
ship
reached=$(python3 -c "import torch; print(torch.load('$ckpt', weights_only=True, map_location='cpu')['step'])")
total=$(( reached * 5 / 4 > reached ? reached * 5 / 4 : reached + 1 ))
echo "phase 2: steps $reached -> $total, lr decayed" | tee -a "$log"
train --out "$ckpt" --resume --steps "$total" --no-progress
ship
ls -l "$out" | tee -a "$log"
