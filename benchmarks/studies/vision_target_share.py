"""Is Mc-Di behind Mv-Di because it sees the final target less often? Longer meta-training of both on one DG fold.

At a fixed number of outer steps, Mc-Di (k = 3) spends about a third of its diffusion samples on the segment whose
target is the final head, Mv-Di (k = 1) all of them. If that share is what holds Mc-Di back, Mc-Di at 3× the budget
should reach Mv-Di at 1×, and the gap should shrink as both train longer. This trains both variants with the
benchmark's configuration (same zoo, seed and evaluation episodes as ``benchmarks/vision.py --suite dg``) to
``--steps`` outer steps and scores them at every budget on the 5-way 1-shot held-out-domain episodes.

    python benchmarks/studies/vision_target_share.py --heldout-domain original --steps 900 --budgets 150 300 600
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.vision import VisionBenchConfig, collect_zoo, meta_train_variant  # noqa: E402
from peft_mcdi.tasks.episodes import EpisodeBatch  # noqa: E402
from peft_mcdi.tasks.vision_suites import build_suite  # noqa: E402
from peft_mcdi.utils import cache_root, merged, stable_hash  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heldout-domain", default="original")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--budgets", type=int, nargs="+", default=[150, 300, 600])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train-tasks", type=int, default=1000)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "vision_target_share.json"))
    args = parser.parse_args()
    config = VisionBenchConfig(**merged(VisionBenchConfig().to_dict(), {
        "meta": {"num_outer_steps": args.steps}, "budgets": args.budgets, "variants": ["mcdi", "mvdi"]}))  # fmt: skip
    suite = build_suite("vision-dg", heldout_domain=args.heldout_domain, num_train_tasks=args.num_train_tasks,
                        seed=args.seed)  # fmt: skip
    store = collect_zoo(suite, suite.config, config.recorder, progress=False)
    run_dir = cache_root() / "runs" / f"target-share-{stable_hash([suite.config, config.to_dict()])}"
    batch = EpisodeBatch.stack(suite.tests["5w1s"])[: config.curve_episodes]

    def evaluate(generator) -> float:
        heads = config.head_generator(generator).generate_episode_heads(batch)
        return float(batch.accuracy(heads).mean())

    curves = {}
    for variant in config.variants:
        start = time.perf_counter()
        _, training = meta_train_variant(variant, suite, store, config, run_dir, args.seed, evaluate, False)
        curves[variant] = training["curve"]
        print(variant, [(p["outer_steps"], round(p["accuracy"], 4)) for p in training["curve"]],
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    record = {
        "command": "python benchmarks/studies/vision_target_share.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "heldout_domain": args.heldout_domain,
        "seed": args.seed,
        "episodes": len(batch.support_x),
        "setting": "5w1s",
        "curves": curves,
    }
    Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
