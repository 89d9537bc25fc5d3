"""Does the functional head generator's residual help, and where: in distribution or under a shift (issue 22)?

A functional head is the prototype rule plus a generated residual, h = anchor + Δ. This study takes the functional
generator a vision run saved and scores anchor + α·Δ for α in a grid, on the run's own test episodes and, for the
glyph suites, on the same evaluation scripts rendered the other way (default renders for the distorted suite,
distorted ones for the default suite): one generator, trained once on default renders of the background scripts,
measured in distribution and under the rendering shift. α = 0 is the prototype rule, α = 1 the generator's head.
Beside it, the logit spread of the anchor and of the residual: how strongly each part of the head votes.

    python benchmarks/studies/vision_residual_scale.py \
        --run benchmarks/results/vision_functional/vision_fewshot-distorted.json

Results: ``benchmarks/studies/results/vision_residual_scale.json`` (one entry per run, suite and seed).
"""

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.vision import VisionBenchConfig, recorded_generator  # noqa: E402
from peft_mcdi.generator.head import HeadGenerator  # noqa: E402
from peft_mcdi.tasks.episodes import EpisodeBatch, head_logits  # noqa: E402
from peft_mcdi.tasks.vision_suites import build_suite, glyph_distortion  # noqa: E402
from peft_mcdi.utils import atomic_write_text  # noqa: E402


RESULT = Path(__file__).with_name("results") / "vision_residual_scale.json"
ALPHAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5)  # fine near 0: the residual's logits are far larger


def logit_spread(head: dict[str, torch.Tensor], batch: EpisodeBatch) -> float:
    """Mean over queries of the logits' standard deviation across classes: how strongly a head votes."""
    return float(head_logits(head, batch.query_x).std(-1).mean())


def scaled_accuracy(generator: HeadGenerator, batch: EpisodeBatch, alphas=ALPHAS) -> dict:
    """Accuracy of anchor + α·(generated − anchor) for each α, on every episode of ``batch`` (seeds as the
    benchmark draws them), and the logit spread of the anchor and of the residual (their relative voice)."""
    heads = generator.generate_episode_heads(batch)
    anchor = generator.generator.anchor(generator.last_condition)
    residual = {k: heads[k] - anchor[k] for k in heads}
    accuracy = {
        f"{a:g}": float(batch.accuracy({k: anchor[k] + a * residual[k] for k in heads}).mean()) for a in alphas
    }
    spread = {"anchor": logit_spread(anchor, batch), "residual": logit_spread(residual, batch)}
    return {"accuracy": accuracy, "logit_spread": spread}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a vision results JSON (its runs' functional generators)")
    parser.add_argument("--generator", default="mcdi_functional", help="which saved generator of the run")
    args = parser.parse_args()
    results = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    for run in json.loads(Path(args.run).read_text())["runs"]:
        generator = recorded_generator(run, args.generator).generator
        config = VisionBenchConfig(**run["bench_config"])
        suite_config = {k: v for k, v in run["suite_config"].items() if k != "name"}
        views = {"as run": suite_config}
        if run["suite_config"]["name"] == "glyphs-fewshot":  # the same scripts, rendered the other way
            distorted = bool(suite_config.get("test_glyphs"))
            views["default renders" if distorted else "distorted renders"] = {
                **suite_config, "test_glyphs": {} if distorted else glyph_distortion(1)}  # fmt: skip
        sampling = {
            "mean of draws": config.head_generator,
            "one draw": partial(config.head_generator, single_sample=True),
        }
        for view, kwargs in views.items():
            suite = build_suite(run["suite_config"]["name"], **kwargs)
            for setting, episodes in suite.tests.items():
                batch = EpisodeBatch.stack(episodes)
                key = f"{Path(args.run).stem}/{run['suite']}/seed{run['seed']}/{view}/{setting}"
                results[key] = {name: scaled_accuracy(wrap(generator), batch) for name, wrap in sampling.items()}
                atomic_write_text(RESULT, json.dumps(results, indent=1))
                print(key, json.dumps(results[key]), flush=True)


if __name__ == "__main__":
    main()
