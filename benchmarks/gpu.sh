#!/usr/bin/env bash
# One script for a GPU machine (meant to fit in 8 minutes on an H200; not yet run on one): the device, then train_speed.py,
# input_pipeline.py and loss_speed.py on CUDA, and whole epochs of SimCLR-ResNet-18 on 50,000
# synthetic 32 px images at batch 512 (bf16, channels-last, with and without --compile), baseline
# and AMCL (epoch_speed.py). Each benchmark prints its own markdown tables; the JSON figures go to
# $OUT (default: benchmarks/gpu-results, not committed).
#
#   bash benchmarks/gpu.sh            # on the GPU machine
#   bash benchmarks/gpu.sh --quick    # the same steps on the CPU at toy sizes (about a minute), to check
#                                     # the script before spending GPU time
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [[ "${1:-}" == "--quick" ]]; then quick=1; elif [[ -n "${1:-}" ]]; then
  echo "usage: bash benchmarks/gpu.sh [--quick]" >&2; exit 2
fi
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/gpu-results}
mkdir -p "$OUT"

section() { echo; echo "## $1"; echo; }

section "device"
"$PY" - <<'PYTHON'
import platform, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {platform.processor() or platform.machine()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
else:
    print("no CUDA device: CPU only")
PYTHON

if [[ $quick == 1 ]]; then
  section "train_speed.py (quick, CPU)"
  "$PY" benchmarks/train_speed.py --quick --device cpu --methods simclr --backbone small_cnn --image-size 16 \
    --no-memory --json "$OUT/train_speed.json"
  section "input_pipeline.py (quick, CPU)"
  "$PY" benchmarks/input_pipeline.py --quick --device cpu --sizes 32 --policies default --json "$OUT/input_pipeline.json"
  section "loss_speed.py (quick, CPU)"
  "$PY" benchmarks/loss_speed.py --quick --device cpu --methods simclr moco
  section "epoch_speed.py (quick, CPU)"
  "$PY" benchmarks/epoch_speed.py --quick --epochs 2 --images 512 --json "$OUT/epoch_speed.json"
else
  section "train_speed.py (CUDA: batch 512, bf16; augmentation share and host synchronisations)"
  "$PY" benchmarks/train_speed.py --device cuda --json "$OUT/train_speed.json"
  section "input_pipeline.py (CUDA)"
  "$PY" benchmarks/input_pipeline.py --device cuda --json "$OUT/input_pipeline.json"
  section "loss_speed.py (CUDA)"
  "$PY" benchmarks/loss_speed.py --device cuda
  section "epoch_speed.py (CUDA: SimCLR-ResNet-18, 50,000 images of 32 px, batch 512, bf16, channels-last)"
  "$PY" benchmarks/epoch_speed.py --device cuda --json "$OUT/epoch_speed.json"
fi
echo
echo "figures in $OUT"
