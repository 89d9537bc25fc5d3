"""Where could a MiniLM head be anchored on its description (SPEC §3.7 "anchor")? The cosine rule the base model
told the task follows (``prompted_base``) compares mean-pooled sentence embeddings; a
``BertForSequenceClassification`` head — what peft trains, exports and reloads — reads the pooler output instead
(tanh(W·h_CLS + b)). This measures, on held-out and training categories of the LLM benchmark's split (no zoo, no
training), each rule a fixed anchor could be, with the median threshold of ``prompted_base`` (no labels):

- ``mean_pool·description``: the cosine rule itself (``prompted_base``);
- ``pooler·pooler(description)``: the same rule in the space the head reads;
- ``pooler·description``: the head w_yes − w_no = s·c on the generator's own condition c (the description's
  sentence embedding) — the only anchor the generator can form from its condition alone.

    python benchmarks/studies/llm_anchor.py --seed 0
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.llm import LLMBenchConfig  # noqa: E402
from peft_mcdi.pipeline import build_tasksets  # noqa: E402


@torch.no_grad()
def features(shared, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit mean-pooled embeddings and unit pooler outputs of ``texts`` through the bare base model."""
    encoder = shared.model.get_base_model().base_model
    with shared.model.disable_adapter():
        enc = shared.tokenizer(texts, padding=True, return_tensors="pt")
        out = encoder(**enc)
    mask = enc["attention_mask"].unsqueeze(-1).float()
    mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    return F.normalize(mean, dim=-1), F.normalize(out.pooler_output, dim=-1)


def median_rule(similarity: torch.Tensor, labels: torch.Tensor) -> float:
    return float(((similarity > similarity.median()) == labels).float().mean())


def rules(task) -> dict[str, float]:
    words = [w for w, _ in task.concept.test]
    labels = torch.tensor([bool(y) for _, y in task.concept.test])
    mean, pooled = features(task.shared, [task.concept.description, *words])
    condition = F.normalize(task.condition, dim=-1)
    return {
        "mean_pool·description": median_rule(mean[1:] @ mean[0], labels),
        "pooler·pooler(description)": median_rule(pooled[1:] @ pooled[0], labels),
        "pooler·description": median_rule(pooled[1:] @ condition, labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-tasks", type=int, default=40, help="training categories measured as well")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "llm_minilm_anchor.json"))
    args = parser.parse_args()
    tasksets = build_tasksets(LLMBenchConfig.for_base("minilm").pipeline(args.seed, "mcdi"))
    splits = {"held_out": list(tasksets.test), "training": list(tasksets.train)[: args.train_tasks]}
    record = {"command": " ".join(["python", *sys.argv]), "seed": args.seed, "accuracy": {}}
    for split, tasks in splits.items():
        per_task = [rules(t) for t in tasks]
        record["accuracy"][split] = {k: statistics.fmean(r[k] for r in per_task) for k in per_task[0]}
        record["accuracy"][split]["tasks"] = len(tasks)
        print(split, json.dumps(record["accuracy"][split]), flush=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
