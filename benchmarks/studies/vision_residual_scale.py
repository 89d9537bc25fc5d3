"""Does the functional head generator's residual help, and where: in distribution or under a shift (issue 22)?

A functional head is the prototype rule plus a generated residual, h = anchor + Δ. This study takes the functional
generator a vision run saved and scores anchor + α·Δ for α in a grid, on the run's own test episodes and, for the
glyph suites, on the same evaluation scripts rendered the other way (default renders for the distorted suite,
distorted ones for the default suite): one generator, trained once on default renders of the background scripts,
measured in distribution and under the rendering shift. α = 0 is the prototype rule, α = 1 the generator's head.

    python benchmarks/studies/vision_residual_scale.py \
        --run benchmarks/results/vision_functional/vision_fewshot-distorted.json

Results: ``benchmarks/studies/results/vision_residual_scale.json`` (one entry per run, suite and seed).
"""

import argparse
import json
import sys
from functools import partial
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.vision import VisionBenchConfig, recorded_generator  # noqa: E402
from peft_mcdi.generator.head import HeadGenerator  # noqa: E402
from peft_mcdi.tasks.episodes import EpisodeBatch  # noqa: E402
from peft_mcdi.tasks.vision_suites import build_suite, glyph_distortion  # noqa: E402
from peft_mcdi.utils import atomic_write_text  # noqa: E402


RESULT = Path(__file__).with_name("results") / "vision_residual_scale.json"
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def scaled_accuracy(generator: HeadGenerator, batch: EpisodeBatch, alphas=ALPHAS) -> dict[str, float]:
    """Accuracy of anchor + α·(generated − anchor) for each α, on every episode of ``batch`` (seeds as the
    benchmark draws them)."""
    heads = generator.generate_heads(batch.support_x, batch.support_y, batch.num_ways,
                                     seed=list(range(len(batch.support_x))))  # fmt: skip
    anchor = generator.generator.anchor(generator.last_condition)
    out = {}
    for alpha in alphas:
        mixed = {k: anchor[k] + alpha * (heads[k] - anchor[k]) for k in heads}
        out[f"{alpha:g}"] = float(batch.accuracy(mixed).mean())
    return out


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
