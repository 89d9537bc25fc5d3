"""Text-classification tasks on a real encoder: one LoRA (+ classification head) per task, trained by the recorder.

The base model is shared by every task; a task's parameters are the adapter's LoRA matrices and head under the
canonical names of :meth:`McDiModel.lora_parameters` (the generator's codec names), evaluated with
``torch.func.functional_call`` so collecting a zoo never copies the base model. The input is the example alone
(``"{word}"``): the task lives in the adapter, not in the prompt.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from peft_mcdi.data.wordnet import ConceptTask, WordNetTaskConfig, build_concept_tasks
from peft_mcdi.meta.tasks import Task, TaskSet, TaskSets, register_tasksets


class SharedLoRAModel:
    """A ``PeftModel`` (MCDI config) plus tokenizer, with the map canonical name → full parameter name, and the
    shared initialisation θ₀ of SPEC §3.1: A from one fixed seed for every task, B = 0, an all-zero head."""

    def __init__(self, peft_model, tokenizer, init_seed: int = 0, max_length: int = 16) -> None:
        self.model = peft_model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        canonical = peft_model.base_model.lora_parameters()
        by_id = {id(p): n for n, p in peft_model.named_parameters()}
        self.full_names = {name: by_id[id(p)] for name, p in canonical.items()}
        g = torch.Generator().manual_seed(init_seed)
        self.theta0 = {}
        for name, p in canonical.items():
            if name.endswith("lora_A.weight"):  # kaiming-uniform-like, as peft initialises A, but from our seed
                bound = 1 / p.shape[1] ** 0.5
                self.theta0[name] = (torch.rand(p.shape, generator=g) * 2 - 1) * bound
            else:
                self.theta0[name] = torch.zeros(p.shape)

    def batch(self, pairs: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        words = [w for w, _ in pairs]
        enc = self.tokenizer(words, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        enc["labels"] = torch.tensor([y for _, y in pairs])
        return dict(enc)

    def forward(self, params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]):
        full = {self.full_names[k]: v for k, v in params.items()}
        return functional_call(self.model, full, args=(), kwargs=batch, strict=False)


class ConceptLoRATask(Task):
    """A WordNet concept task (:mod:`peft_mcdi.data.wordnet`) trained as LoRA + head on a shared encoder."""

    metric = "accuracy"
    higher_is_better = True

    def __init__(self, task: ConceptTask, shared: SharedLoRAModel, condition: torch.Tensor, batch_size: int = 32):
        self.task_id = task.task_id.replace(".", "_")
        self.concept = task
        self.shared = shared
        self.condition = condition
        self.batch_size = batch_size
        self._test = shared.batch(task.test)

    def init_params(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shared.theta0.items()}

    def loss(self, params, batch) -> torch.Tensor:
        return self.shared.forward(params, batch).loss

    def train_batches(self, epoch, generator):
        order = torch.randperm(len(self.concept.train), generator=generator).tolist()
        for start in range(0, len(order), self.batch_size):
            yield self.shared.batch([self.concept.train[i] for i in order[start : start + self.batch_size]])

    @torch.no_grad()
    def evaluate(self, params) -> torch.Tensor:
        """Test accuracy; params may carry one leading batch dim (several candidate adapters)."""
        first = next(iter(params.values()))
        expected = self.shared.theta0[next(iter(params))].dim()
        if first.dim() == expected:
            logits = self.shared.forward(params, self._test).logits
            return (logits.argmax(-1) == self._test["labels"]).float().mean()
        return torch.stack([self.evaluate({k: v[j] for k, v in params.items()}) for j in range(first.shape[0])])


@register_tasksets("wordnet-minilm")
def wordnet_minilm_tasksets(
    num_train_tasks: int = 48,
    num_test_tasks: int = 8,
    r: int = 4,
    target_modules: tuple[str, ...] = ("query", "value"),
    seed: int = 0,
) -> TaskSets:
    """WordNet concept tasks on all-MiniLM-L6-v2 with a generated LoRA (r, query/value) and a 2-way head; task
    conditions are MiniLM sentence embeddings of the descriptions. Held-out tasks share no ancestor/descendant with
    training ones."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peft_mcdi.generator.condition import DEFAULT_TEXT_ENCODER, TextEncoder, resolve_text_encoder
    from peft_mcdi.tuners.mcdi import McDiConfig

    path = resolve_text_encoder(DEFAULT_TEXT_ENCODER)
    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    config = McDiConfig(r=r, target_modules=list(target_modules), task_type="SEQ_CLS")
    shared = SharedLoRAModel(get_peft_model(base, config), AutoTokenizer.from_pretrained(path), init_seed=seed)
    concepts = build_concept_tasks(WordNetTaskConfig(num_heldout=num_test_tasks, max_train=num_train_tasks, seed=seed))
    encoder = TextEncoder(DEFAULT_TEXT_ENCODER)
    splits = {}
    for split, items in concepts.items():
        conditions = encoder.encode([t.description for t in items])
        splits[split] = TaskSet([ConceptLoRATask(t, shared, c) for t, c in zip(items, conditions)], f"wordnet/{split}")
    return TaskSets(splits["train"], splits["test"])
