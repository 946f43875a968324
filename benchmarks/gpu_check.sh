#!/usr/bin/env bash
# GPU checks in one go, for a machine with a CUDA device: the GPU-only tests, a short bf16-mixed
# fit and a bank written with CUDA-graph sampling through the CLI, then the GPU figures that
# missed their targets there (efficiency with its roofline, RHVAE latency, the fresh-fit ratio)
# and the clinical-resolution cost curves (s per training step, s per sample, peak memory).
#   bash benchmarks/gpu_check.sh [OUT_DIR]       # JSON lines and logs land in OUT_DIR (default gpu_check/)
set -uo pipefail
OUT=${1:-gpu_check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: the figures step runs from benchmarks/
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
ACCEL=${ACCEL:-gpu}     # ACCEL=cpu DEVICE=cpu: a dry run of the fit and generate steps on a CPU
DEVICE=${DEVICE:-cuda}
status=0
step() { echo "== $1"; }

step "GPU tests"
timeout 180 $PY -m pytest -q -p no:cacheprovider tests/generative/test_cuda_graphs.py \
    "tests/benchmarks/test_benchmarks_smoke.py::test_unet_efficiency" || status=1

step "medaug fit (DDPM, bf16-mixed, 60 steps) and generate (CUDA graphs)"
RUN="$OUT/run"
timeout 240 $PY -m lightning_medaug.cli fit --config recipes/ddpm_pneumonia.yaml --trainer.max_steps 60 \
    --trainer.max_epochs 1 --trainer.precision bf16-mixed --trainer.accelerator "$ACCEL" \
    --trainer.logger.init_args.save_dir "$RUN" --trainer.enable_progress_bar false > "$OUT/fit.log" 2>&1 \
    || { status=1; tail -n 20 "$OUT/fit.log"; }
MODEL=$(find "$RUN" -name config.json -path "*generator*" -printf '%h\n' | head -n 1)
if [ -n "$MODEL" ]; then
  timeout 120 $PY -m lightning_medaug.cli generate --model "$MODEL" --out "$OUT/bank" --num-samples 2048 \
      --batch-size 512 --device "$DEVICE" --no-progress > "$OUT/generate.log" 2>&1 || { status=1; tail -n 20 "$OUT/generate.log"; }
  tail -n 3 "$OUT/generate.log"
else
  echo "no exported generator under $RUN"; status=1
fi

step "figures"
cd benchmarks
timeout 120 $PY unet_efficiency.py --precision bf16-mixed --batch-size 1024 --mm-size 8192 --out "$OUT/gpu.jsonl" > /dev/null || status=1
timeout 120 $PY unet_efficiency.py --precision bf16-mixed --out "$OUT/gpu.jsonl" > /dev/null || status=1
# the one family that missed its latency target on a GPU
timeout 180 $PY family_latency.py --families rhvae --precision bf16-mixed --out "$OUT/gpu.jsonl" > /dev/null || status=1
# the fresh-fit ratio, missed on a GPU: fit_phases_ms says which part of the Trainer's fixed cost it is;
# the cVAE (automatic optimisation), the cGAN (manual) and the DDPM (EMA every step), each at its recipe's size
for precision in 32-true bf16-mixed; do
  for generator in cvae cgan ddpm; do
    timeout 240 $PY train_overhead.py --generator $generator --repeats 7 --precision $precision \
        --out "$OUT/gpu.jsonl" > /dev/null || status=1
  done
done
# cost curves at clinical resolutions (figure 8): pixel vs latent diffusion at the width the recipes
# name for a GPU, 64-256 px and 32-128 voxels (a side that runs out of memory is reported as such)
timeout 420 $PY scale_costs.py --width full --precision bf16-mixed --sizes-3d 32 64 96 128 --repeats 5 \
    --sample-repeats 3 --out "$OUT/gpu.jsonl" > /dev/null || status=1
cd ..
$PY - "$OUT/gpu.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["benchmark"] == "family_latency":
        print("family_latency", {dims: {name: entry.get("ms_per_sample", entry) for name, entry in block.items()}
                                 for dims, block in r["results"].items()})
        continue
    if r["benchmark"] == "scale_costs":
        for dims, block in r["results"].items():
            for size, entry in block.items():
                print("scale_costs", r["precision"], dims, size, entry.get("skipped") or {
                    side: (entry[side]["train_s_per_step"], entry[side]["sample_s_per_image"],
                           entry[side]["peak_train_mb"]) for side in ("pixel", "latent")},
                      "sampling speedup", entry.get("sampling_speedup"))
        continue
    if r["benchmark"] == "train_overhead":
        print("train_overhead", r["generator"], r["precision"], "ratio", r["ratio"], "cpu", r["cpu_ratio"],
              "steady", r["steady_ratio"], "in-fit ms/batch", r["in_fit_overhead_ms_per_batch"],
              "to the plain loop with a fit's memory release", r["ratio_to_released_plain"],
              "ms/batch", r["lightning_ms_per_batch"], "vs", r["plain_ms_per_batch"], "phases (ms)", r["fit_phases_ms"],
              "first batch (ms)", r["first_batch_ms"])
        continue
    print(r["benchmark"], r.get("batch_size"), r.get("precision"), "efficiency", r.get("efficiency"),
          "ms/image", r.get("sampling_ms_per_image"), "matmul GFLOP/s", r.get("matmul_gflops_per_s"),
          "UNet calls counted", r.get("unet_calls_per_sample_call"), "FLOP/byte", r.get("flop_per_byte"),
          "GB/s", r.get("memory_gb_per_s"), "roofline ceiling", r.get("roofline_efficiency"))
PY
[ $? -eq 0 ] || status=1
exit $status
