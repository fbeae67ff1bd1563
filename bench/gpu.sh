#!/usr/bin/env bash
# GPU figures in one run (the device machine: torch preinstalled, the study's other packages as
# wheels in .whl/): PINN training throughput old vs new network (fp32, bf16), then the full
# profile's dose 1e3 dense job: phases C and D on the host CPU, 3 training epochs on the GPU,
# and PINN inference against pty-chi LSQML (full.yaml's 100 epochs) on the GPU.
#     bash bench/gpu.sh OUT_DIR
set -euo pipefail
out=${1:?output folder}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 FLY64STUDY_NUMERICS=native
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, ptychi; print('torch', torch.__version__, 'ptychi', ptychi.__version__)" | tee -a "$out/gpu.txt"
[ -n "${SKIP_FP32:-}" ] || python3 bench/train.py --accelerator cuda --params profiles/full.yaml --n 64 --n 128 | tee "$out/train_fp32.md"
[ -n "${SKIP_BF16:-}" ] || python3 bench/train.py --accelerator cuda --params profiles/full.yaml --n 128 --bf16 | tee "$out/train_bf16.md"
params=/tmp/full_3epochs.yaml
sed 's/^  epochs: 50 /  epochs: 3  /' profiles/full.yaml > "$params"
grep -q "^  epochs: 3 " "$params"
run() { local t0=$SECONDS; "$@" 2>&1 | { grep -v "batch/s\|s/batch" || true; } | tail -n 12; echo "($((SECONDS - t0)) s wall)"; }
{
  echo "## full profile, dose 1e3: generate (CPU)"
  [ -f data/phase_c/dose_1e3/patched_test.npz ] && echo "(kept from an earlier call)" || run python3 stages/generate.py --params "$params" --dose 1e3 --out data/phase_c/dose_1e3
  echo "## overlap dense (CPU)"; run python3 stages/overlap.py --params "$params" --view dense --phase-c data/phase_c/dose_1e3 --out data/phase_d/dose_1e3/dense
  echo "## train dense, 3 epochs (GPU)"; run python3 stages/train.py --params "$params" --dose 1e3 --view dense --accelerator cuda --artifact-root data/phase_e --manifest-dir data/phase_e/runs/1e3-dense --timing-dir "$out/timing"
  echo "## PINN inference vs LSQML (GPU)"; python3 bench/reconstruct.py --params "$params" --dose 1e3 --view dense --accelerator cuda
} 2>&1 | tee "$out/full_1e3_dense.md"
