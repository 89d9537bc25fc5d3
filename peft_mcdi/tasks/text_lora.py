"""Text-classification tasks on real models: one LoRA (+ classification head) per task, trained by the recorder.

The base model is shared by every task; a task's parameters are the adapter's LoRA matrices (and head) under the
canonical names of :meth:`McDiModel.lora_parameters` (the generator's codec names), evaluated with
``torch.func.functional_call`` so collecting a zoo never copies the base model. The base may sit on an accelerator
(``build_peft_model(device=...)``; the benchmarks: ``$MCDI_DEVICE``): its passes run there, while adapters, their
optimisers, losses and scores come back to the CPU, where the recorder and the baselines keep them. The input is the
example alone in a fixed template: the task lives in the adapter, not in the prompt. Two kinds of base:

- an encoder classifier (MiniLM): the 2-way head is generated with the LoRA (the paper's RoBERTa-on-GLUE setting);
- a causal LM (SmolLM2): no head; the answer is the more likely of the label words " no" / " yes".
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.func import functional_call

from peft_mcdi.tasks.base import Task, TaskSet, TaskSets, accuracy, register_tasksets
from peft_mcdi.tasks.wordnet import ConceptTask, WordNetTaskConfig, build_concept_tasks
from peft_mcdi.utils import compute_device, to_device


class SharedLoRAModel:
    """A sequence-classification ``PeftModel`` (MCDI config) plus tokenizer, with the map canonical name → full
    parameter name, and the shared initialisation θ₀ of SPEC §3.1: A from one fixed seed for every task, B = 0, an
    all-zero head (θ₀ is therefore exactly the base model with a head that has not chosen a class)."""

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

    @property
    def device(self) -> torch.device:
        """Where the base model's passes run (the adapters, losses and scores live on the CPU)."""
        return next(self.model.parameters()).device

    def on_device(self, tensors: dict) -> dict:
        """``tensors``' tensor values on :attr:`device` (differentiably: gradients flow back to CPU adapters)."""
        return to_device(tensors, self.device)

    PROMPT_LENGTH = 64  # tokens kept of a task description put before the example (prompted baselines)
    LABELS = ("no", "yes")  # class 0 and 1 of every task of these families: is the input a member?

    def texts(self, words: list[str]) -> list[str]:
        return words

    def usage_metadata(self) -> dict:
        """How a generator trained on these tasks is fed, for its metadata (``AutoMcDiModel`` reads it): the input
        template (``str.format`` with ``{input}``) and the class names."""
        return {"input_template": self.texts(["{input}"])[0], **({"labels": list(self.LABELS)} if self.LABELS else {})}

    def encode(self, words: list[str], descriptions: list[str] | None = None):
        """Tokenised inputs: the example alone in the fixed template, or, for the prompted baselines (multi-task
        LoRA, the base model told the task), preceded by its task description — a sentence pair for the
        encoder, whose description is truncated first."""
        if descriptions is None:
            return self.tokenizer(
                self.texts(words), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        return self.tokenizer(
            descriptions,
            self.texts(words),
            padding=True,
            truncation="only_first",
            max_length=self.max_length + self.PROMPT_LENGTH,
            return_tensors="pt",
        )

    def batch(self, pairs: list[tuple[str, int]], descriptions: list[str] | None = None) -> dict[str, torch.Tensor]:
        enc = dict(self.encode([w for w, _ in pairs], descriptions))
        enc["labels"] = torch.tensor([y for _, y in pairs])
        return enc

    def selection_examples(self, pairs: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        """Labelled examples as ``McDiModel.adapt(num_samples=..., examples=...)`` takes them: inputs whose
        ``model(**examples).loss`` is the task loss."""
        return self.batch(pairs)

    def forward(
        self, params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], groups: torch.Tensor | None = None
    ):
        """The model with the adapter ``params``; with ``groups`` (B,), each parameter carries a leading group axis
        and row i of the batch runs with adapter ``groups[i]``: many adapters in one pass (:meth:`grouped_loss`)."""
        batch, params = self.on_device(batch), self.on_device(params)
        if groups is not None:
            with self._per_row_adapters(params, groups.to(self.device)):
                return self.model(**batch)
        full = {self.full_names[k]: v for k, v in params.items()}
        return functional_call(self.model, full, args=(), kwargs=batch, strict=False)

    @contextmanager
    def _per_row_adapters(self, params: dict[str, torch.Tensor], groups: torch.Tensor):
        """The base model (adapters disabled) with forward hooks that add row i's LoRA update x·Aᵀ·Bᵀ·scale and
        compute row i's head from ``params[…][groups[i]]``: gathers and batched matmuls, no copy of the model."""
        root = self.model.base_model.model
        handles = []

        def lora_hook(a, b):
            def hook(module, args, output):
                x = args[0].reshape(groups.shape[0], -1, args[0].shape[-1])  # (B, L, in)
                low = torch.einsum("bli,bri->blr", x, a[groups])
                delta = torch.einsum("blr,bor->blo", low, b[groups]) * module.scaling["default"]
                return output + delta.reshape(output.shape)

            return hook

        def head_hook(weight, bias):
            def hook(module, args, output):
                out = torch.einsum("b...i,boi->b...o", args[0], weight[groups])
                return out if bias is None else out + bias[groups].view(-1, *[1] * (out.dim() - 2), bias.shape[-1])

            return hook

        try:
            for name in params:
                if name.endswith(".lora_A.weight"):
                    path = name[: -len(".lora_A.weight")]
                    hook = lora_hook(params[name], params[f"{path}.lora_B.weight"])
                elif name.endswith(".weight") and not name.endswith(".lora_B.weight"):
                    path = name[: -len(".weight")]
                    hook = head_hook(params[name], params.get(f"{path}.bias"))
                else:
                    continue
                handles.append(root.get_submodule(path).register_forward_hook(hook))
            with self.model.disable_adapter():
                yield
        finally:
            for handle in handles:
                handle.remove()

    def concatenate(self, batches: list[dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One batch of several tokenised batches, padded to the longest on the tokenizer's padding side, and the
        group of each row."""
        length = max(b["input_ids"].shape[1] for b in batches)
        left = self.tokenizer.padding_side == "left"

        def pad(key: str, value: torch.Tensor) -> torch.Tensor:
            if value.dim() < 2:  # labels
                return value
            fill = {"input_ids": self.tokenizer.pad_token_id, "labels": -100}.get(key, 0)
            width = (length - value.shape[1], 0) if left else (0, length - value.shape[1])
            return F.pad(value, width, value=fill)

        merged = {k: torch.cat([pad(k, b[k]) for b in batches]) for k in batches[0]}
        groups = torch.cat([torch.full((len(b["labels"]),), g) for g, b in enumerate(batches)])
        return merged, groups

    def grouped_loss(self, params: dict[str, torch.Tensor], batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """(G,) task loss of adapter ``params[g]`` on ``batches[g]``, all in one forward pass through the base."""
        batch, groups = self.concatenate(batches)
        rows = self.row_losses(params, batch, groups)
        total = torch.zeros(len(batches), dtype=rows.dtype).index_add(0, groups, rows)
        return total / torch.bincount(groups, minlength=len(batches))

    def logits(self, params, batch, groups: torch.Tensor | None = None) -> torch.Tensor:
        """(B, classes) logits whose cross-entropy with :meth:`targets` is the task loss."""
        return self.forward(params, batch, groups).logits

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["labels"]

    def row_losses(self, params, batch, groups: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) task loss of each example (row i with adapter ``groups[i]`` when given), on the CPU."""
        logits = self.logits(params, batch, groups)
        return F.cross_entropy(logits, self.targets(batch).to(logits.device), reduction="none").cpu()

    def loss(self, params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.row_losses(params, batch).mean()

    def scores(self, params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 2) class scores on the CPU; the prediction is their argmax (ties split:
        :func:`~peft_mcdi.tasks.base.accuracy`)."""
        return self.logits(params, batch).cpu()

    @torch.no_grad()
    def zero_shot_accuracy(
        self, description: str, pairs: list[tuple[str, int]], examples: list[tuple[str, int]] = ()
    ) -> float:
        """Accuracy of :meth:`told_the_task` on labelled ``pairs`` (the threshold uses no labels; test sets are
        balanced)."""
        predicted = self.told_the_task(description, [w for w, _ in pairs], examples)
        return float((predicted == torch.tensor([bool(y) for _, y in pairs])).float().mean())

    @torch.no_grad()
    def told_the_task(self, description: str, words: list[str], examples: list[tuple[str, int]] = ()) -> torch.Tensor:
        """The base encoder alone, told the task (the cosine rule): each word's membership (bool) — a word is
        a member when its mean-pooled embedding is closer to the description's than the median word's. With
        labelled ``examples`` (the encoder's form of examples in context), the reference moves towards the positive
        ones and away from the negative ones: description + mean of ±(example embedding), all unit vectors."""
        encoder = self.model.get_base_model().base_model  # the bare transformer under the classification head
        texts = [description, *[w for w, _ in examples], *words]
        with self.model.disable_adapter():
            enc = self.on_device(self.tokenizer(texts, padding=True, return_tensors="pt"))
            hidden = encoder(**enc).last_hidden_state.cpu()
        mask = enc["attention_mask"].cpu().unsqueeze(-1).to(hidden.dtype)
        pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        reference, k = pooled[0], 1 + len(examples)
        if examples:
            signs = torch.tensor([2.0 * y - 1 for _, y in examples])
            reference = reference + (signs[:, None] * pooled[1:k]).mean(0)
        similarity = pooled[k:] @ reference
        return similarity > similarity.median()


class CausalTemplateModel(SharedLoRAModel):
    """A causal-LM ``PeftModel`` whose input is the example in a text template, left-padded so that every row's
    answer starts after its last position. θ₀ (B = 0) is exactly the base model. Subclasses say what the answer is:
    a label word (:class:`SharedCausalLoRAModel`) or generated text
    (:class:`~peft_mcdi.tasks.text_generation.SharedGenerativeLoRAModel`)."""

    TEMPLATE = "Word: {word}\nAnswer:"
    LABELS: tuple[str, ...] = ()  # the answer is text; subclasses that choose between label words name them

    def __init__(
        self, peft_model, tokenizer, init_seed: int = 0, max_length: int = 32, template: str | None = None
    ) -> None:
        super().__init__(peft_model, tokenizer, init_seed, max_length)
        self.template = template or self.TEMPLATE
        if "{word}" not in self.template:
            raise ValueError(f"template must contain '{{word}}' (where the example goes), got {self.template!r}.")
        self.tokenizer.padding_side = "left"  # every answer is read at the last position
        self.tokenizer.truncation_side = "left"  # a long example loses its start, never the answer position
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def texts(self, words: list[str]) -> list[str]:
        return [self.template.format(word=w) for w in words]

    @staticmethod
    def _with_positions(enc) -> dict[str, torch.Tensor]:
        """Left padding: positions count real tokens only, so a row's answer does not depend on its batch."""
        return {**enc, "position_ids": (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)}

    def encode(self, words: list[str], descriptions: list[str] | None = None):
        """The template alone, or preceded by the task description on its own line (prompted baselines)."""
        texts = self.texts(words)
        if descriptions is None:
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        else:  # not truncated: the answer position is the prompt's last token
            enc = self.tokenizer([f"{d}\n{t}" for d, t in zip(descriptions, texts)], padding=True, return_tensors="pt")
        return self._with_positions(enc)


class SharedCausalLoRAModel(CausalTemplateModel):
    """A causal LM scored by the log-likelihood of the label words: the loss is −log p(label word) over the whole
    vocabulary at the answer position, the prediction the likelier of " no" / " yes"."""

    LABEL_WORDS = (" no", " yes")
    LABELS = tuple(w.strip() for w in LABEL_WORDS)

    def __init__(
        self, peft_model, tokenizer, init_seed: int = 0, max_length: int = 32, template: str | None = None
    ) -> None:
        super().__init__(peft_model, tokenizer, init_seed, max_length, template)
        ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in self.LABEL_WORDS]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"label words {self.LABEL_WORDS} must be single tokens for this tokenizer, got {ids}.")
        self.label_ids = torch.tensor([i[0] for i in ids])

    def batch(self, pairs: list[tuple[str, int]], descriptions: list[str] | None = None) -> dict[str, torch.Tensor]:
        enc = self.encode([w for w, _ in pairs], descriptions)
        return {**enc, "labels": torch.tensor([y for _, y in pairs])}

    def selection_examples(self, pairs: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        """The template followed by the label word, with LM labels on that word only (−100 elsewhere), so that
        ``model(**examples).loss`` is −log p(label word), the task loss."""
        texts = [t + self.LABEL_WORDS[y] for t, (_, y) in zip(self.texts([w for w, _ in pairs]), pairs)]
        enc = self._with_positions(self.tokenizer(texts, padding=True, return_tensors="pt"))
        labels = torch.full_like(enc["input_ids"], -100)
        labels[:, -1] = enc["input_ids"][:, -1]  # left padding: the label word is the last token of every row
        return {**enc, "labels": labels}

    def logits(self, params, batch, groups: torch.Tensor | None = None) -> torch.Tensor:
        """(B, vocab) next-token logits at the answer position."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.forward(params, {**inputs, "logits_to_keep": 1}, groups).logits[:, -1]

    def targets(self, batch) -> torch.Tensor:
        return self.label_ids[batch["labels"]]

    def scores(self, params, batch) -> torch.Tensor:
        return self.logits(params, batch)[:, self.label_ids.to(self.device)].cpu()

    @torch.no_grad()
    def zero_shot_accuracy(
        self, description: str, pairs: list[tuple[str, int]], examples: list[tuple[str, int]] = ()
    ) -> float:
        """The base LM prompted with the task description before the usual template (no adapter), and the labelled
        ``examples`` in context between them, each as template + label word on its lines. A 135M model answers
        " yes" to nearly everything, so, as for the encoder, the threshold is the median of the log-odds
        log p(" yes") − log p(" no") over the test words (no labels used; test sets are balanced)."""
        labels = torch.tensor([bool(y) for _, y in pairs])
        shots = [t + self.LABEL_WORDS[y] for t, (_, y) in zip(self.texts([w for w, _ in examples]), examples)]
        context = "\n".join([description, *shots])
        enc = self.on_device(self.encode([w for w, _ in pairs], [context] * len(pairs)))
        with self.model.disable_adapter():
            logits = self.model(**enc, logits_to_keep=1).logits[:, -1, self.label_ids.to(self.device)].cpu()
        log_odds = logits[:, 1] - logits[:, 0]
        return float(((log_odds > log_odds.median()) == labels).float().mean())


class ConceptLoRATask(Task):
    """A WordNet concept task (:mod:`peft_mcdi.tasks.wordnet`) trained as LoRA (+ head) on a shared base model."""

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
        return self.shared.loss(params, batch)

    @classmethod
    def grouped_loss(cls, tasks, params, batches):
        """One forward pass of the shared base model for every group (per-row adapters)."""
        shared = {id(t.shared) for t in tasks}
        if len(shared) > 1:
            raise ValueError(f"grouped_loss needs tasks on one shared model, got {len(shared)} models.")
        return tasks[0].shared.grouped_loss(params, batches)

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
            return accuracy(self.shared.scores(params, self._test), self._test["labels"])
        return torch.stack([self.evaluate({k: v[j] for k, v in params.items()}) for j in range(first.shape[0])])

    @torch.no_grad()
    def roc_auc(self, params: dict[str, torch.Tensor]) -> float:
        """Area under the ROC curve of the score margin (yes − no) on the test examples: how well ``params`` ranks
        positives above negatives whatever its threshold. Accuracy 0.5 with an AUC well above 0.5 means a
        miscalibrated adapter (one class for everything), an AUC of 0.5 one that carries no signal."""
        scores = self.shared.scores(params, self._test)
        margin, labels = scores[:, 1] - scores[:, 0], self._test["labels"].bool()
        pos, neg = margin[labels], margin[~labels]
        wins = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
        return float(wins.mean())

    def zero_shot_accuracy(self, shots: int = 0) -> float:
        """Test accuracy of the base model told the task in words (no adapter): the prompted baseline; with
        ``shots``, the first ``shots`` training examples (a shuffled draw) in context as well."""
        return self.shared.zero_shot_accuracy(self.concept.description, self.concept.test, self.concept.train[:shots])

    @torch.no_grad()
    def prompted_accuracy(self, params: dict[str, torch.Tensor], description: str | None = None) -> float:
        """Test accuracy of ``params`` when each test input is preceded by the task description (the multi-task
        LoRA's input format); ``description`` defaults to the task's own."""
        pairs = self.concept.test
        batch = self.shared.batch(pairs, [description or self.concept.description] * len(pairs))
        return float(accuracy(self.shared.scores(params, batch), batch["labels"]))


def quantized_4bit_config():
    """nf4 weights, float32 compute: the QLoRA recipe, with a compute dtype every CPU supports."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


def keep_4bit_layers_trainable_on_cpu(model: torch.nn.Module) -> int:
    """On CPUs with AVX512-BF16, bitsandbytes' ``Linear4bit`` repacks its weight into an inference-only layout the
    first time it runs in eval mode on an input that does not require grad; from then on no gradient flows back
    through the layer, so the LoRA weights of every earlier layer get none (found when collecting trajectories, which
    alternate training with no-grad evaluation). Trajectory collection needs both, so the repacking is switched off.
    Returns the number of layers changed."""
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


# Short names of the bases this project runs offline: (Hub id, PEFT task type).
KNOWN_BASES = {"minilm": ("sentence-transformers/all-MiniLM-L6-v2", "SEQ_CLS"), "smollm2": (None, "CAUSAL_LM")}


def build_peft_model(
    base: str,
    r: int,
    target_modules: list[str],
    seed: int = 0,
    load_in_4bit: bool = False,
    task_type: str | None = None,
    device: str | torch.device | None = None,
    **config_kwargs,
):
    """A fresh MCDI ``PeftModel`` and its tokenizer. ``base`` is "minilm" (a 2-way sequence classifier on
    all-MiniLM-L6-v2, the WordNet main setting), "smollm2" (SmolLM2-135M-Instruct as a causal LM), or any Hub id or
    local folder (``task_type`` "CAUSAL_LM", the default, or "SEQ_CLS") — the full-scale configurations use the same
    path. ``load_in_4bit`` loads a causal LM's weights in nf4 with bitsandbytes (QLoRA-style; the LoRA stays
    float32). ``device``: where the base runs (default :func:`~peft_mcdi.utils.compute_device`). ``config_kwargs``
    go to ``McDiConfig`` (e.g. the generator)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from peft_mcdi.auto import quiet_get_peft_model, quiet_load_report
    from peft_mcdi.models.offline import SMOLLM2_HUB_ID, from_pretrained
    from peft_mcdi.tuners.mcdi import McDiConfig

    hub_id, default_type = KNOWN_BASES.get(base, (base, "CAUSAL_LM"))
    hub_id = SMOLLM2_HUB_ID if base == "smollm2" else hub_id
    task_type = task_type or default_type
    if task_type not in ("CAUSAL_LM", "SEQ_CLS"):
        raise ValueError(f"task_type must be 'CAUSAL_LM' or 'SEQ_CLS', got {task_type!r}.")
    if load_in_4bit and task_type != "CAUSAL_LM":
        raise ValueError(f"load_in_4bit is supported for causal-LM bases only, got base={base!r} ({task_type}).")
    device = torch.device(device) if device is not None else compute_device()
    torch.manual_seed(seed)
    if task_type == "SEQ_CLS":
        with quiet_load_report():  # the head is missing from the checkpoint by design: tasks train or generate it
            model = from_pretrained(AutoModelForSequenceClassification, hub_id, num_labels=2)
    else:
        quantized = {"quantization_config": quantized_4bit_config(), "device_map": str(device)} if load_in_4bit else {}
        model = from_pretrained(AutoModelForCausalLM, hub_id, dtype=torch.float32, **quantized)
        keep_4bit_layers_trainable_on_cpu(model)
    config = McDiConfig(r=r, target_modules=list(target_modules), task_type=task_type, **config_kwargs)
    peft_model = quiet_get_peft_model(model, config)  # names the base by its Hub id, not the offline copy's folder
    if not load_in_4bit:  # a quantized model is placed by its device_map
        peft_model.to(device)
    return peft_model, from_pretrained(AutoTokenizer, hub_id)


def shared_model(peft_model, tokenizer, init_seed: int = 0, **kwargs) -> SharedLoRAModel:
    """The shared task model of ``peft_model``'s task type: label words for a causal LM, its head otherwise.
    ``kwargs`` (``max_length``, and ``template`` for causal LMs) go to its constructor."""
    task_type = str(peft_model.peft_config["default"].task_type)
    cls = SharedCausalLoRAModel if task_type.endswith("CAUSAL_LM") else SharedLoRAModel
    if cls is SharedLoRAModel:
        kwargs.pop("template", None)
    return cls(peft_model, tokenizer, init_seed=init_seed, **kwargs)


def text_tasksets(
    shared: SharedLoRAModel,
    tasks: dict[str, list],
    batch_size: int,
    name: str,
    task_class: type[ConceptLoRATask] | None = None,
) -> TaskSets:
    """Train/test ``TaskSets`` of one shared model's tasks (``task_class``, by default :class:`ConceptLoRATask`),
    splits other than train and test as ``TaskSets.extra``; conditions are MiniLM sentence embeddings of the
    descriptions."""
    from peft_mcdi.generator.condition import DEFAULT_TEXT_ENCODER, TextEncoder

    task_class = task_class or ConceptLoRATask
    encoder = TextEncoder(DEFAULT_TEXT_ENCODER)
    splits = {}
    for split, items in tasks.items():
        conditions = encoder.encode([t.description for t in items])
        made = [task_class(t, shared, c, batch_size=batch_size) for t, c in zip(items, conditions)]
        splits[split] = TaskSet(made, f"{name}/{split}")
    return TaskSets(splits.pop("train"), splits.pop("test"), extra=splits)


def _wordnet_tasksets(
    base: str,
    num_train_tasks: int,
    num_test_tasks: int,
    r: int,
    target_modules,
    seed: int,
    examples_per_class: int,
    batch_size: int,
    load_in_4bit: bool = False,
) -> TaskSets:
    peft_model, tokenizer = build_peft_model(base, r, target_modules, seed, load_in_4bit=load_in_4bit)
    concepts = build_concept_tasks(
        WordNetTaskConfig(
            num_heldout=num_test_tasks,
            max_train=num_train_tasks,
            num_train=examples_per_class,
            num_val=min(16, examples_per_class),
            seed=seed,
        )
    )
    return text_tasksets(shared_model(peft_model, tokenizer, init_seed=seed), concepts, batch_size, f"wordnet-{base}")


@register_tasksets("wordnet-minilm")
def wordnet_minilm_tasksets(
    num_train_tasks: int = 48,
    num_test_tasks: int = 8,
    r: int = 4,
    target_modules: tuple[str, ...] = ("query", "value"),
    seed: int = 0,
) -> TaskSets:
    """WordNet concept tasks on all-MiniLM-L6-v2 with a generated LoRA (r, query/value) and a 2-way head, 32
    training examples per class; task conditions are MiniLM sentence embeddings of the descriptions. Held-out
    tasks share no ancestor/descendant with training ones."""
    return _wordnet_tasksets("minilm", num_train_tasks, num_test_tasks, r, target_modules, seed, 32, 32)


@register_tasksets("wordnet-smollm2")
def wordnet_smollm2_tasksets(
    num_train_tasks: int = 24,
    num_test_tasks: int = 6,
    r: int = 8,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
    examples_per_class: int = 8,
    load_in_4bit: bool = False,
) -> TaskSets:
    """The same WordNet tasks on SmolLM2-135M-Instruct as a causal LM (LoRA r on q/v of all 30 layers, label words
    " no"/" yes"), with few examples per task (16 by default, one batch per epoch) so collection stays cheap on CPU.
    ``load_in_4bit``: collect on an nf4 base (QLoRA-style)."""
    batch_size = 2 * examples_per_class
    return _wordnet_tasksets(
        "smollm2",
        num_train_tasks,
        num_test_tasks,
        r,
        target_modules,
        seed,
        examples_per_class,
        batch_size,
        load_in_4bit,
    )
