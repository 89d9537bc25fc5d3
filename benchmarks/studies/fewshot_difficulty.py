"""How hard is the few-shot glyph suite when the evaluation scripts are rendered with stronger distortions (issue 22)?

The glyph suite saturates (prototypes 97.6–99.9 %), so a harder one is defined by changing the data, before any
generator runs and by one criterion only: the nearest-centroid rule's accuracy at 5-way 1-shot, at most 85 %. Each
level multiplies the renderer's augmentation of the *evaluation* scripts (rotation, shear, elastic displacement,
stroke width, shift; ``FewShotSuiteConfig.test_glyphs``) while the Conv-4 and the meta-training episodes keep the
default renders; the prototype and logistic-regression rules are scored on the suite's 500 test episodes per setting.

    python benchmarks/studies/fewshot_difficulty.py                 # levels 0–3, seed 0
    python benchmarks/studies/fewshot_difficulty.py --levels 2 --seeds 0 1 2

Results: ``benchmarks/studies/results/fewshot_difficulty.json`` (rewritten after every cell).
"""

import argparse
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.baselines.heads import prototype_head  # noqa: E402
from peft_mcdi.tasks.episodes import EpisodeBatch  # noqa: E402
from peft_mcdi.tasks.vision_suites import build_suite, glyph_distortion  # noqa: E402
from peft_mcdi.utils import atomic_write_text  # noqa: E402
from peft_mcdi.zoo.heads import train_heads  # noqa: E402


RESULT = Path(__file__).with_name("results") / "fewshot_difficulty.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", nargs="+", default=["5w1s", "5w5s"])
    args = parser.parse_args()
    results = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    for seed in args.seeds:
        for level in args.levels:
            key = f"level{level}-seed{seed}"
            if key in results:
                continue
            distorted = glyph_distortion(level)
            suite = build_suite("glyphs-fewshot", seed=seed, test_glyphs=distorted, settings=args.settings,
                                num_train_tasks=8, progress=True)  # fmt: skip
            cell = {"level": level, "seed": seed, "test_glyphs": distorted}
            for setting, episodes in suite.tests.items():
                batch = EpisodeBatch.stack(episodes)
                cell[setting] = {
                    "episodes": len(episodes),
                    "prototype": float(batch.accuracy(prototype_head(batch)).mean()),
                    "logistic_regression": float(train_heads(batch, 100, 0.01).accuracy[-1].mean()),
                }
            results[key] = cell
            atomic_write_text(RESULT, json.dumps(results, indent=1))
            print(json.dumps(cell), flush=True)


if __name__ == "__main__":
    main()
