"""The LLM adaptation benchmark harness: WordNet concept tasks on a real base model, one seed, every method on the
same held-out tasks (SPEC §4).

Stages (each cached, so a rerun resumes): the zoo and each generator variant (Mc-Di, Mv-Di, single-level) through
:func:`~peft_mcdi.pipeline.run_pipeline` — which also gives the one-pass hypernetwork, nearest training task, mean
of zoo and the per-task reference at its budget → the base model prompted with the description → a multi-task LoRA
prompted the same way → per-task fine-tuning curves on the held-out tasks (every step up to ``finetune_steps``, with
its optimisation time) → the user's path (``get_peft_model`` + ``adapt()``) for latency and peak memory → new
descriptions of seen categories (an easier split, reported under its own name).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from peft_mcdi.evaluation.baselines.multitask_lora import MultiTaskLoRAConfig, train_multitask_lora
from peft_mcdi.evaluation.harness import first_reaching, refined, run_jobs
from peft_mcdi.evaluation.metrics import measured, nearest_task_indices
from peft_mcdi.evaluation.plots import finetune_curve
from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.model import McDiGenerator
from peft_mcdi.generator.schedulers import SchedulerConfig
from peft_mcdi.meta.trainer import MetaTrainConfig
from peft_mcdi.pipeline import (
    FUNCTIONAL,
    VARIANTS,
    FunctionalRecipe,
    PipelineConfig,
    build_tasksets,
    run_pipeline,
    variant_recipe,
    zoo_folder,
    zoo_tasks,
)
from peft_mcdi.tasks.text_lora import CausalTemplateModel, build_peft_model
from peft_mcdi.utils import (
    DictConfigMixin,
    atomic_write,
    atomic_write_text,
    cache_root,
    compute_device,
    merged,
    stable_hash,
    unstacked,
)
from peft_mcdi.zoo.recorder import RecorderConfig, collect
from peft_mcdi.zoo.store import ZooStore


# Per benchmark base: the model (``build_peft_model``'s short name), its registered task family, adapter layout, and
# the defaults that differ between bases.
BASES = {
    "minilm": {
        "model": "minilm",
        "taskset": "wordnet-minilm",
        "heldout": "held-out categories (no ancestor or descendant of any training category)",
        "metric": "accuracy",
        "r": 4,
        "target_modules": ["query", "value"],
        "defaults": {"num_train_tasks": 300, "num_test_tasks": 40, "recorder": {"lr": 5e-3}},
    },
    "smollm2": {  # issue 21: word forms written by the model, exact match (peft_mcdi.tasks.wordforms)
        "model": "smollm2",
        "taskset": "wordforms-smollm2",
        "heldout": "held-out (transform, format) tasks (no training task has the combination, and none of their words "
        "meets its transform in a training task)",
        "metric": "exact match",
        "r": 8,
        "target_modules": ["q_proj", "v_proj"],
        "defaults": {
            # 48 training and 12 held-out (transform, format) tasks of 128 training words. Per task, 40 Adam steps
            # of 16 at lr 5e-3 on LoRA q/v of all 30 layers (benchmarks/studies/wordforms_recipe.py). With 32 words
            # the LoRA memorises them (33–55 % exact match on glued formats); LoRA on the top 8 layers only, which
            # would let the lower layers' activations be cached, does worse still (40–48 %). No SAM ascent (ρ = 0):
            # it doubles every step's cost, and the budget is the CPU's.
            "num_train_tasks": 48,
            "num_test_tasks": 12,
            "recorder": {"lr": 5e-3, "num_epochs": 5, "rho": 0.0},
            "finetune_tasks": 4,
            "multitask": {"batch_size": 16, "num_epochs": 2, "lr": 5e-3},
        },
    },
    "smollm2_wordnet": {  # the first SmolLM2 benchmark: label words on WordNet categories (no method separates)
        "model": "smollm2",
        "taskset": "wordnet-smollm2",
        "heldout": "held-out categories (no ancestor or descendant of any training category)",
        "metric": "accuracy",
        "r": 8,
        "target_modules": ["q_proj", "v_proj"],
        "defaults": {
            # 48 tasks of 16 training examples (8 per class), 30 single-batch epochs: ~70 s per task on one core,
            # so collection takes under an hour. On 3 held-out tasks the per-task reference reaches 57.3 % (8 per
            # class × 10 epochs: 51.6 %; 16 per class × 30 epochs: 63.8 % at twice the cost per task)
            "num_train_tasks": 40,
            "num_test_tasks": 8,
            "recorder": {"lr": 1e-2, "num_epochs": 30},
            "finetune_tasks": 4,
            # 640 examples make one epoch 40 steps, after which the multi-task loss is still ln 2 (measured): give
            # it the per-task recipe's lr and 8 passes (320 steps) so that the baseline is a trained one
            "multitask": {"batch_size": 16, "num_epochs": 8, "lr": 1e-2},
        },
    },
}
# 'single_level_functional' is not among them: under the default functional recipe (single-level training) it is
# 'mcdi_functional' itself.
GENERATOR_VARIANTS = ("mcdi", "mvdi", "single_level", "mcdi_functional")
ICL_SHOTS = 3  # labelled examples in context for prompted_base_icl (SPEC §4)


@dataclass
class LLMBenchConfig(DictConfigMixin):
    """One benchmark configuration; :meth:`for_base` fills the base model's defaults."""

    base: str = field(default="minilm", metadata={"help": f"Base model: one of {sorted(BASES)}."})
    num_train_tasks: int = field(default=300, metadata={"help": "Training categories (the zoo)."})
    num_test_tasks: int = field(default=40, metadata={"help": "Held-out categories (no relative in training)."})
    examples_per_class: int | None = field(
        default=None, metadata={"help": "Training examples per class and task (None: the task family's default)."}
    )
    recorder: RecorderConfig = field(
        default_factory=lambda: RecorderConfig(num_epochs=10, lr=5e-3, rho=0.05),
        metadata={"help": "Adam+SAM trajectories of the zoo; its budget is the per-task reference's."},
    )
    denoiser: DenoiserConfig = field(
        default_factory=lambda: DenoiserConfig(
            type="tokens", condition_dim=384, hidden_dim=128, num_layers=2, num_heads=4, lora_factor_dim=32
        ),
        metadata={"help": "Denoiser of every generator variant (conditions: 384-d MiniLM description embeddings)."},
    )
    meta: MetaTrainConfig = field(
        # checkpoints every 50 outer steps (minutes on SmolLM2) so that a stopped run resumes instead of restarting
        default_factory=lambda: MetaTrainConfig(
            num_outer_steps=600, samples_per_task=8, outer_lr=1e-3, checkpoint_every=50
        ),
        metadata={"help": "Meta-training of every variant (matched compute); its seed is the benchmark seed."},
    )
    codec_normalization: str = field(default="tensor", metadata={"help": "'tensor' or 'element' statistics."})
    loss_tensor_weights: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "Glob pattern → relative diffusion-loss weight of those tensors.", "omit_default": True},
    )
    min_snr_gamma: float | None = field(
        default=None,
        metadata={"help": "Min-SNR-γ weighting of the diffusion loss (None: unweighted).", "omit_default": True},
    )
    prediction_type: str = field(
        default="epsilon",
        metadata={
            "help": "What the paper variants' denoiser predicts (the functional ones: functional.prediction_type).",
            "omit_default": True,
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Sampling temperature of every generated adapter (evaluation, user's path, seen categories): "
            "1 samples the generator's distribution, 0 the deterministic chain.",
            "omit_default": True,
        },
    )
    variants: list[str] = field(
        default_factory=lambda: list(GENERATOR_VARIANTS),
        metadata={
            "help": f"Generator variants side by side, from {sorted(VARIANTS)}, each optionally '{FUNCTIONAL}'. The "
            "first one's run also scores the rows that need no generator (nearest task, mean of zoo, θ₀, the "
            "per-task reference); 'mcdi' brings the one-pass hypernetwork fitted to the zoo."
        },
    )
    functional: FunctionalRecipe = field(
        # single-level: on MiniLM seed 0 the term inside Reptile's inner loops reached 65.9 % held-out against 68.2 %
        # single-level, at three times the meta-training time (docs/llm.md); 'reptile' stays one override away
        default_factory=lambda: FunctionalRecipe(meta_learning="single_level"),
        metadata={
            "help": "How the '*_functional' variants are trained (SPEC §3.7): task-loss term (single-level or inside "
            "Reptile's inner loops: functional.meta_learning), then the chain. 'mcdi_functional' is the product's "
            "generator: its controls and t2l_sft are rows of the record."
        },
    )
    hypernetwork_steps: int = field(default=600, metadata={"help": "Training steps of the one-pass hypernetwork."})
    fewshot_steps: int = field(
        default=5,
        metadata={
            "help": "Adam steps (the zoo's learning rate) on a held-out task's own training examples for the "
            "few-shot rows: from the functional generator's adapter (mcdi_functional_fewshot) and from θ₀ "
            "(zero_fewshot).",
            "omit_default": True,
        },
    )
    finetune_steps: int = field(
        # twice the zoo's budget (20 steps): steps-to-match needs no more, and each step is a base-model pass per task
        default=40,
        metadata={"help": "Length of the per-task fine-tuning curves."},
    )
    finetune_tasks: int | None = field(
        default=None, metadata={"help": "Held-out tasks given a fine-tuning curve (None: all)."}
    )
    multitask: MultiTaskLoRAConfig = field(
        default_factory=MultiTaskLoRAConfig, metadata={"help": "The multi-task LoRA baseline."}
    )
    seen_tasks: int = field(
        default=40, metadata={"help": "Training categories evaluated with new descriptions (a split of its own)."}
    )
    latency_repeats: int = field(default=20, metadata={"help": "adapt() calls timed for the latency medians."})

    def __post_init__(self) -> None:
        self.nested_from_dicts()
        if self.base not in BASES:
            raise ValueError(f"base must be one of {sorted(BASES)}, got {self.base!r}.")
        unknown = sorted(v for v in self.variants if variant_recipe(v)[0] not in VARIANTS)
        if unknown or not self.variants:
            raise ValueError(
                f"variants must be one or more of {sorted(VARIANTS)}, each optionally with the suffix "
                f"'{FUNCTIONAL}'; got {self.variants}."
            )
        if self.finetune_steps < 1:
            raise ValueError(f"finetune_steps must be >= 1, got {self.finetune_steps}.")

    @classmethod
    def for_base(cls, base: str, overrides: dict | None = None) -> LLMBenchConfig:
        """The defaults of ``base`` (e.g. SmolLM2's smaller zoo), then ``overrides`` (nested dicts merge)."""
        if base not in BASES:
            raise ValueError(f"base must be one of {sorted(BASES)}, got {base!r}.")
        config = merged(merged(cls().to_dict(), BASES[base]["defaults"]), overrides or {})
        return cls(**{**config, "base": base})

    def pipeline(self, seed: int, variant: str) -> PipelineConfig:
        """The pipeline run of one generator variant; every variant shares the zoo (same task family, recorder)."""
        recipe, functional = variant_recipe(variant)
        spec = VARIANTS[recipe]
        config = PipelineConfig(
            taskset=BASES[self.base]["taskset"],
            taskset_kwargs={
                "num_train_tasks": self.num_train_tasks,
                "num_test_tasks": self.num_test_tasks,
                "seed": seed,
                **({"examples_per_class": self.examples_per_class} if self.examples_per_class else {}),
            },
            recorder=self.recorder,
            scheduler=SchedulerConfig(num_segments=spec["num_segments"], prediction_type=self.prediction_type),
            denoiser=self.denoiser,
            loss_variant=spec["loss_variant"],
            meta=replace(self.meta, algorithm=spec["algorithm"], seed=seed),
            hypernetwork_steps=self.hypernetwork_steps if variant == "mcdi" else 0,
            codec_normalization=self.codec_normalization,
            loss_tensor_weights=self.loss_tensor_weights,
            min_snr_gamma=self.min_snr_gamma,
            temperature=self.temperature,
        )
        if functional:
            config = self.functional.apply(config, self.temperature, seed)
        if variant == "mcdi" + FUNCTIONAL:  # t2l_sft beside it, with its budget of base-model passes
            config.hypernetwork_sft_steps = self.functional.passes(config.meta, config.chain)
        # the temperature only changes the evaluation: another one re-evaluates the same trained generator
        trained = {k: v for k, v in config.to_dict().items() if k != "temperature"}
        config.output_dir = str(cache_root() / "runs" / f"{config.taskset}-{results_key(trained)}")
        return config


def results_key(value) -> str:
    """Cache key of a configuration (a dict, or a list holding one): every setting that can change a result, which
    ``meta.checkpoint_every`` cannot. Leaving it out lets a stopped run resume under another checkpoint interval."""

    def strip(item):
        if isinstance(item, dict) and isinstance(item.get("meta"), dict):
            return {**item, "meta": {k: v for k, v in item["meta"].items() if k != "checkpoint_every"}}
        return item

    return stable_hash([strip(v) for v in value] if isinstance(value, list) else strip(value))


def run_variant(config: PipelineConfig, tasksets, progress: bool, log=print) -> dict:
    """A generator variant's pipeline results (read back when that exact configuration already finished; under
    another temperature the finished generator is evaluated again, without training)."""
    path = Path(config.output_dir) / "results.json"
    if path.is_file():
        results = _read_json(path)
        if results["config"].get("temperature", 1.0) == config.temperature:
            return results
    return run_pipeline(config, progress=progress, log=log, tasksets=tasksets, device=compute_device())


def _read_json(path: Path) -> dict:
    """A cached JSON file; a truncated or corrupt one is an error naming it (delete it to recompute that stage)."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupt ({err}); delete it to recompute that stage.") from err


def _cached_json(path: Path, compute) -> dict:
    if path.is_file():
        return _read_json(path)
    value = compute()
    atomic_write_text(path, json.dumps(value))
    return value


def multitask_lora(tasksets, config: MultiTaskLoRAConfig, folder: Path, log=print) -> dict:
    """Train (or load) the multi-task LoRA on the training tasks; its accuracy on each held-out task, prompted with
    that task's description."""
    key = stable_hash({"multitask": config.to_dict(), "train": [t.task_id for t in tasksets.train]})
    weights, info_path = folder / f"multitask-{key}.safetensors", folder / f"multitask-{key}.json"
    if weights.is_file() and info_path.is_file():
        try:
            params = load_file(str(weights))
        except Exception as err:
            raise ValueError(f"{weights} is corrupt ({err}); delete it to retrain the multi-task LoRA.") from err
        info = _read_json(info_path)
    else:
        params, info = train_multitask_lora(list(tasksets.train), config)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(weights, lambda tmp: save_file({k: v.contiguous() for k, v in params.items()}, tmp))
        atomic_write_text(info_path, json.dumps(info))
        log(f"multi-task LoRA: {info['steps']} steps in {info['seconds']:.0f} s, final loss {info['final_loss']:.3f}")
    return {"per_task": [t.prompted_accuracy(params) for t in tasksets.test], "train": info, "params": params}


def finetune_curves(tasks, recorder: RecorderConfig, num_steps: int, folder: Path) -> list[dict]:
    """Per task, accuracy and optimisation time after every fine-tuning step from θ₀ (the zoo's recipe: same
    optimiser, learning rate and batch order, extended to ``num_steps``), cached per task."""
    curves = []
    for task in tasks:
        per_epoch = math.ceil(len(task.concept.train) / task.batch_size)
        extended = replace(recorder, num_epochs=math.ceil(num_steps / per_epoch))
        key = stable_hash({"recorder": extended.to_dict(), "task": task.task_id})
        path = folder / "finetune" / f"{task.task_id}-{key}.json"
        curves.append(_cached_json(path, lambda t=task, r=extended: finetune_curve(t, t.init_params(), r, 10**9)))
    return curves


def steps_to_match(steps: list[int], curve: list[float], seconds: list[float], target: float) -> dict:
    """First fine-tuning step whose accuracy reaches ``target`` and the optimisation time to it (SPEC §4); steps
    "> budget" when it never does."""
    index = first_reaching(curve, target)
    if index is None:
        return {"steps": f"> {steps[-1]}", "seconds": None}
    return {"steps": steps[index], "seconds": seconds[index]}


@torch.no_grad()
def users_path(config: LLMBenchConfig, generator_dir: Path, tasksets, seed: int) -> dict:
    """The README path on the held-out tasks: a fresh base model, ``get_peft_model(base, McDiConfig(...,
    generator_name_or_path=...))``, one ``adapt()`` for every task (time and peak memory), the written adapters'
    accuracy, the best of 8 samples selected on validation examples, and the single-task latency of the encoder and
    the generator (medians; the first call, which loads the encoder, excluded)."""
    spec = BASES[config.base]
    model, _ = build_peft_model(
        spec["model"],
        spec["r"],
        spec["target_modules"],
        seed,
        generator_name_or_path=str(generator_dir),
        temperature=config.temperature,
    )
    tasks = list(tasksets.test)
    names, descriptions = [t.task_id for t in tasks], [t.concept.description for t in tasks]
    model.adapt(descriptions[0], adapter_names=names[0], seed=0)  # loads the encoder

    def written(name: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.base_model.lora_parameters(name).items()}

    info, batched_seconds, peak_mb = measured(lambda: model.adapt(descriptions, adapter_names=names, seed=0))
    with_adapter = scores(tasks, [written(n) for n in names])
    examples = [t.shared.selection_examples(t.concept.val) for t in tasks]
    model.adapt(descriptions, adapter_names=names, seed=0, num_samples=8, examples=examples)
    best_of_8 = scores(tasks, [written(n) for n in names])
    ranked = {"with_adapter_auc": [t.roc_auc(written(n)) for n, t in zip(names, tasks)]} if _choices(tasks) else {}
    return {
        "with_adapter": with_adapter,
        **ranked,
        "best_of_8": best_of_8,
        "adapt_ms_median": adapt_latency(model, descriptions[0], names[0], config.latency_repeats),
        "batched": {
            "tasks": len(tasks),
            "seconds": batched_seconds,
            "tasks_per_s": len(tasks) / batched_seconds,
            "encoder_ms": info.encoder_ms,
            "generator_ms": info.generator_ms,
            "peak_memory_mb": peak_mb,
        },
        "nearest_training_distance": info.nearest_training_distance,
    }


@torch.no_grad()
def adapt_latency(model, description: str, adapter_name: str, repeats: int) -> dict[str, float]:
    """Median ms of the encoder and of the generator over ``repeats`` single-task ``adapt()`` calls (call the model
    once before, so that loading the encoder is not timed)."""
    single = [model.adapt(description, adapter_names=adapter_name, seed=0) for _ in range(repeats)]
    return {
        "encoder": statistics.median(i.encoder_ms for i in single),
        "generator": statistics.median(i.generator_ms for i in single),
    }


@torch.no_grad()
def seen_categories(generator_dir: Path, store: ZooStore, tasks, temperature: float = 1.0) -> dict:
    """Training categories with their training descriptions and with new ones (``ConceptTask.paraphrase``), on their
    test words: an easier split than held-out categories, never reported as held-out; their own trained adapters
    beside them for scale."""
    from peft_mcdi.generator.condition import DEFAULT_TEXT_ENCODER, TextEncoder

    generator = McDiGenerator.from_pretrained(generator_dir)
    paraphrases = TextEncoder(DEFAULT_TEXT_ENCODER).encode([t.concept.paraphrase for t in tasks])

    def accuracy(conditions: torch.Tensor) -> list[float]:
        weights = generator.generate(conditions, seed=0, temperature=temperature)
        return scores(tasks, unstacked(weights))

    return {
        "training_descriptions": accuracy(torch.stack([t.condition for t in tasks])),
        "new_descriptions": accuracy(paraphrases),
        "own_adapter": scores(tasks, [final(store, t) for t in tasks]),
    }


def sibling_indices(conditions: torch.Tensor) -> torch.Tensor:
    """For each task, the most similar *other* task by condition (cosine): the specificity control's description.
    A random other description would score near chance on disjoint binary tasks and prove nothing (SPEC §3.7)."""
    unit = torch.nn.functional.normalize(conditions, dim=-1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity.argmax(1)


def functional_controls(
    generator_dir: Path, tasks, temperature: float, fewshot_steps: int, lr: float
) -> dict[str, list[float]]:
    """The functional generator's controls on the held-out tasks, drawn as the pipeline's evaluation draws them
    (seed 0): generated from the most similar other held-out task's description (``mcdi_functional_sibling``:
    does the description, not a generic adapter, do the work?), its own adapter with the description in the
    input too (``mcdi_functional_prompted``, Text-to-LoRA's protocol), and the generated adapter as a few-shot
    initialisation: ``fewshot_steps`` Adam steps on the task's own training examples from it
    (``mcdi_functional_fewshot``) and the same steps from θ₀ (``zero_fewshot``)."""
    generator = McDiGenerator.from_pretrained(generator_dir)
    conditions = torch.stack([t.condition for t in tasks])
    with torch.no_grad():
        own = generator.generate(conditions, seed=0, temperature=temperature)
        other = generator.generate(conditions[sibling_indices(conditions)], seed=0, temperature=temperature)
    mine = unstacked(own)
    return {
        "mcdi_functional_sibling": scores(tasks, unstacked(other)),
        "mcdi_functional_prompted": [t.prompted_accuracy(p) for t, p in zip(tasks, mine)],
        "mcdi_functional_fewshot": scores(tasks, [refined(t, p, fewshot_steps, lr) for t, p in zip(tasks, mine)]),
        "zero_fewshot": scores(tasks, [refined(t, t.init_params(), fewshot_steps, lr) for t in tasks]),
    }


@torch.no_grad()
def other_split(config: LLMBenchConfig, seed: int, tasks, train_tasks, store: ZooStore, multitask: dict) -> dict:
    """Every method that needs no training of its own on a further held-out split (``TaskSets.extra``, e.g. tasks of
    a type no training task has), reported under that split's name: each generator variant (drawn as the pipeline's
    evaluation draws, seed 0), the prompted base with and without examples, the multi-task LoRA, the nearest training
    task's adapter, θ₀ and the per-task reference (these tasks are in the zoo as references only)."""
    conditions = torch.stack([t.condition for t in tasks])
    rows = {}
    for variant in config.variants:
        generator = McDiGenerator.from_pretrained(Path(config.pipeline(seed, variant).output_dir) / "generator")
        weights = generator.generate(conditions, seed=0, temperature=config.temperature)
        rows[variant] = scores(tasks, unstacked(weights))
    nearest = nearest_task_indices(torch.stack([t.condition for t in train_tasks]), conditions)
    rows["nearest_task"] = scores(tasks, [final(store, train_tasks[i]) for i in nearest.tolist()])
    rows["init"] = scores(tasks, [t.init_params() for t in tasks])
    rows["per_task_reference"] = scores(tasks, [final(store, t) for t in tasks])
    rows["prompted_base"] = [t.zero_shot_accuracy() for t in tasks]
    rows["prompted_base_icl"] = [t.zero_shot_accuracy(shots=ICL_SHOTS) for t in tasks]
    rows["multitask_lora"] = [t.prompted_accuracy(multitask["params"]) for t in tasks]
    return {"task_ids": [t.task_id for t in tasks], "per_task": rows,
            "accuracy": {m: statistics.fmean(v) for m, v in rows.items()}}  # fmt: skip


def scores(tasks, params: list[dict[str, torch.Tensor]]) -> list[float]:
    """``tasks[j]``'s held-out metric with ``params[j]``, in one batched evaluation where the family has one."""
    return type(tasks[0]).evaluate_group(tasks, params)


def _choices(tasks) -> bool:
    """Whether the tasks choose between labels (a score margin to rank by: ROC AUC) rather than write answers."""
    return tasks[0].metric == "accuracy"


def final(store: ZooStore, task) -> dict[str, torch.Tensor]:
    """A task's adapter at the end of its zoo trajectory (the per-task reference at its budget)."""
    return {n: v[-1] for n, v in store.read(task.task_id).params.items()}


def task_split_baselines(config: LLMBenchConfig, seed: int, tasksets, log=print) -> tuple[dict, list[dict]]:
    """The stages that depend on the task split only, cached beside the zoo: the multi-task LoRA and the per-task
    fine-tuning curves of the held-out tasks (the first ``finetune_tasks``)."""
    zoo, _ = zoo_folder(config.pipeline(seed, config.variants[0]))
    folder = cache_root() / "runs" / f"baselines-{zoo.name}"
    multitask = multitask_lora(tasksets, config.multitask, folder, log)
    tasks = list(tasksets.test)
    tasks = tasks[: config.finetune_tasks] if config.finetune_tasks else tasks
    return multitask, finetune_curves(tasks, config.recorder, config.finetune_steps, folder)


def prefill_stages(config: LLMBenchConfig, seed: int, workers: int) -> None:
    """Fill the stage caches of one seed from ``workers`` one-thread processes (:func:`run_jobs`), so that
    :func:`run_llm_benchmark` then reads every stage back: first the zoo, one shard per process, then the generator
    variants and the baselines, longest first (the functional variants, the baselines, the paper's variants). On an
    accelerator (:func:`~peft_mcdi.utils.compute_device`) the processes are spawned, each with its own context: one
    process's small passes leave the device idle most of the time."""
    on_cpu = compute_device().type == "cpu"
    if on_cpu:
        _seed_tasksets(config, seed)  # built once here: the forked jobs inherit it
    start = "fork" if on_cpu else "spawn"
    run_jobs([partial(_zoo_shard, config, seed, rank, workers) for rank in range(workers)], workers, start)
    functional = [partial(_variant_stage, config, seed, v) for v in config.variants if variant_recipe(v)[1]]
    paper = [partial(_variant_stage, config, seed, v) for v in config.variants if not variant_recipe(v)[1]]
    run_jobs([*functional, partial(_baseline_stage, config, seed), *paper], workers, start)


_TASKSETS: dict[str, object] = {}  # the task splits prefill_stages built, by family and arguments


def _seed_tasksets(config: LLMBenchConfig, seed: int):
    """The seed's task split (every variant shares it), built once per process — and once for all the jobs that
    :func:`prefill_stages` forks after building it."""
    pipeline = config.pipeline(seed, config.variants[0])
    key = stable_hash([pipeline.taskset, pipeline.taskset_kwargs])
    if key not in _TASKSETS:
        _TASKSETS[key] = build_tasksets(pipeline)
    return _TASKSETS[key]


def _zoo_shard(config: LLMBenchConfig, seed: int, rank: int, world_size: int) -> None:
    pipeline = config.pipeline(seed, config.variants[0])
    root, key = zoo_folder(pipeline)
    tasks = zoo_tasks(_seed_tasksets(config, seed))
    store = ZooStore.open(root, key)
    done = collect(tasks, store, pipeline.recorder, rank=rank, world_size=world_size, progress=False)
    print(f"[zoo {rank + 1}/{world_size}] collected {len(done)} tasks", flush=True)


def _variant_stage(config: LLMBenchConfig, seed: int, variant: str) -> None:
    pipeline = config.pipeline(seed, variant)
    run_variant(pipeline, _seed_tasksets(config, seed), False, lambda *a: print(f"[{variant}]", *a, flush=True))


def _baseline_stage(config: LLMBenchConfig, seed: int) -> None:
    task_split_baselines(config, seed, _seed_tasksets(config, seed), lambda *a: print("[baselines]", *a, flush=True))
    print("[baselines] multi-task LoRA and fine-tuning curves cached", flush=True)


def device_name(device: torch.device) -> str:
    """The record's note of where the base model's passes ran (stages read back from caches may have run elsewhere)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def product_variant(variants: list[str]) -> str:
    """The generator a user meets, whose user's path, seen categories, ROC AUC and controls the record reports: the
    functional Mc-Di where the run trains it, else the paper's, else the first variant."""
    return next((v for v in ("mcdi" + FUNCTIONAL, "mcdi") if v in variants), variants[0])


def run_llm_benchmark(config: LLMBenchConfig, seed: int, progress: bool = False, log=print) -> dict:
    """Every method on the held-out tasks of one seed (a seed reruns the task split, zoo and meta-training). The
    record is cached by configuration and seed; each stage inside resumes from its own cache."""
    record_path = cache_root() / "runs" / f"llm-{config.base}-{results_key([config.to_dict(), seed])}.json"
    if record_path.is_file():
        return _read_json(record_path)
    start = time.perf_counter()
    first = config.variants[0]  # its run also scores the rows that need no generator
    tasksets = build_tasksets(config.pipeline(seed, first))  # every variant's split (same family and keywords)
    results = {v: run_variant(config.pipeline(seed, v), tasksets, progress, log) for v in config.variants}
    product = product_variant(config.variants)
    product_dir = Path(config.pipeline(seed, product).output_dir) / "generator"
    tasks = list(tasksets.test)
    main = results[first]["per_task"]
    per_task = {v: results[v]["per_task"]["generated"] for v in config.variants}
    per_task.update({k: main[k] for k in ("hypernetwork", "nearest_task", "mean_of_zoo", "init", "per_task_reference")
                     if k in main})  # fmt: skip
    if "hypernetwork_sft" in results.get("mcdi" + FUNCTIONAL, {}).get("per_task", {}):
        per_task["t2l_sft"] = results["mcdi" + FUNCTIONAL]["per_task"]["hypernetwork_sft"]
    if variant_recipe(product)[1]:
        per_task.update(
            functional_controls(product_dir, tasks, config.temperature, config.fewshot_steps, config.recorder.lr)
        )
    per_task["prompted_base"] = [t.zero_shot_accuracy() for t in tasks]
    per_task["prompted_base_icl"] = [t.zero_shot_accuracy(shots=ICL_SHOTS) for t in tasks]
    if not isinstance(tasks[0].shared, CausalTemplateModel):
        # SPEC §4 `anchor` for a head in the encoder's space: the cosine rule, which for an encoder is the prompted
        # base's own rule (a LoRA delta on a causal LM has no anchor: its zero is θ₀, the `init` row)
        per_task["anchor"] = per_task["prompted_base"]
    zoo = Path(results[first]["zoo"])
    multitask, curves = task_split_baselines(config, seed, tasksets, log)
    per_task["multitask_lora"] = multitask["per_task"]
    ft_tasks = tasks[: len(curves)]
    steps = curves[0]["steps"]
    mean_curve = [statistics.fmean(c["metric"][i] for c in curves) for i in range(len(steps))]
    mean_seconds = [statistics.fmean(c["seconds"][i] for c in curves) for i in range(len(steps))]
    budget = config.recorder.num_epochs * math.ceil(len(tasks[0].concept.train) / tasks[0].batch_size)
    finetune = {
        "steps": steps,
        "mean_accuracy": mean_curve,
        "mean_seconds": mean_seconds,
        "tasks": len(ft_tasks),
        "optimizer": config.recorder.optimizer,
        "sam": config.recorder.rho > 0,
        "budget_steps": budget,
        "at": {
            str(s): {"accuracy": mean_curve[steps.index(s)], "seconds": mean_seconds[steps.index(s)]}
            for s in sorted({1, 10, budget, config.finetune_steps})
            if s in steps
        },  # fmt: skip
    }
    n_ft = len(ft_tasks)
    match = {
        method: steps_to_match(steps, mean_curve, mean_seconds, statistics.fmean(values[:n_ft]))
        for method, values in per_task.items()
    }
    user = users_path(config, product_dir, tasksets, seed)
    store = ZooStore(zoo)
    seen_tasks = list(tasksets.train)[: config.seen_tasks]
    seen = seen_categories(product_dir, store, seen_tasks, config.temperature)
    record = {
        "seed": seed,
        "product": product,
        "heldout": BASES[config.base]["heldout"],
        "metric": BASES[config.base]["metric"],
        "task_ids": [t.task_id for t in tasks],
        "per_task": per_task,
        "accuracy": {m: statistics.fmean(v) for m, v in per_task.items()},
        **(
            {
                "roc_auc": {
                    product: user["with_adapter_auc"],
                    "per_task_reference": [t.roc_auc(final(store, t)) for t in tasks],
                }
            }
            if _choices(tasks)
            else {}
        ),
        "finetune": finetune,
        "steps_to_match": match,
        "users_path": user,
        "seen_categories": {k: statistics.fmean(v) for k, v in seen.items()},
        "seen_categories_per_task": seen,
        "multitask_training": multitask["train"],
        "generation_ms_median": {v: results[v]["generation_ms_median"] for v in config.variants},
        "hypernetwork_ms_median": results.get("mcdi", {}).get("hypernetwork_ms_median"),
        "nearest_checkpoint_distance": {v: results[v]["nearest_checkpoint_distance"] for v in config.variants},
        "reference_nearest_checkpoint_distance": results[first].get("reference_nearest_checkpoint_distance"),
        "meta_train_seconds": {v: results[v]["meta_train_seconds"] for v in config.variants},
        "final_loss": {v: results[v]["history"][-1]["loss"] for v in config.variants},
        "zoo": str(zoo),
        **(
            {
                "other_splits": {
                    name: other_split(config, seed, list(split), list(tasksets.train), store, multitask)
                    for name, split in tasksets.extra.items()
                }
            }  # fmt: skip
            if tasksets.extra
            else {}
        ),
        "seconds": time.perf_counter() - start,
        "device": device_name(tasks[0].shared.device),
    }
    atomic_write_text(record_path, json.dumps(record, default=str))
    return record
