"""Which space can a description → MiniLM head map use, zero-shot, when it is trained through the task loss?
(SPEC §3.7: "in a space aligned with the condition and with the capacity to use it".)

Frozen MiniLM, head only, the LLM benchmark's WordNet split (training categories' examples to train, held-out
categories' test words to score). Three spaces a 2-way head could read — the mean-pooled sentence embedding (the
space of the condition c, the description's own embedding), the last CLS hidden state, and the pooler output
tanh(W·h_CLS + b) that ``BertForSequenceClassification`` reads and peft exports — and three maps c → (w, b):

- ``bilinear_functional``: w = A·c + a, b = u·c + b₀, trained by BCE on the training tasks' examples (SPEC's 70.3 %);
- ``anchored_functional``: the same plus s·c on w (zero residual = the cosine rule where c lives in the space);
- ``ridge_to_fitted``: ridge from c to each training task's own fitted head (fitting weights, not what they do).

    python benchmarks/studies/llm_head_space.py --seed 0
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.llm import LLMBenchConfig  # noqa: E402
from peft_mcdi.pipeline import build_tasksets  # noqa: E402


SPACES = ("mean_pool", "cls", "pooler")


@torch.no_grad()
def embed(shared, words: list[str], batch: int = 512) -> dict[str, torch.Tensor]:
    """{space: (n, 384)} unit features of ``words`` through the bare base model, in each candidate space."""
    encoder = shared.model.get_base_model().base_model
    out = {s: [] for s in SPACES}
    with shared.model.disable_adapter():
        for i in range(0, len(words), batch):
            enc = shared.tokenizer(words[i : i + batch], padding=True, return_tensors="pt")
            h = encoder(**enc)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out["mean_pool"].append((h.last_hidden_state * mask).sum(1) / mask.sum(1))
            out["cls"].append(h.last_hidden_state[:, 0])
            out["pooler"].append(h.pooler_output)
    return {s: F.normalize(torch.cat(v), dim=-1) for s, v in out.items()}


def task_tensors(tasks, split: str, feats: dict[str, torch.Tensor], index: dict[str, int]):
    """Per task: (space → (n, 384) features), (n,) labels, for the task's ``split`` examples."""
    rows = []
    for t in tasks:
        pairs = getattr(t.concept, split)
        ids = torch.tensor([index[w] for w, _ in pairs])
        rows.append(({s: f[ids] for s, f in feats.items()}, torch.tensor([float(y) for _, y in pairs])))
    return rows


class HeadMap(torch.nn.Module):
    """c → (w, b): w = A·c + a (+ s·c when anchored), b = u·c + b₀."""

    def __init__(self, dim: int, anchored: bool):
        super().__init__()
        self.A = torch.nn.Parameter(torch.zeros(dim, dim))
        self.a = torch.nn.Parameter(torch.zeros(dim))
        self.u = torch.nn.Parameter(torch.zeros(dim))
        self.b0 = torch.nn.Parameter(torch.zeros(()))
        self.s = torch.nn.Parameter(torch.full((), 10.0)) if anchored else None

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = c @ self.A.T + self.a + (self.s * c if self.s is not None else 0)
        return w, c @ self.u + self.b0


def stack(rows, space):
    x = torch.stack([r[0][space] for r in rows])  # tasks have equal example counts per split
    return x, torch.stack([r[1] for r in rows])


def accuracy(w, b, rows, space) -> float:
    """Mean over tasks of each task's accuracy (tasks' test sets differ in size), as the benchmark reports it."""
    per_task = [((r[0][space] @ wi + bi > 0).float() == r[1]).float().mean() for r, wi, bi in zip(rows, w, b)]
    return float(torch.stack(per_task).mean())


def train_functional(c_train, x, y, anchored: bool, steps: int, seed: int) -> HeadMap:
    torch.manual_seed(seed)
    head = HeadMap(c_train.shape[1], anchored)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        idx = torch.randint(0, len(c_train), (32,))
        w, b = head(c_train[idx])
        logits = torch.einsum("tnd,td->tn", x[idx], w) + b[:, None]
        loss = F.binary_cross_entropy_with_logits(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def fitted_heads(x, y, steps: int = 300) -> torch.Tensor:
    """(tasks, 385) each training task's own logistic head (w, b) on its examples, all at once."""
    wb = torch.zeros(x.shape[0], x.shape[2] + 1, requires_grad=True)
    opt = torch.optim.Adam([wb], lr=0.1)
    for _ in range(steps):
        logits = torch.einsum("tnd,td->tn", x, wb[:, :-1]) + wb[:, -1:]
        loss = F.binary_cross_entropy_with_logits(logits, y) + 1e-3 * wb[:, :-1].pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return wb.detach()


def ridge(c, targets, alpha: float = 1.0) -> torch.Tensor:
    c1 = torch.cat([c, torch.ones(len(c), 1)], 1)
    return torch.linalg.solve(c1.T @ c1 + alpha * torch.eye(c1.shape[1]), c1.T @ targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000, help="Adam steps of the functional maps (32 tasks each)")
    parser.add_argument("--out", default=None, help="default: results/llm_minilm_head_space_seed<seed>.json")
    args = parser.parse_args()
    tasksets = build_tasksets(LLMBenchConfig.for_base("minilm").pipeline(args.seed, "mcdi"))
    train, test = list(tasksets.train), list(tasksets.test)
    words = sorted({w for t in train for w, _ in t.concept.train} | {w for t in test for w, _ in t.concept.test})
    feats = embed(train[0].shared, words)
    index = {w: i for i, w in enumerate(words)}
    tr, te = task_tensors(train, "train", feats, index), task_tensors(test, "test", feats, index)
    c_train = F.normalize(torch.stack([t.condition for t in train]), dim=-1)
    c_test = F.normalize(torch.stack([t.condition for t in test]), dim=-1)
    record = {"command": " ".join(["python", *sys.argv]), "seed": args.seed, "held_out_accuracy": {}}
    for space in SPACES:
        x, y = stack(tr, space)
        row = {}
        for name, anchored in (("bilinear_functional", False), ("anchored_functional", True)):
            head = train_functional(c_train, x, y, anchored, args.steps, args.seed)
            with torch.no_grad():
                row[name] = accuracy(*head(c_test), te, space)
        coef = ridge(c_train, fitted_heads(x, y))
        pred = torch.cat([c_test, torch.ones(len(c_test), 1)], 1) @ coef
        row["ridge_to_fitted"] = accuracy(pred[:, :-1], pred[:, -1], te, space)
        record["held_out_accuracy"][space] = row
        print(space, json.dumps(row), flush=True)
    out = Path(args.out or Path(__file__).with_name("results") / f"llm_minilm_head_space_seed{args.seed}.json")
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
