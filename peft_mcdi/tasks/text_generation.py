"""Generative text tasks on a causal LM: the adapter writes its answer, which is scored by exact match.

Training and the functional term use the teacher-forced loss of the answer's tokens (one forward pass, any number of
adapters at once through the per-row hooks of :class:`~peft_mcdi.tasks.text_lora.SharedLoRAModel`); evaluation
decodes greedily to the end of the line and compares strings through ``evaluate`` (the metric script kept in the
package). The family registered here is :mod:`~peft_mcdi.tasks.wordforms` on SmolLM2-135M-Instruct (issue 21).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from peft_mcdi.evaluation.metrics import exact_match
from peft_mcdi.tasks.base import register_tasksets
from peft_mcdi.tasks.text_lora import CausalTemplateModel, ConceptLoRATask, build_peft_model, text_tasksets
from peft_mcdi.tasks.wordforms import WordFormTask, WordFormTaskConfig, build_wordform_tasks


class SharedGenerativeLoRAModel(CausalTemplateModel):
    """A causal LM that writes its answer after the template, ended by a newline: the loss is the mean −log p of
    the answer's tokens (teacher forcing), the prediction the greedy continuation up to the newline."""

    END = "\n"

    def answer_ids(self, answers: list[str]) -> list[list[int]]:
        """Token ids of each answer as the model writes it: after a space, then the end of the line."""
        return self.tokenizer([f" {a}{self.END}" for a in answers], add_special_tokens=False)["input_ids"]

    def prompt_texts(self, words: list[str], descriptions: list[str] | None = None) -> list[str]:
        """The template of each word, after its description (and any examples) on the lines before it."""
        texts = self.texts(words)
        return texts if descriptions is None else [f"{d}{self.END}{t}" for d, t in zip(descriptions, texts)]

    def batch(self, pairs: list[tuple[str, str]], descriptions: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Prompt + answer tokens, left-padded, with ``labels`` the answer's tokens (−100 on the prompt and padding).
        Without descriptions the prompt is truncated from the left to ``max_length`` tokens."""
        prompts = self.tokenizer(self.prompt_texts([w for w, _ in pairs], descriptions))["input_ids"]
        if descriptions is None:
            prompts = [p[-self.max_length :] for p in prompts]
        answers = self.answer_ids([a for _, a in pairs])
        rows = [p + a for p, a in zip(prompts, answers)]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.tokenizer.pad_token_id)
        labels = torch.full((len(rows), length), -100)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (row, answer) in enumerate(zip(rows, answers)):
            ids[i, length - len(row) :] = torch.tensor(row)
            labels[i, length - len(answer) :] = torch.tensor(answer)
            mask[i, length - len(row) :] = 1
        return {**self._with_positions({"input_ids": ids, "attention_mask": mask}), "labels": labels}

    selection_examples = batch  # model(**batch).loss is already the answer's loss: what adapt(examples=) ranks by

    def row_losses(self, params, batch, groups: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) mean −log p of each row's answer tokens; only the answer's positions are projected to the
        vocabulary (``logits_to_keep``), the expensive part of a small LM's pass."""
        labels = batch["labels"]
        span = int((labels != -100).sum(1).max())
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.forward(params, {**inputs, "logits_to_keep": span + 1}, groups).logits[:, :-1]
        targets = labels[:, -span:].to(logits.device)
        tokens = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=-100)
        answer = targets != -100
        return ((tokens * answer).sum(1) / answer.sum(1)).cpu()

    def _run(self, params, inputs: dict, groups: torch.Tensor | None):
        if params is None:  # the base model alone
            with self.model.disable_adapter():
                return self.model(**self.on_device(inputs))
        return self.forward(params, inputs, groups)

    def _cache_name(self) -> str:
        """The key/value cache's name in the model's inputs and outputs: ``cache`` from transformers 5.2x,
        ``past_key_values`` before (GPU images lag the CPU environment's version)."""
        forward = inspect.signature(self.model.get_base_model().forward).parameters
        return "cache" if "cache" in forward else "past_key_values"

    @torch.no_grad()
    def generate(
        self,
        params: dict[str, torch.Tensor] | None,
        prompts: list[str],
        max_new_tokens: int,
        groups: torch.Tensor | None = None,
    ) -> list[str]:
        """Greedy answers to ``prompts`` up to the end of the line (at most ``max_new_tokens`` tokens), with the
        adapter ``params`` (None: the base model; with ``groups``, row i uses adapter ``groups[i]``), decoded with
        the key/value cache."""
        enc = self.on_device(self._with_positions(self.tokenizer(prompts, padding=True, return_tensors="pt")))
        mask, positions, cache, cache_name = enc["attention_mask"], enc["position_ids"], None, self._cache_name()
        step = enc["input_ids"]
        written = []
        for _ in range(max_new_tokens):
            inputs = {"input_ids": step, "attention_mask": mask, "position_ids": positions, "use_cache": True}
            out = self._run(params, {**inputs, cache_name: cache, "logits_to_keep": 1}, groups)
            step, cache = out.logits[:, -1].argmax(-1, keepdim=True), out[cache_name]
            written.append(step)
            texts = self.tokenizer.batch_decode(torch.cat(written, 1).cpu())
            if all(self.END in t for t in texts):
                break
            mask = torch.cat([mask, torch.ones_like(step)], 1)
            positions = positions[:, -1:] + 1
        return [t.split(self.END)[0].strip() for t in texts]

    def answer_budget(self, answers: list[str]) -> int:
        """Tokens to generate: the longest reference's, its newline and two to spare (a longer answer is wrong
        whatever follows)."""
        return max(len(ids) for ids in self.answer_ids(answers)) + 2

    def exact_match(
        self, params, pairs: list[tuple[str, str]], context: str | None = None, groups: torch.Tensor | None = None
    ) -> float:
        """Exact match of the greedy answers to ``pairs`` (prompts after ``context`` when given)."""
        answers = [a for _, a in pairs]
        contexts = None if context is None else [context] * len(pairs)
        prompts = self.prompt_texts([w for w, _ in pairs], contexts)
        return exact_match(self.generate(params, prompts, self.answer_budget(answers), groups), answers)

    def zero_shot_accuracy(
        self, description: str, pairs: list[tuple[str, str]], examples: list[tuple[str, str]] = ()
    ) -> float:
        """The base LM told the task (no adapter): the description, then the ``examples`` in context as template +
        answer lines, then the word's template."""
        shots = [f"{t} {a}" for t, (_, a) in zip(self.texts([w for w, _ in examples]), examples)]
        return self.exact_match(None, pairs, self.END.join([description, *shots]))


class WordFormLoRATask(ConceptLoRATask):
    """A word-form task (:mod:`peft_mcdi.tasks.wordforms`) trained as LoRA on a shared causal LM; its metric is the
    exact match of the generated answers."""

    metric = "exact_match"
    concept: WordFormTask

    @torch.no_grad()
    def evaluate(self, params) -> torch.Tensor:
        """Exact match on the test words; params may carry one leading batch dim (several candidate adapters)."""
        first = next(iter(params.values()))
        if first.dim() == self.shared.theta0[next(iter(params))].dim():
            return torch.tensor(self.shared.exact_match(params, self.concept.test))
        return torch.stack([self.evaluate({k: v[j] for k, v in params.items()}) for j in range(first.shape[0])])

    @classmethod
    @torch.no_grad()
    def evaluate_group(cls, tasks, params) -> list[float]:
        """Every task's exact match with its adapter, all test answers decoded in one batch (row i with its task's
        adapter): on a GPU one decode of a few hundred rows costs what one task's 40 rows cost."""
        shared = {id(t.shared): t.shared for t in tasks}
        if len(shared) > 1:
            return super().evaluate_group(tasks, params)
        model = tasks[0].shared
        stacked = {k: torch.stack([p[k] for p in params]) for k in params[0]}
        words = [w for t in tasks for w, _ in t.concept.test]
        references = [a for t in tasks for _, a in t.concept.test]
        groups = torch.cat([torch.full((len(t.concept.test),), g) for g, t in enumerate(tasks)])
        answers = model.generate(stacked, model.prompt_texts(words), model.answer_budget(references), groups)
        scores, start = [], 0
        for task in tasks:
            end = start + len(task.concept.test)
            scores.append(exact_match(answers[start:end], references[start:end]))
            start = end
        return scores

    def roc_auc(self, params: dict[str, torch.Tensor]) -> float:
        raise NotImplementedError("a generated answer has no score margin to rank by: ROC AUC is for choice tasks.")

    @torch.no_grad()
    def prompted_accuracy(self, params: dict[str, torch.Tensor], description: str | None = None) -> float:
        """Exact match of ``params`` when each test input is preceded by the task description (the multi-task
        LoRA's input format); ``description`` defaults to the task's own."""
        return self.shared.exact_match(params, self.concept.test, description or self.concept.description)


def wordform_tasksets(
    base: str,
    num_train_tasks: int,
    num_test_tasks: int,
    r: int,
    target_modules,
    seed: int,
    examples_per_task: int,
    batch_size: int = 16,
    load_in_4bit: bool = False,
    **family,
):
    """Word-form tasks (:func:`~peft_mcdi.tasks.wordforms.build_wordform_tasks`) on the causal LM ``base``
    (``build_peft_model``'s name) with a generated LoRA; ``family`` holds further :class:`WordFormTaskConfig`
    fields. The unseen-type tasks are ``TaskSets.extra["test_unseen_type"]``."""
    peft_model, tokenizer = build_peft_model(base, r, target_modules, seed, load_in_4bit=load_in_4bit)
    config = WordFormTaskConfig(
        num_heldout=num_test_tasks, max_train=num_train_tasks, num_train=examples_per_task, seed=seed, **family
    )
    shared = SharedGenerativeLoRAModel(peft_model, tokenizer, init_seed=seed)
    tasks = build_wordform_tasks(config)
    return text_tasksets(shared, tasks, batch_size, f"wordforms-{base}", WordFormLoRATask)


@register_tasksets("wordforms-smollm2")
def wordforms_smollm2_tasksets(
    num_train_tasks: int = 48,
    num_test_tasks: int = 12,
    r: int = 8,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
    examples_per_task: int = 128,
    load_in_4bit: bool = False,
    **family,
):
    """Word-form tasks on SmolLM2-135M-Instruct with a generated LoRA (r, q/v of all 30 layers), 128 training
    words per task in batches of 16 (``benchmarks/studies/wordforms_recipe.py``: with 32, the LoRA memorises them
    and writes 33–55 % of held-out words right); ``load_in_4bit`` puts the base in nf4 (QLoRA-style)."""
    return wordform_tasksets(
        "smollm2",
        num_train_tasks,
        num_test_tasks,
        r,
        target_modules,
        seed,
        examples_per_task,
        16,
        load_in_4bit,
        **family,
    )
