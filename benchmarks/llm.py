"""LLM adaptation benchmark: LoRA generated from a task description on a real base model, beside fine-tuning, a
multi-task LoRA, the prompted base model, a Text-to-LoRA-style hypernetwork, Mv-Di, single-level diffusion and the
memorisation checks, on the same held-out WordNet categories (issue 5).

    python benchmarks/llm.py --base minilm --seeds 0 1 2      # 300 training + 40 held-out categories, MiniLM-L6
    python benchmarks/llm.py --base minilm --seeds 1 --workers 2   # one seed, its stages in two processes
    python benchmarks/llm.py --base smollm2 --seeds 0 1 2     # 48 + 12 word-form tasks written by SmolLM2-135M
    python benchmarks/llm.py --base smollm2 --device cuda     # base model passes and generator training on a GPU
    python benchmarks/llm.py --base minilm --quick            # minutes: a small zoo and short budgets
    python benchmarks/llm.py --base minilm --report           # redraw the .md and .png from the JSON

Every stage is cached under ``$MCDI_CACHE`` (zoo, generators, multi-task LoRA, fine-tuning curves, the per-seed
record), so an interrupted run resumes. Results: ``benchmarks/results/llm_<base>[_quick].json`` (written after every
seed), ``.md`` and ``_accuracy_vs_time.png``. The JSON is also the durable record of finished seeds: a seed it holds
under the same configuration is read back, not rerun, so ``--seeds 1`` on one machine and ``--seeds 2`` on another
add up to a three-seed table (the caches need not travel).
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft_mcdi.evaluation.harness import recorded_runs, run_script, seeds_to_run, write_record  # noqa: E402
from peft_mcdi.evaluation.llm import (  # noqa: E402
    BASES,
    LLMBenchConfig,
    prefill_stages,
    results_key,
    run_llm_benchmark,
)
from peft_mcdi.evaluation.llm_report import markdown, plot_accuracy_vs_time, summarize  # noqa: E402
from peft_mcdi.utils import merged  # noqa: E402


RESULTS = Path(__file__).with_name("results")
TITLES = {
    "minilm": "LLM adaptation: WordNet categories on all-MiniLM-L6-v2 (LoRA q/v r 4 + 2-way head)",
    "smollm2": "LLM adaptation: word forms written by SmolLM2-135M-Instruct (LoRA q/v r 8, exact match)",
    "smollm2_wordnet": "LLM adaptation: WordNet categories on SmolLM2-135M-Instruct (LoRA q/v r 8, label words)",
}
# Small enough to finish in minutes on 2 CPU cores; the same code paths as the full run.
QUICK = {
    "num_train_tasks": 24,
    "num_test_tasks": 4,
    "recorder": {"num_epochs": 4},
    "meta": {"num_outer_steps": 60},
    "hypernetwork_steps": 60,
    "finetune_steps": 20,
    "multitask": {"num_epochs": 0.5},
    "seen_tasks": 4,
    "latency_repeats": 5,
}


def write_report(records: list[dict], stem: Path, title: str, command: str) -> None:
    summary = summarize(records)
    write_record(stem, command, summary, records, markdown(summary, title, command))
    plot_accuracy_vs_time(records, f"{stem}_accuracy_vs_time.png")


def command(args: argparse.Namespace, seeds: list[int]) -> str:
    """The command that reproduces a table over ``seeds`` (which may have been run one invocation at a time)."""
    options = [f"--base {args.base}", *(["--quick"] if args.quick else []),
               *([f"--config {shlex.quote(args.config)}"] if args.config else [])]  # fmt: skip
    return f"python benchmarks/llm.py {' '.join(options)} --seeds {' '.join(map(str, seeds))}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", choices=sorted(BASES), default="minilm")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2, or 0 with --quick")
    parser.add_argument("--quick", action="store_true", help="small zoo and budgets (minutes)")
    parser.add_argument(
        "--config", help='JSON overrides of LLMBenchConfig, e.g. \'{"meta": {"num_outer_steps": 1200}}\''
    )
    parser.add_argument("--out-dir", default=str(RESULTS), help="where llm_<base>.json/.md/.png go")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="one-thread processes that fill a seed's stages side by side (zoo shards, variants, baselines) before "
        "the record is assembled; 2 on a 2-core machine (with --device, spawned processes sharing the device)",
    )
    parser.add_argument(
        "--device",
        help="where base models run and generators train, e.g. cuda (sets $MCDI_DEVICE; default: it, else the CPU); "
        "no cache key depends on it",
    )
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--report", action="store_true", help="only redraw the .md and .png from the results JSON")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.device:
        os.environ["MCDI_DEVICE"] = args.device
    stem = Path(args.out_dir) / f"llm_{args.base}{'_quick' if args.quick else ''}"
    if args.report:
        record = json.loads(stem.with_suffix(".json").read_text())
        write_report(record["runs"], stem, TITLES[args.base], record["command"])
        print(stem.with_suffix(".md").read_text())
        return
    overrides = merged(QUICK, json.loads(args.config or "{}")) if args.quick else json.loads(args.config or "{}")
    config = LLMBenchConfig.for_base(args.base, overrides)
    key = results_key(config.to_dict())
    runs = {r["seed"]: r for r in recorded_runs(stem, key)}  # seeds finished under this configuration, anywhere
    seeds = seeds_to_run(args.seeds, args.quick)
    print(f"LLM benchmark: {args.base}, seeds {seeds}; results in {stem}.json"
          + (f" (seeds {sorted(runs)} recorded there under this configuration are read back)" if runs else ""),
          flush=True)  # fmt: skip
    for seed in seeds:
        if seed in runs:
            continue
        start = time.perf_counter()
        if args.workers > 1:
            prefill_stages(config, seed, args.workers)
        runs[seed] = {**run_llm_benchmark(config, seed, args.progress), "config_key": key}
        print(f"seed {seed}: {json.dumps({k: round(v, 4) for k, v in runs[seed]['accuracy'].items()})} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        write_report([runs[s] for s in sorted(runs)], stem, TITLES[args.base], command(args, sorted(runs)))
    write_report([runs[s] for s in sorted(runs)], stem, TITLES[args.base], command(args, sorted(runs)))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    run_script(main, "benchmarks/llm.py")
