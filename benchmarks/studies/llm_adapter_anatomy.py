"""Why the WordNet LoRA generators fail: what in a trained adapter carries its accuracy, and how task-specific it is.

On the zoo of ``benchmarks/llm.py`` (same configuration and seed): (1) training tasks' own adapters evaluated whole,
with only their head (LoRA back at θ₀; A alone does nothing while B = 0) and with B + head (A back at θ₀); (2) how far
each part moved from θ₀ against θ₀'s own scale; (3) how much of the task deltas is shared across tasks, and how
aligned the rest is; (4) a ridge regression from the description embedding to the head alone (LoRA at θ₀), on
held-out tasks — what a description-to-weights map can carry when it only has to produce the 385 numbers that matter
most; (5) with ``--shots K``, the same map from the description plus K labelled training words per class, and those
words used directly as class prototypes (nearest centroid, nothing generated): is the condition what limits it?

    python benchmarks/studies/llm_adapter_anatomy.py --base minilm --seed 0 --shots 4
    python benchmarks/studies/llm_adapter_anatomy.py --base minilm --seed 0 --name lora_fa \
        --config '{"num_train_tasks": 150, "recorder": {"frozen": ["*lora_A*"]}}'      # a LoRA-FA zoo
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.llm import LLMBenchConfig  # noqa: E402
from peft_mcdi.generator.condition import DEFAULT_TEXT_ENCODER, TextEncoder  # noqa: E402
from peft_mcdi.pipeline import build_tasksets, zoo_folder  # noqa: E402
from peft_mcdi.zoo.store import ZooStore  # noqa: E402


def part(name: str) -> str:
    return "lora_A" if "lora_A" in name else "lora_B" if "lora_B" in name else "head"


def with_head(task, row: torch.Tensor) -> dict[str, torch.Tensor]:
    """θ₀ with a 2-way head whose rows are ±row[:-1] and biases ±row[-1] (trained heads are antisymmetric)."""
    params = task.init_params()
    params["classifier.weight"] = torch.stack([-row[:-1], row[:-1]])
    params["classifier.bias"] = torch.stack([-row[-1], row[-1]])
    return params


def delta_structure(deltas: torch.Tensor) -> dict[str, float]:
    """How much of the task deltas (n tasks × weights) all tasks share — the energy of their mean — and how aligned
    what is left is between tasks (mean |cos| of the centred deltas, 0 for unrelated directions)."""
    n = len(deltas)
    mean = deltas.mean(0)
    centred = torch.nn.functional.normalize(deltas - mean, dim=1)
    cos = (centred @ centred.T).abs()
    return {
        "delta_energy_shared_across_tasks": float(mean.pow(2).sum() * n / deltas.pow(2).sum()),
        "mean_abs_cos_centred_deltas": float((cos.sum() - n) / (n * (n - 1))),
    }


def ridge_heads(train, test, heads: torch.Tensor, condition, ridge: float) -> list[dict[str, torch.Tensor]]:
    """A ridge regression from ``condition(task)`` to the trained head, fitted on the training tasks, applied to the
    held-out ones: their parameters (θ₀ with the predicted head)."""
    x = torch.stack([condition(t) for t in train])
    xm, ym = x.mean(0), heads.mean(0)
    xc = x - xm
    w = torch.linalg.solve(xc.T @ xc + ridge * torch.eye(xc.shape[1]), xc.T @ (heads - ym))
    return [with_head(t, (condition(t) - xm) @ w + ym) for t in test]


def shot_words(pairs: list[tuple[str, int]], shots: int) -> tuple[list[str], list[str]]:
    """The first ``shots`` positive and negative words of a task's training split."""
    return [w for w, y in pairs if y == 1][:shots], [w for w, y in pairs if y == 0][:shots]


def shot_contrast(encoder, pairs: list[tuple[str, int]], shots: int) -> torch.Tensor:
    """What K labelled words per class say about a task, on the description's scale: the unit difference of the
    mean embeddings of its positive and negative words."""
    pos, neg = shot_words(pairs, shots)
    emb = encoder.encode(pos + neg)
    return torch.nn.functional.normalize(emb[: len(pos)].mean(0) - emb[len(pos) :].mean(0), dim=0)


def prototype_scores(encoder, tasks, shots: int) -> dict[str, float]:
    """The classic few-shot baseline with no training at all: a test word is positive when its embedding is closer
    to the mean of the K positive words than to the mean of the K negative ones."""
    accuracy, auc = [], []
    for task in tasks:
        pos, neg = shot_words(task.concept.train, shots)
        emb = encoder.encode(pos + neg)
        protos = torch.stack([emb[len(pos) :].mean(0), emb[: len(pos)].mean(0)])
        words, labels = zip(*task.concept.test)
        scores = encoder.encode(list(words)) @ protos.T
        margin, labels = scores[:, 1] - scores[:, 0], torch.tensor(labels).bool()
        accuracy.append(float(((margin > 0) == labels).float().mean()))
        pos_m, neg_m = margin[labels], margin[~labels]
        auc.append(float((pos_m[:, None] > neg_m[None, :]).float().mean()))
    return {"heldout_accuracy": statistics.fmean(accuracy), "heldout_roc_auc": statistics.fmean(auc)}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="minilm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=40, help="training tasks whose own adapters are dissected")
    parser.add_argument("--ridge", type=float, default=1.0)
    parser.add_argument("--config", help="JSON overrides of the benchmark configuration (which zoo), as in llm.py")
    parser.add_argument("--name", help="suffix of the results file, e.g. lora_fa → llm_minilm_anatomy_lora_fa.json")
    parser.add_argument(
        "--shots", type=int, default=0, help="also fit the head from the description plus K labelled words per class"
    )
    args = parser.parse_args()
    config = LLMBenchConfig.for_base(args.base, json.loads(args.config or "{}"))
    pipeline = config.pipeline(args.seed, "mcdi")
    tasksets = build_tasksets(pipeline)
    store = ZooStore(zoo_folder(pipeline)[0])
    train = list(tasksets.train)
    final = {t.task_id: {n: v[-1] for n, v in store.read(t.task_id).params.items()} for t in train}

    rows = {"whole": [], "head only": [], "B + head": []}
    aucs = {"whole": [], "head only": []}
    for task in train[: args.tasks]:
        theta0, own = task.init_params(), final[task.task_id]
        for label, keep in (("whole", {"lora_A", "lora_B", "head"}), ("head only", {"head"}),
                            ("B + head", {"lora_B", "head"})):  # fmt: skip
            params = {n: own[n] if part(n) in keep else theta0[n] for n in own}
            rows[label].append(float(task.evaluate(params)))
            if label in aucs:
                aucs[label].append(task.roc_auc(params))
    theta0 = train[0].init_params()
    deltas = torch.stack([torch.cat([(final[t.task_id][n] - theta0[n]).flatten() for n in theta0]) for t in train])
    scale = {}
    for p in ("lora_A", "lora_B", "head"):
        names = [n for n in theta0 if part(n) == p]
        d = torch.cat([(final[t.task_id][n] - theta0[n]).flatten() for t in train for n in names])
        base = torch.cat([theta0[n].flatten() for n in names])
        scale[p] = {"numel": sum(theta0[n].numel() for n in names), "delta_rms": float(d.pow(2).mean().sqrt()),
                    "theta0_rms": float(base.pow(2).mean().sqrt())}  # fmt: skip

    heads = torch.stack([torch.cat([final[t.task_id]["classifier.weight"][1], final[t.task_id]["classifier.bias"][1:]])
                         for t in train])  # fmt: skip
    ridge = {"description": ridge_heads(train, tasksets.test, heads, lambda t: t.condition.float(), args.ridge)}
    if args.shots:
        encoder = TextEncoder(DEFAULT_TEXT_ENCODER)
        contrast = {t.task_id: shot_contrast(encoder, t.concept.train, args.shots) for t in [*train, *tasksets.test]}
        ridge["description + examples"] = ridge_heads(
            train, tasksets.test, heads, lambda t: torch.cat([t.condition.float(), contrast[t.task_id]]), args.ridge
        )
        ridge["examples"] = ridge_heads(train, tasksets.test, heads, lambda t: contrast[t.task_id], args.ridge)
    record = {
        "command": "python benchmarks/studies/llm_adapter_anatomy.py " + " ".join(sys.argv[1:]),
        "zoo": str(zoo_folder(pipeline)[0]),
        "own_adapters_accuracy": {k: statistics.fmean(v) for k, v in rows.items()},
        "own_adapters_roc_auc": {k: statistics.fmean(v) for k, v in aucs.items()},
        "num_tasks_dissected": len(rows["whole"]),
        "scale": scale,
        **delta_structure(deltas),
        "ridge_lambda": args.ridge,
        **{
            f"ridge_head_from_{name.replace(' + ', '_and_')}": {
                "heldout_accuracy": statistics.fmean(float(t.evaluate(p)) for t, p in zip(tasksets.test, params)),
                "heldout_roc_auc": statistics.fmean(t.roc_auc(p) for t, p in zip(tasksets.test, params)),
            }
            for name, params in ridge.items()
        },
    }
    if args.shots:
        record["shots_per_class"] = args.shots
        record["prototype_from_examples"] = prototype_scores(encoder, tasksets.test, args.shots)
    suffix = f"_{args.name}" if args.name else ""
    out = Path(__file__).with_name("results") / f"llm_{args.base}_anatomy{suffix}.json"
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
