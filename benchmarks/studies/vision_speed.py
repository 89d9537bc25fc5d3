"""Head-generation speed against accuracy, side by side in one process, on the test episodes of a vision run.

For the Mc-Di generator that ``benchmarks/vision.py`` trained (seed 0 of the suite, read from its results JSON and the
run's cache), each sampling configuration — the benchmark's default (8 draws averaged, guidance 2, DDPM 20 steps)
down to one DDIM draw of 5 steps — is timed per episode (median, one thread) and scored on the same episodes; beside
it the prototype classifier and gradient training of the head (logistic regression, the per-task reference), with the
steps and milliseconds they need to reach each Mc-Di configuration's accuracy. Ratios are within this run.

    python benchmarks/studies/vision_speed.py --results benchmarks/results/vision_fewshot.json --setting 5w1s
"""

import argparse
import json
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.baselines.heads import prototype_head  # noqa: E402
from peft_mcdi.evaluation.harness import first_reaching  # noqa: E402
from peft_mcdi.evaluation.metrics import median_ms  # noqa: E402
from peft_mcdi.evaluation.vision import VisionBenchConfig  # noqa: E402
from peft_mcdi.generator.head import HeadGenerator  # noqa: E402
from peft_mcdi.generator.model import McDiGenerator  # noqa: E402
from peft_mcdi.tasks.episodes import EpisodeBatch  # noqa: E402
from peft_mcdi.tasks.vision_suites import SUITES, build_suite  # noqa: E402
from peft_mcdi.utils import cache_root, stable_hash  # noqa: E402
from peft_mcdi.zoo.heads import train_heads  # noqa: E402


# name → HeadGenerator options
SAMPLING = {
    "ddpm20, 8 draws, guidance 2 (benchmark default)": {"num_samples": 8, "guidance_scale": 2.0},
    "ddpm20, 1 draw, guidance 2": {"guidance_scale": 2.0},
    "ddpm20, 1 draw": {},
    "ddim10, 8 draws, guidance 2": {
        "sampler": "ddim",
        "num_inference_steps": 10,
        "num_samples": 8,
        "guidance_scale": 2.0,
    },
    "ddim10, 1 draw": {"sampler": "ddim", "num_inference_steps": 10},
    "ddim5, 1 draw": {"sampler": "ddim", "num_inference_steps": 5},
}


def rebuild_suite(run: dict):
    """The run's suite, rebuilt from its config (cached data, so quick)."""
    name = next(n for n in SUITES if run["suite"].startswith(n))
    return build_suite(name, **{k: v for k, v in run["suite_config"].items() if k != "name"})


def generator_of(run: dict, suite) -> McDiGenerator:
    """The run's final Mc-Di generator: its saved copy, else the last checkpoint of the cached run."""
    if run.get("generator_dir") and Path(run["generator_dir"]).is_dir():
        return McDiGenerator.from_pretrained(run["generator_dir"])
    config = VisionBenchConfig(**run["bench_config"])
    folder = cache_root() / "runs" / f"{suite.name}-{stable_hash([suite.config, config.to_dict()])}" / "mcdi"
    return McDiGenerator.from_pretrained(folder / (folder / "latest").read_text().strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="a benchmarks/results/vision_<suite>.json")
    parser.add_argument("--setting", default="5w1s")
    parser.add_argument("--run", type=int, default=0, help="index of the run in the results file (0: first seed)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", help="default: benchmarks/studies/results/<results stem>_speed_<setting>.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    record = json.loads(Path(args.results).read_text())
    run = record["runs"][args.run]
    suite = rebuild_suite(run)
    batch = EpisodeBatch.stack(suite.tests[args.setting])
    one, E, N = batch[:1], len(batch.support_x), batch.num_ways
    generator = generator_of(run, suite)
    bench = VisionBenchConfig(**run["bench_config"])
    rows = {}
    for name, options in SAMPLING.items():
        gen = HeadGenerator(generator, **options)
        accuracy = float(
            batch.accuracy(gen.generate_heads(batch.support_x, batch.support_y, N, seed=list(range(E)))).mean()
        )
        ms = median_ms(lambda g=gen: g.generate_heads(one.support_x, one.support_y, N), args.repeats)
        rows[f"Mc-Di: {name}"] = {"accuracy": accuracy, "ms_per_episode_median": ms}
    rows["prototype"] = {
        "accuracy": float(batch.accuracy(prototype_head(batch)).mean()),
        "ms_per_episode_median": median_ms(lambda: prototype_head(one), args.repeats),
    }
    spe = batch.steps_per_epoch
    gradient = {
        "logistic regression (Adam)": (bench.finetune_lr, 0.0, bench.finetune_steps),
        "per-task reference (Adam+SAM)": (bench.recorder.lr, bench.recorder.rho, bench.recorder.num_epochs * spe),
    }
    for name, (lr, rho, steps) in gradient.items():
        curve = train_heads(batch, steps, lr, rho=rho).accuracy
        ms_per_step = median_ms(lambda lr=lr, rho=rho, s=steps: train_heads(one, s, lr, rho), 5, warmup=1) / steps
        rows[name] = {"accuracy": float(curve[-1].mean()), "ms_per_episode_median": ms_per_step * steps,
                      "steps": steps, "ms_per_step": ms_per_step}  # fmt: skip
        for mcdi, row in list(rows.items()):
            if mcdi.startswith("Mc-Di"):
                match = first_reaching(curve.mean(-1).tolist(), row["accuracy"])
                to_match = "> budget"
                if match is not None:
                    ms = match * ms_per_step
                    to_match = {"steps": match, "ms": ms, "speedup": ms / row["ms_per_episode_median"]}
                row.setdefault("gradient_to_match", {})[name] = to_match
    out = Path(
        args.out or Path(__file__).with_name("results") / f"{Path(args.results).stem}_speed_{args.setting}.json"
    )
    result = {"command": "python benchmarks/studies/vision_speed.py " + " ".join(sys.argv[1:]), "suite": run["suite"],
              "seed": run["seed"], "setting": args.setting, "episodes": E, "threads": 1, "rows": rows}  # fmt: skip
    out.write_text(json.dumps(result, indent=1))
    for name, row in rows.items():
        print(f"{name:<55} acc {100 * row['accuracy']:5.1f}  {row['ms_per_episode_median']:8.2f} ms "
              f"{json.dumps(row.get('gradient_to_match', ''))}")  # fmt: skip


if __name__ == "__main__":
    main()
