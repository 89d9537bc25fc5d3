"""Does centring the condition help a head generator across domains? A controlled single-level comparison.

Two generators with the benchmark's architecture, trained identically (single-level, same steps and seed) on the same
domain-generalisation zoo, differing only in the condition: the raw class prototypes, or the prototypes centred on
their episode mean and scaled to unit RMS (the head's logits do not change when every row moves by the same vector,
so the centred prototypes keep what decides the classes and drop a domain-level offset). Scored with 8 averaged
draws and guidance 2 on held-out-domain test episodes and on meta-training episodes, beside prototypes.

    python benchmarks/studies/vision_condition_centring.py --heldout-domain rotated
"""

import argparse
import json
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.baselines.heads import prototype_head  # noqa: E402
from peft_mcdi.evaluation.vision import VisionBenchConfig, collect_zoo  # noqa: E402
from peft_mcdi.generator.schedulers import SchedulerConfig  # noqa: E402
from peft_mcdi.meta.trainer import MetaTrainConfig, MetaTrainer  # noqa: E402
from peft_mcdi.pipeline import PipelineConfig, build_generator  # noqa: E402
from peft_mcdi.tasks.episodes import EpisodeBatch  # noqa: E402
from peft_mcdi.tasks.vision_suites import build_suite  # noqa: E402


def centred(prototypes: torch.Tensor) -> torch.Tensor:
    """(…, N, d) prototypes minus their mean over classes, scaled to unit RMS per episode."""
    x = prototypes - prototypes.mean(-2, keepdim=True)
    return x / x.pow(2).mean((-1, -2), keepdim=True).sqrt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heldout-domain", default="rotated")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="default: benchmarks/results/vision_condition_centring_<domain>.json")
    args = parser.parse_args()
    suite = build_suite("vision-dg", heldout_domain=args.heldout_domain, num_train_tasks=1000, num_test_tasks=200,
                        seed=args.seed)  # fmt: skip
    bench = VisionBenchConfig()
    store = collect_zoo(suite, suite.config, bench.recorder, progress=False)
    denoiser = bench.denoiser.to_dict() | {"condition_dim": suite.feature_dim}
    episodes = {
        "held-out domain 5w1s": suite.tests["5w1s"],
        "held-out domain 5w5s": suite.tests["5w5s"],
        "meta-training episodes (1-shot)": [t for t in suite.train if t.support_x.shape[0] == 5][:200],
    }
    results = {}
    for name, transform in (("raw prototypes", lambda x: x), ("centred prototypes", centred)):
        config = PipelineConfig(
            taskset=suite.name, scheduler=SchedulerConfig(num_segments=3), denoiser=denoiser,
            codec_normalization=bench.codec_normalization,
            meta=MetaTrainConfig(algorithm="single_level", num_outer_steps=args.steps, meta_batch_size=8,
                                 samples_per_task=8, outer_lr=3e-3, seed=args.seed),
        )  # fmt: skip
        generator, data = build_generator(config, store, suite.tasksets("5w1s"))
        data.conditions = transform(data.conditions)
        MetaTrainer(generator, data, config.meta).train(progress=False)
        head_generator = bench.head_generator(generator)
        for split, tasks in episodes.items():
            batch, n = EpisodeBatch.stack(tasks), bench.num_samples
            condition = transform(head_generator.conditions(batch.support_x, batch.support_y, batch.num_ways))
            E = condition.shape[0]
            heads = generator.generate(condition.repeat_interleave(n, 0), seed=list(range(E * n)),
                                       guidance_scale=bench.guidance_scale)  # fmt: skip
            heads = {k: v.unflatten(0, (E, n)).mean(1) for k, v in heads.items()}
            results.setdefault(split, {})[name] = float(batch.accuracy(heads).mean())
            results[split]["prototype"] = float(batch.accuracy(prototype_head(batch)).mean())
            print(split, name, round(results[split][name], 4), "prototype", round(results[split]["prototype"], 4))
    out = Path(
        args.out or Path(__file__).with_name("results") / f"vision_condition_centring_{args.heldout_domain}.json"
    )
    record = {"command": "python benchmarks/studies/vision_condition_centring.py " + " ".join(sys.argv[1:]),
              "steps": args.steps, "seed": args.seed, "accuracy": results}  # fmt: skip
    out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
