"""The LLM benchmark's accelerator path end to end on tiny random models: a lent GPU machine's first check, before a
real run spends its minutes (the tests have no GPU).

The word-form benchmark of ``tests/evaluation/test_llm_wordforms.py`` (its tiny configuration, functional variant
only) with ``$MCDI_DEVICE=cuda``: the zoo, the functional generator's meta-training, chain fine-tuning and t2l_sft,
the evaluation, the multi-task LoRA, fine-tuning curves, the user's path and the unseen-type split, its stages first
filled by ``--workers 2``'s processes (spawned, sharing the device, as the real run's are). The machine is
offline and lacks WordNet, so the models are random ones built here around the real tokenizers (SmolLM2's and
MiniLM's, carried in TOKENIZERS/smollm2 and TOKENIZERS/minilm), the MiniLM stand-in installed in the hub cache under
its Hub id, and the tiny family's task file comes in CACHE/wordform_tasks.

    python3 benchmarks/device/tiny_smoke.py TOKENIZERS CACHE
"""

import json
import os
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
if len(sys.argv) == 3:  # before any Hub import reads them; the processes --workers spawns inherit them
    CACHE = Path(sys.argv[2]).resolve()
    os.environ.update(MCDI_CACHE=str(CACHE), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(CACHE / "hf"))
    os.environ.setdefault("MCDI_DEVICE", "cuda")  # MCDI_DEVICE=cpu checks the script itself on a CPU machine

from peft_mcdi.evaluation.llm import BASES, LLMBenchConfig, prefill_stages, run_llm_benchmark  # noqa: E402
from peft_mcdi.tasks.base import _REGISTRY as task_registry  # noqa: E402
from peft_mcdi.tasks.text_generation import wordform_tasksets  # noqa: E402
from peft_mcdi.tasks.text_lora import KNOWN_BASES  # noqa: E402
from tests.evaluation.test_llm_wordforms import FAMILY, TINY, TINY_LLAMA  # noqa: E402


def register(cache: Path) -> None:
    """The tiny base and its family, at import as the benchmark's own are, so that spawned processes have them."""
    KNOWN_BASES[TINY_LLAMA] = (str(cache / "tiny-llama"), "CAUSAL_LM")
    BASES[TINY_LLAMA] = {**BASES["smollm2"], "model": TINY_LLAMA, "taskset": "wordforms-tiny-llama", "r": 2}
    task_registry["wordforms-tiny-llama"] = lambda num_train_tasks, num_test_tasks, seed=0: wordform_tasksets(
        TINY_LLAMA, num_train_tasks, num_test_tasks, 2, ("q_proj", "v_proj"), seed, 8, **FAMILY
    )


if len(sys.argv) == 3:
    register(CACHE)


def install_random_minilm(tokenizers: Path, hub_cache: Path) -> None:
    """A 1-layer random BERT of MiniLM's width and tokenizer where the hub cache keeps the Hub id's snapshot."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from peft_mcdi.models.offline import MINILM_HUB_ID, repo_folder

    folder = repo_folder(MINILM_HUB_ID, hub_cache)
    snapshot = folder / "snapshots" / ("0" * 40)
    tokenizer = AutoTokenizer.from_pretrained(tokenizers / "minilm")
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=384, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64)  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("0" * 40)


def random_llama(tokenizers: Path, folder: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizers / "smollm2")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def main() -> None:
    tokenizers = Path(sys.argv[1]).resolve()
    start = time.perf_counter()
    install_random_minilm(tokenizers, CACHE / "hf")
    random_llama(tokenizers, CACHE / "tiny-llama")
    config = LLMBenchConfig.for_base(TINY_LLAMA, {**TINY, "variants": ["mcdi_functional"]})
    prefill_stages(config, 0, workers=2)
    record = run_llm_benchmark(config, 0)
    summary = {k: record[k] for k in ("device", "accuracy")}
    print(json.dumps({**summary, "seconds": round(time.perf_counter() - start, 1)}, indent=1), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    main()
