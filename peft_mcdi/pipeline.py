"""The smallest end-to-end Mc-Di pipeline: collect a zoo → fit the codec → meta-train → generate for held-out tasks
→ compare with the memorisation baselines. Works for any registered task family whose tasks share one parameter
layout; the README's first command runs it on the logistic family."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from peft_mcdi.evaluation.baselines.hypernetwork import OnePassHypernetwork
from peft_mcdi.evaluation.metrics import mean_of_zoo, median_ms, nearest_checkpoint_distance, nearest_task_indices
from peft_mcdi.generator.anchor import ANCHORS
from peft_mcdi.generator.card import generator_card
from peft_mcdi.generator.codec import WeightCodec
from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.model import CARD_NAME, GeneratorConfig, McDiGenerator
from peft_mcdi.generator.schedulers import SchedulerConfig
from peft_mcdi.meta.chain import ChainFinetuneConfig, finetune_through_chain
from peft_mcdi.meta.data import ZooTensors, fit_codec, load_raw_targets, load_zoo_tensors
from peft_mcdi.meta.trainer import ALGORITHMS, MetaTrainConfig, MetaTrainer
from peft_mcdi.tasks.base import get_tasksets
from peft_mcdi.utils import DictConfigMixin, atomic_write_text, cache_root, stable_hash, unstacked
from peft_mcdi.zoo.recorder import RecorderConfig, collect
from peft_mcdi.zoo.store import ZooStore


# The paper's ablation (SPEC §3.3): the same denoiser and budget, different loss / k / meta-learning.
VARIANTS = {
    "mcdi": {"num_segments": 3, "loss_variant": "mcdi", "algorithm": "reptile"},
    "mvdi": {"num_segments": 1, "loss_variant": "mcdi", "algorithm": "reptile"},
    "twdi": {"num_segments": 3, "loss_variant": "twdi", "algorithm": "reptile"},
    "single_level": {"num_segments": 3, "loss_variant": "mcdi", "algorithm": "single_level"},
}
FUNCTIONAL = "_functional"  # a benchmark variant's suffix: that recipe trained with the functional recipe below


def variant_recipe(name: str) -> tuple[str, bool]:
    """The pipeline variant (:data:`VARIANTS`) behind a benchmark variant name, and whether it is trained with the
    functional recipe ('mcdi_functional' → ('mcdi', True))."""
    functional = name.endswith(FUNCTIONAL)
    return (name[: -len(FUNCTIONAL)] if functional else name), functional


@dataclass
class PipelineConfig(DictConfigMixin):
    """Defaults: the logistic family of SPEC §3.3 at a size that runs in a few minutes on 2 CPU cores."""

    taskset: str = field(default="logistic", metadata={"help": "Registered task family (get_tasksets name)."})
    taskset_kwargs: dict = field(default_factory=dict, metadata={"help": "Arguments of the task family."})
    recorder: RecorderConfig = field(
        default_factory=lambda: RecorderConfig(num_epochs=10, lr=0.1), metadata={"help": "Trajectory collection."}
    )
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig, metadata={"help": "Noise schedule, k."})
    denoiser: DenoiserConfig = field(
        default_factory=lambda: DenoiserConfig(type="mlp", condition_dim=4, hidden_dim=128, num_layers=3),
        metadata={"help": "Denoiser architecture (condition_dim must match the family's conditions)."},
    )
    codec_normalization: str = field(
        default="tensor", metadata={"help": "Weight codec statistics: 'tensor' (per tensor) or 'element'."}
    )
    loss_variant: str = field(default="mcdi", metadata={"help": "'mcdi' or 'twdi'."})
    anchor: str | None = field(
        default=None,
        metadata={
            "help": "Rule the generated weights are a residual on (GeneratorConfig.anchor, e.g. 'prototype' for "
            "heads; its scale fitted to the training tasks' final weights); None: the paper's generator.",
            "omit_default": True,
        },
    )
    condition_dropout: float = field(default=0.1, metadata={"help": "Condition dropout for guidance."})
    loss_tensor_weights: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": "Glob pattern → relative loss weight of those tensors (GeneratorConfig).",
            "omit_default": True,
        },
    )
    min_snr_gamma: float | None = field(
        default=None,
        metadata={"help": "Min-SNR-γ weighting of the diffusion loss (GeneratorConfig).", "omit_default": True},
    )
    meta: MetaTrainConfig = field(
        default_factory=lambda: MetaTrainConfig(num_outer_steps=2000, samples_per_task=16),
        metadata={"help": "Meta-training loop."},
    )
    chain: ChainFinetuneConfig = field(
        default_factory=ChainFinetuneConfig,
        metadata={
            "help": "Fine-tuning through the sampling chain after meta-training (SPEC §3.7, DRaFT-K; steps 0: none).",
            "omit_default": True,
        },
    )
    hypernetwork_steps: int = field(
        default=2000, metadata={"help": "Training steps of the one-pass hypernetwork baseline (0: skip it)."}
    )
    hypernetwork_sft_steps: int = field(
        default=0,
        metadata={
            "help": "Steps of the same one-pass network trained through the training tasks' loss (Text-to-LoRA's SFT, "
            "SPEC §4 t2l_sft / hypernetwork_sft); each step scores meta.meta_batch_size tasks on one batch each "
            "(0: skip it).",
            "omit_default": True,
        },
    )
    sampler: str = field(default="ddpm", metadata={"help": "'ddpm' or 'ddim' at evaluation."})
    num_inference_steps: int | None = field(default=None, metadata={"help": "Sampling steps (None: all T)."})
    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Scale of the generation noise at evaluation (0: deterministic chain).",
            "omit_default": True,
        },
    )
    eval_seed: int = field(default=0, metadata={"help": "Seed of the generation noise at evaluation."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the generator and results go."})
    zoo_dir: str | None = field(default=None, metadata={"help": "Zoo folder (default: cache, keyed by a hash)."})

    def __post_init__(self) -> None:
        self.nested_from_dicts()


@dataclass
class FunctionalRecipe(DictConfigMixin):
    """SPEC §3.7 as the benchmarks' '*_functional' variants apply it to a pipeline run: the task-loss term in
    meta-training, then fine-tuning through the sampling chain. The defaults are what won on MiniLM WordNet, seed 0
    (``benchmarks/studies/llm_functional_recipes.py``, docs/llm.md)."""

    weight: float = field(
        default=10.0,
        metadata={"help": "λ of the task-loss term (MiniLM seed 0: 1 moves nothing, 10 best, 100 worse)."},
    )
    samples: int = field(
        default=1,
        metadata={
            "help": "Clean estimates per task and step that the term scores (each is one base-model pass over a "
            "batch of the task's examples: the term's cost)."
        },
    )
    input: str = field(
        default="pure_noise",
        metadata={
            "help": "What the denoiser sees in the term (MetaTrainConfig.functional_input): 'noised_target' or "
            "'pure_noise' (the sampler's first step)."
        },
    )
    condition_normalization: str = field(
        default="standardize",
        metadata={
            "help": "The denoiser's condition scaling (DenoiserConfig.condition_normalization): 'standardize' lets "
            "differences between conditions reach it."
        },
    )
    prediction_type: str = field(
        default="sample",
        metadata={
            "help": "What the denoiser predicts. 'sample' (x̂₀): under ε-prediction the clean estimate divides by "
            "√ᾱ_t, so the task loss's gradient is amplified up to 1/√ᾱ_T at large t."
        },
    )
    chain_steps: int = field(
        default=300,
        metadata={
            "help": "Steps of fine-tuning through the sampling chain after meta-training (DRaFT-K; meta_batch_size "
            "tasks a step, at the evaluation temperature; 0: none)."
        },
    )
    chain_last_steps: int = field(
        default=1, metadata={"help": "K of that fine-tuning: the chain's last K denoiser calls carry gradients."}
    )
    num_train_timesteps: int | None = field(
        default=None,
        metadata={
            "help": "T of the functional generator's chain (sampled with all T DDPM steps); None: the variant's. The "
            "chain's latency is T denoiser calls, and the task loss trains what its few steps produce.",
            "omit_default": True,
        },
    )
    denoiser: dict = field(
        default_factory=dict,
        metadata={
            "help": "Overrides of the variant's DenoiserConfig for the functional generator, e.g. {'num_layers': 1} "
            "for a lighter trunk where latency matters.",
            "omit_default": True,
        },
    )
    meta_learning: str | None = field(
        default=None,
        metadata={
            "help": "How the denoiser is trained with the term (MetaTrainConfig.algorithm): 'single_level' or "
            "'reptile' (the term inside Reptile's inner loops); None: the variant's own algorithm.",
            "omit_default": True,
        },
    )
    anchor: str | None = field(
        default=None,
        metadata={
            "help": "Rule the weights are a residual on (PipelineConfig.anchor): 'prototype' for heads; None for "
            "LoRA, whose zero is the base model.",
            "omit_default": True,
        },
    )

    def __post_init__(self) -> None:
        if self.meta_learning not in (None, *ALGORITHMS):
            raise ValueError(
                f"functional.meta_learning must be None or one of {ALGORITHMS}, got {self.meta_learning!r}."
            )

    def apply(self, config: PipelineConfig, temperature: float, seed: int) -> PipelineConfig:
        """``config`` (a paper variant's run) trained with this recipe."""
        meta = replace(
            config.meta,
            algorithm=self.meta_learning or config.meta.algorithm,
            functional_weight=self.weight,
            functional_samples=self.samples,
            functional_input=self.input,
        )
        chain = config.chain
        if self.chain_steps:  # else the run's own chain config, which stays out of its cache key
            chain = ChainFinetuneConfig(
                steps=self.chain_steps,
                last_steps=self.chain_last_steps,
                tasks_per_step=meta.meta_batch_size,
                temperature=temperature,
                seed=seed,
            )
        return replace(
            config,
            meta=meta,
            chain=chain,
            scheduler=replace(
                config.scheduler,
                prediction_type=self.prediction_type,
                num_train_timesteps=self.num_train_timesteps or config.scheduler.num_train_timesteps,
            ),
            denoiser=replace(config.denoiser, condition_normalization=self.condition_normalization, **self.denoiser),
            anchor=self.anchor,
        )

    def passes(self, meta: MetaTrainConfig, chain: ChainFinetuneConfig) -> int:
        """Base-model passes of a run trained with this recipe, per meta-batch slot: outer steps × inner steps ×
        clean estimates scored (when λ > 0), plus the chain fine-tuning's steps — the steps (of ``meta_batch_size``
        tasks) that give the one-pass functional baseline (t2l_sft) the same budget."""
        inner = meta.inner_steps if meta.algorithm == "reptile" else 1
        term = meta.num_outer_steps * inner * self.samples if meta.functional_weight > 0 else 0
        return term + chain.steps * chain.tasks_per_step // meta.meta_batch_size


def zoo_folder(config: PipelineConfig) -> tuple[Path, dict]:
    """The zoo depends only on the task family and the recorder: its cache key is their hash."""
    key = {"taskset": config.taskset, "taskset_kwargs": config.taskset_kwargs, "recorder": config.recorder.to_dict()}
    if config.zoo_dir is not None:
        return Path(config.zoo_dir), key
    return cache_root() / "zoo" / f"{config.taskset}-{stable_hash(key)}", key


def build_tasksets(config: PipelineConfig):
    """The task family's train/test split; a keyword the family does not take is a ValueError naming it."""
    try:
        return get_tasksets(config.taskset, **config.taskset_kwargs)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        allowed = _taskset_keywords(config.taskset, str(err))
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        raise ValueError(f"taskset_kwargs of task set {config.taskset!r}: {err}{hint}") from err


def _taskset_keywords(name: str, message: str) -> list[str]:
    """The keywords a registered task family takes: its signature's, or those of the config dataclass named in
    the TypeError when it forwards ``**kwargs`` (the logistic family's ``LogisticFamilyConfig``)."""
    import dataclasses
    import inspect

    from peft_mcdi.tasks.base import _REGISTRY

    fn = _REGISTRY.get(name)
    if fn is None:
        return []
    params = inspect.signature(fn).parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        return named
    cls = fn.__globals__.get(message.split(".", 1)[0].split("(", 1)[0].strip())
    return sorted(named + [f.name for f in dataclasses.fields(cls)]) if dataclasses.is_dataclass(cls) else named


def _process_info(accelerator) -> tuple[int, int, bool]:
    if accelerator is None:
        return 0, 1, True
    return accelerator.process_index, accelerator.num_processes, accelerator.is_main_process


def _barrier(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def zoo_tasks(tasksets) -> list:
    """Every task the zoo records: the training tasks, and the held-out ones (every held-out split) as the per-task
    fine-tuned reference — they never reach the generator."""
    return [*tasksets.train, *tasksets.test, *(t for split in tasksets.extra.values() for t in split)]


def prepare_zoo(
    config: PipelineConfig, tasksets=None, accelerator=None, progress: bool = True, log=print
) -> tuple[ZooStore, list[list[str]]]:
    """Collect every task not yet in the zoo (training and held-out) and write the manifest.

    Under accelerate, process ``rank`` collects tasks ``rank::world_size`` (each task once), all processes wait for
    each other, and only the main process writes the manifest. Returns the store and, per process, the ids it
    collected in this call (empty lists when everything was already there: a rerun recollects nothing)."""
    tasksets = tasksets if tasksets is not None else build_tasksets(config)
    rank, world_size, is_main = _process_info(accelerator)
    root, key = zoo_folder(config)
    if accelerator is not None:
        with accelerator.main_process_first():  # one process creates the folder and writes zoo_config.json
            store = ZooStore.open(root, key)
    else:
        store = ZooStore.open(root, key)
    t0 = time.perf_counter()
    tasks = zoo_tasks(tasksets)
    done = collect(tasks, store, config.recorder, rank=rank, world_size=world_size, progress=progress)
    if accelerator is not None:
        from accelerate.utils import gather_object

        by_process = gather_object([done]) if world_size > 1 else [done]
    else:
        by_process = [done]
    _barrier(accelerator)
    if is_main:
        store.write_manifest()
    _barrier(accelerator)
    collected = sum(len(ids) for ids in by_process)
    log(
        f"zoo: {len(tasksets.train)} training + {len(tasks) - len(tasksets.train)} held-out tasks in {root}; "
        f"{collected} collected now on {world_size} process(es), {len(tasks) - collected} already there "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return store, by_process


def adapter_metadata(task) -> dict:
    """What a LoRA generator's metadata records so that it can be applied later (``mcdi generate``,
    ``AutoMcDiModel``): the base model, target modules, rank, alpha, task type and task encoder of the task family's
    shared PEFT model (whose config names the base by its Hub id, see ``text_lora.build_peft_model``), and its input
    template and class names; families without a base model (logistic) give ``{}``."""
    model = getattr(getattr(task, "shared", None), "model", None)
    peft_config = getattr(model, "peft_config", None)
    if not isinstance(peft_config, dict) or "default" not in peft_config:
        return {}
    cfg = peft_config["default"]
    meta = {
        "base_model": cfg.base_model_name_or_path,
        "target_modules": sorted(cfg.target_modules) if cfg.target_modules else None,
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "task_type": str(cfg.task_type) if cfg.task_type else None,
        "task_encoder": getattr(cfg, "task_encoder", None),
    }
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if meta["task_type"] == "SEQ_CLS" and num_labels:
        meta["num_labels"] = int(num_labels)
    usage = getattr(task.shared, "usage_metadata", dict)()  # the input template and class names, where known
    return {k: v for k, v in {**meta, **usage}.items() if v is not None}


def build_generator(config: PipelineConfig, store: ZooStore, tasksets) -> tuple[McDiGenerator, ZooTensors]:
    """Fit the codec on the training tasks, build the (seeded) untrained generator and load the zoo tensors."""
    k = config.scheduler.num_segments
    train_ids = [t.task_id for t in tasksets.train]
    first = store.read(train_ids[0])
    rows = tasksets.train[0].class_rows  # heads: tensors share a class axis the codec leaves free
    shapes = {n: list(v.shape[2 if rows else 1 :]) for n, v in first.params.items()}  # (epochs, [N,] *shape)
    adapter = adapter_metadata(tasksets.train[0])
    if adapter:
        # A generator applied to a PEFT model must list its tensors in the adapter's canonical order (module-major,
        # McDiModel.lora_parameters), which the task's θ₀ keeps; names sort differently ("layer.10" < "layer.2").
        order = list(tasksets.train[0].init_params())
        if sorted(order) == sorted(shapes):
            shapes = {n: shapes[n] for n in order}
    anchor = None
    if config.anchor is not None:
        ANCHORS[config.anchor].check(shapes, rows, config.denoiser.condition_dim)  # before reading the zoo
        final, conditions = load_raw_targets(store, train_ids, 1)
        anchor = ANCHORS[config.anchor]().fit({n: v[:, 0] for n, v in final.items()}, conditions)
    codec = fit_codec(WeightCodec(shapes, rows, config.codec_normalization), store, train_ids, k, anchor)
    torch.manual_seed(config.meta.seed)  # the generator's initialisation is part of "a seed reruns everything"
    metadata = {"taskset": config.taskset, "num_train_tasks": len(train_ids), **adapter}
    generator = McDiGenerator(
        GeneratorConfig(
            codec=codec.config(),
            denoiser=config.denoiser,
            loss_variant=config.loss_variant,
            condition_dropout=config.condition_dropout,
            loss_tensor_weights=config.loss_tensor_weights,
            min_snr_gamma=config.min_snr_gamma,
            anchor=config.anchor,
            metadata=metadata,
        ),
        config.scheduler,
    )
    generator.codec.load_state_dict(codec.state_dict())
    if anchor is not None:
        generator.anchor.load_state_dict(anchor.state_dict())
    data = load_zoo_tensors(store, train_ids, generator.codec, k, generator.anchor)
    generator.set_training_conditions(data.conditions)
    return generator, data


def run_pipeline(
    config: PipelineConfig,
    progress: bool = True,
    log=print,
    accelerator=None,
    tasksets=None,
    device: str | torch.device | None = None,
) -> dict:
    """Run every stage (each resumes from its cache) and return the results dictionary. ``tasksets``: the split of
    ``config``'s task family when the caller has already built it (variants sharing a zoo build it once).
    ``device``: where the generator trains without an accelerator (default: the CPU); the zoo stays on the CPU.

    With an ``accelerate.Accelerator``, collection is sharded over its processes and each Reptile meta-batch is
    spread over them (one all-reduce per outer step, the same numbers as one process); the one-pass baseline, the
    evaluation and every file but the zoo's task files and checkpoints are the main process's. Other processes
    return ``{}``. Rerunning after an interruption recollects no finished task and resumes meta-training from
    ``output_dir/train``'s last checkpoint (weights, optimizer state, step; the per-step RNG is derived from the
    step)."""
    _, world_size, is_main = _process_info(accelerator)
    if world_size > config.meta.meta_batch_size:
        raise ValueError(
            f"{world_size} processes but meta.meta_batch_size={config.meta.meta_batch_size}: each process needs at "
            "least one meta-batch slot; raise meta_batch_size (a multiple of the process count is best)."
        )
    if not is_main:
        log = _silent
    tasksets = tasksets if tasksets is not None else build_tasksets(config)
    store, by_process = prepare_zoo(config, tasksets, accelerator, progress, log)
    root, _ = zoo_folder(config)
    generator, data = build_generator(config, store, tasksets)
    if device is not None and accelerator is None:
        generator.to(device)

    output_dir = Path(config.output_dir) if config.output_dir else None
    trainer = MetaTrainer(
        generator,
        data,
        config.meta,
        accelerator=accelerator,
        output_dir=output_dir / "train" if output_dir else None,
        tasks=list(tasksets.train),  # build_generator keeps their order: the functional term scores on them
    )
    resumed_from = trainer.step if trainer.maybe_resume() else 0
    if resumed_from:
        log(f"meta-train: resuming from the checkpoint at step {resumed_from} in {output_dir / 'train'}")
    history = trainer.train(progress=progress)
    train_seconds = trainer.train_seconds  # every session's outer steps, not only this call's
    log(
        f"meta-train: {config.meta.num_outer_steps} outer steps ({config.meta.algorithm}) on {world_size} "
        f"process(es), final loss {history[-1]['loss']:.4f} ({train_seconds:.1f} s)"
    )
    if not is_main:
        return {}
    if config.chain.steps:
        finetune_through_chain(
            generator,
            data,
            list(tasksets.train),
            config.chain,
            progress=progress,
            checkpoint_dir=output_dir / "chain" if output_dir else None,
        )

    hypernetworks = {}
    for name, steps in (
        ("hypernetwork", config.hypernetwork_steps),
        ("hypernetwork_sft", config.hypernetwork_sft_steps),
    ):
        if steps:
            hypernetworks[name] = OnePassHypernetwork.like(generator)
    if "hypernetwork" in hypernetworks:
        hypernetworks["hypernetwork"].fit(
            data, num_steps=config.hypernetwork_steps, seed=config.meta.seed, progress=progress
        )
    if "hypernetwork_sft" in hypernetworks:
        hypernetworks["hypernetwork_sft"].fit_functional(
            data,
            list(tasksets.train),
            num_steps=config.hypernetwork_sft_steps,
            batch_size=config.meta.meta_batch_size,
            seed=config.meta.seed,
            progress=progress,
            checkpoint_dir=output_dir / "hypernetwork_sft" if output_dir else None,
        )

    results = evaluate_heldout(generator, store, tasksets, config, hypernetworks)
    results.update(
        config=config.to_dict(),
        history=history,
        meta_train_seconds=train_seconds,
        resumed_from_step=resumed_from,
        num_processes=world_size,
        zoo=str(root),
        zoo_collected_by_process=by_process,
    )
    if accelerator is not None and accelerator.trackers:
        metrics = {f"eval/{results['metric']}/{name}": value for name, value in results["heldout_metric"].items()}
        accelerator.log({**metrics, "eval/generation_ms_median": results["generation_ms_median"]}, step=trainer.step)
    if output_dir is not None:
        generator.save_pretrained(output_dir / "generator")
        atomic_write_text(output_dir / "results.json", json.dumps(results, indent=2, default=str))
        atomic_write_text(output_dir / "generator" / CARD_NAME, render_generator_card(generator, results))
    return results


def _silent(*args, **kwargs) -> None:
    return None


def card_fields(results: dict) -> dict:
    """Generator-card metadata from a results dictionary: held-out metric per method and the latency."""
    ranked = sorted(results["heldout_metric"].items(), key=lambda kv: kv[1], reverse=results["higher_is_better"])
    fields_ = {"results": {f"held-out {results['metric']} ({name})": f"{value:.4f}" for name, value in ranked}}
    if results.get("generation_ms_median") is not None:
        fields_["latency_ms"] = float(results["generation_ms_median"])
    return fields_


def render_generator_card(generator: McDiGenerator, results: dict | None = None, repo_id: str | None = None) -> str:
    """The generator's model card from its metadata, plus the held-out results when given (not saved in
    config.json: the results of a later evaluation refresh the card, not the generator)."""
    original = generator.config.metadata
    try:
        if results:
            generator.config.metadata = {**original, **card_fields(results)}
        return generator_card(generator, repo_id)
    finally:
        generator.config.metadata = original


@torch.no_grad()
def evaluate_heldout(
    generator: McDiGenerator,
    store: ZooStore,
    tasksets,
    config: PipelineConfig,
    hypernetworks: dict[str, OnePassHypernetwork] | None = None,
) -> dict:
    """Held-out metric of generated weights beside θ₀, mean of zoo, nearest training task, the one-pass
    hypernetworks (by name) and the per-task reference, plus generation latency and the memorisation distance."""
    k = generator.scheduler.num_segments
    train_ids = [t.task_id for t in tasksets.train]
    train_final, train_conditions = load_raw_targets(store, train_ids, 1)
    train_final = {n: v[:, 0] for n, v in train_final.items()}  # (n_train, *shape): θ_M of each task
    test_conditions = tasksets.test.conditions()
    generate_kwargs = {
        "sampler": config.sampler,
        "num_inference_steps": config.num_inference_steps,
        "temperature": config.temperature,
    }
    # The generator may sit on an accelerator after training; tasks and the zoo live on the CPU.
    device = generator.device
    vectors = generator.generate_vectors(test_conditions.to(device), seed=config.eval_seed, **generate_kwargs)
    generated = {n: v.cpu() for n, v in generator.decode(vectors, test_conditions.to(device)).items()}
    nearest = nearest_task_indices(train_conditions, test_conditions)
    mean = mean_of_zoo(train_final)
    one_pass = {}
    for name, net in (hypernetworks or {}).items():
        one_pass[name] = {n: v.cpu() for n, v in net.generate(test_conditions).items()}

    tasks = list(tasksets.test)
    references = [{n: v[-1] for n, v in store.read(t.task_id).params.items()} for t in tasks]
    rows = range(len(tasks))
    candidates = {
        "generated": unstacked(generated),
        "nearest_task": [{n: v[nearest[j]] for n, v in train_final.items()} for j in rows],
        "mean_of_zoo": [mean for _ in rows],
        "init": [t.init_params() for t in tasks],
        "per_task_reference": references,
        **{name: unstacked(weights) for name, weights in one_pass.items()},
    }
    methods = {name: type(tasks[0]).evaluate_group(tasks, params) for name, params in candidates.items()}

    zoo_vectors = load_zoo_tensors(store, train_ids, generator.codec, k, generator.anchor).targets.flatten(0, 1)
    zoo_vectors = zoo_vectors.to(device)
    stacked = {n: torch.stack([r[n] for r in references]).to(device) for n in references[0]}
    reference_vectors = generator.encode(stacked, test_conditions.to(device))
    single = test_conditions[:1].to(device)
    latency = median_ms(lambda: generator.generate_vectors(single, seed=0, **generate_kwargs))
    first = tasksets.test[0]
    results = {
        "metric": first.metric,
        "higher_is_better": first.higher_is_better,
        "heldout_metric": {name: sum(v) / len(v) for name, v in methods.items()},
        "per_task": methods,
        "generation_ms_median": latency,
        "nearest_checkpoint_distance": float(nearest_checkpoint_distance(vectors, zoo_vectors).mean()),
        # the scale of that distance: how far the held-out tasks' own trained weights sit from the zoo
        "reference_nearest_checkpoint_distance": float(
            nearest_checkpoint_distance(reference_vectors, zoo_vectors).mean()
        ),
        "num_test_tasks": len(tasksets.test),
    }
    if one_pass:  # every one-pass network has the same architecture, hence the same latency
        net = next(iter(hypernetworks.values()))
        results["hypernetwork_ms_median"] = median_ms(lambda: net.generate(test_conditions[:1]))
    return results


def format_results(results: dict) -> str:
    """A small table of held-out metric by method, best first."""
    lines = [f"method                 held-out {results['metric']}", "-" * 38]
    ranked = sorted(results["heldout_metric"].items(), key=lambda kv: kv[1], reverse=results["higher_is_better"])
    for name, value in ranked:
        lines.append(f"{name:<22} {value:.4f}")
    lines.append(f"generation latency (median, 1 task, encoder excluded): {results['generation_ms_median']:.2f} ms")
    if "hypernetwork_ms_median" in results:
        lines.append(f"one-pass hypernetwork latency (median, 1 task): {results['hypernetwork_ms_median']:.2f} ms")
    return "\n".join(lines)
