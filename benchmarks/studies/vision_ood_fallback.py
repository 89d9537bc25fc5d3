"""Can a head generator tell when it is extrapolating, and fall back to the prototype rule there (issue 22)?

The functional head generator beats the nearest-centroid rule where its test classes look like its training ones and
loses to it by up to 27 points under a shift of the features (``docs/vision.md``). A generator records the conditions
it was trained on (per episode, the mean of its class prototypes) and reports each new support set's distance to the
nearest one (``nearest_training_distance``). This study scores the rule "write the anchor (the prototype rule) when
that distance exceeds the q-quantile of the training episodes' own leave-one-out nearest distances": the threshold
comes from training data only, so no test episode chooses it. Per run, suite and setting: the ungated and gated
accuracies for several q, the share of episodes that fell back, and the prototype rule's accuracy.

    python benchmarks/studies/vision_ood_fallback.py --runs benchmarks/results/vision_functional/vision_*.json

Results: ``benchmarks/studies/results/vision_ood_fallback.json`` (one entry per run, suite, seed and setting).
"""

import argparse
import json
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.vision import recorded_generator  # noqa: E402
from peft_mcdi.tasks.episodes import EpisodeBatch  # noqa: E402
from peft_mcdi.tasks.vision_suites import build_suite  # noqa: E402
from peft_mcdi.utils import atomic_write_text  # noqa: E402


RESULT = Path(__file__).with_name("results") / "vision_ood_fallback.json"
QUANTILES = (0.9, 0.95, 0.99, 1.0)


def leave_one_out_distances(conditions: torch.Tensor) -> torch.Tensor:
    """Each training condition's distance to its nearest *other* training condition."""
    distances = torch.cdist(conditions, conditions)
    return distances.fill_diagonal_(float("inf")).min(1).values


def gated_accuracy(generator, batch: EpisodeBatch, thresholds: dict[str, float]) -> dict:
    heads = generator.generate_episode_heads(batch)
    anchor = generator.generator.anchor(generator.last_condition)
    distance = generator.generator.nearest_training_distance(generator.last_condition)
    generated, rule = batch.accuracy(heads), batch.accuracy(anchor)
    out = {"generated": float(generated.mean()), "prototype": float(rule.mean()), "gated": {}}
    for name, threshold in thresholds.items():
        fallback = distance > threshold
        out["gated"][name] = {"accuracy": float(torch.where(fallback, rule, generated).mean()),
                              "fallback_share": float(fallback.float().mean())}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="vision results JSONs (their recorded runs)")
    parser.add_argument("--generator", default="mcdi_functional", help="which generator of each run")
    args = parser.parse_args()
    results = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    for path in args.runs:
        for run in json.loads(Path(path).read_text())["runs"]:
            generator = recorded_generator(run, args.generator)
            train = leave_one_out_distances(generator.generator.train_conditions)
            thresholds = {f"q{q:g}": float(train.quantile(q)) for q in QUANTILES}
            suite_config = {k: v for k, v in run["suite_config"].items() if k != "name"}
            suite = build_suite(run["suite_config"]["name"], **suite_config)
            for setting, episodes in suite.tests.items():
                key = f"{Path(path).stem}/{run['suite']}/seed{run['seed']}/{setting}"
                results[key] = {"thresholds": thresholds,
                                **gated_accuracy(generator, EpisodeBatch.stack(episodes), thresholds)}  # fmt: skip
                atomic_write_text(RESULT, json.dumps(results, indent=1))
                print(key, json.dumps(results[key]), flush=True)


if __name__ == "__main__":
    main()
