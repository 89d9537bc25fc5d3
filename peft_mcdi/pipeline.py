"""The smallest end-to-end Mc-Di pipeline: collect a zoo → fit the codec → meta-train → generate for held-out tasks
→ compare with the memorisation baselines. Works for any registered task family whose tasks share one parameter
layout; the README's first command runs it on the logistic family."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from peft_mcdi.baselines.hypernetwork import OnePassHypernetwork
from peft_mcdi.evaluation import mean_of_zoo, median_ms, nearest_checkpoint_distance, nearest_task_indices
from peft_mcdi.generator.codec import WeightCodec
from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.model import GeneratorConfig, McDiGenerator
from peft_mcdi.generator.schedulers import SchedulerConfig
from peft_mcdi.meta.data import fit_codec, load_raw_targets, load_zoo_tensors
from peft_mcdi.meta.tasks import get_tasksets
from peft_mcdi.meta.trainer import MetaTrainConfig, MetaTrainer
from peft_mcdi.utils import DictConfigMixin, atomic_write_text, cache_root, stable_hash
from peft_mcdi.zoo.recorder import RecorderConfig, collect
from peft_mcdi.zoo.store import ZooStore


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
    condition_dropout: float = field(default=0.1, metadata={"help": "Condition dropout for guidance."})
    meta: MetaTrainConfig = field(
        default_factory=lambda: MetaTrainConfig(num_outer_steps=2000, samples_per_task=16),
        metadata={"help": "Meta-training loop."},
    )
    hypernetwork_steps: int = field(
        default=2000, metadata={"help": "Training steps of the one-pass hypernetwork baseline (0: skip it)."}
    )
    sampler: str = field(default="ddpm", metadata={"help": "'ddpm' or 'ddim' at evaluation."})
    num_inference_steps: int | None = field(default=None, metadata={"help": "Sampling steps (None: all T)."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the generation noise at evaluation."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the generator and results go."})
    zoo_dir: str | None = field(default=None, metadata={"help": "Zoo folder (default: cache, keyed by a hash)."})

    def __post_init__(self) -> None:
        for name, cls in (
            ("recorder", RecorderConfig),
            ("scheduler", SchedulerConfig),
            ("denoiser", DenoiserConfig),
            ("meta", MetaTrainConfig),
        ):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))


def zoo_folder(config: PipelineConfig) -> tuple[Path, dict]:
    """The zoo depends only on the task family and the recorder: its cache key is their hash."""
    key = {"taskset": config.taskset, "taskset_kwargs": config.taskset_kwargs, "recorder": config.recorder.to_dict()}
    if config.zoo_dir is not None:
        return Path(config.zoo_dir), key
    return cache_root() / "zoo" / f"{config.taskset}-{stable_hash(key)}", key


def run_pipeline(config: PipelineConfig, progress: bool = True, log=print) -> dict:
    """Run every stage (each resumes from its cache) and return the results dictionary."""
    tasksets = get_tasksets(config.taskset, **config.taskset_kwargs)
    root, key = zoo_folder(config)
    store = ZooStore.open(root, key)
    t0 = time.perf_counter()
    # Held-out tasks are collected too, as the per-task fine-tuned reference; they never reach the generator.
    collect([*tasksets.train, *tasksets.test], store, config.recorder, progress=progress)
    store.write_manifest()
    log(
        f"zoo: {len(tasksets.train)} training + {len(tasksets.test)} held-out tasks in {root} "
        f"({time.perf_counter() - t0:.1f} s)"
    )

    k = config.scheduler.num_segments
    train_ids = [t.task_id for t in tasksets.train]
    first = store.read(train_ids[0])
    shapes = {n: list(v.shape[1:]) for n, v in first.params.items()}
    codec = fit_codec(WeightCodec(shapes, normalization=config.codec_normalization), store, train_ids, k)
    torch.manual_seed(config.meta.seed)  # the generator's initialisation is part of "a seed reruns everything"
    generator = McDiGenerator(
        GeneratorConfig(
            codec=codec.config(),
            denoiser=config.denoiser,
            loss_variant=config.loss_variant,
            condition_dropout=config.condition_dropout,
            metadata={"taskset": config.taskset, "num_train_tasks": len(train_ids)},
        ),
        config.scheduler,
    )
    generator.codec.load_state_dict(codec.state_dict())
    data = load_zoo_tensors(store, train_ids, generator.codec, k)
    generator.set_training_conditions(data.conditions)

    output_dir = Path(config.output_dir) if config.output_dir else None
    t0 = time.perf_counter()
    trainer = MetaTrainer(generator, data, config.meta, output_dir=output_dir / "train" if output_dir else None)
    history = trainer.train(progress=progress)
    train_seconds = time.perf_counter() - t0
    log(
        f"meta-train: {config.meta.num_outer_steps} outer steps ({config.meta.algorithm}), "
        f"final loss {history[-1]['loss']:.4f} ({train_seconds:.1f} s)"
    )

    hypernetwork = None
    if config.hypernetwork_steps:
        hypernetwork = OnePassHypernetwork(generator.config)
        hypernetwork.codec.load_state_dict(generator.codec.state_dict())
        hypernetwork.fit(data, num_steps=config.hypernetwork_steps, seed=config.meta.seed, progress=progress)

    results = evaluate_heldout(generator, store, tasksets, config, hypernetwork)
    results.update(config=config.to_dict(), history=history, meta_train_seconds=train_seconds, zoo=str(root))
    if output_dir is not None:
        generator.save_pretrained(output_dir / "generator")
        atomic_write_text(output_dir / "results.json", json.dumps(results, indent=2, default=str))
    return results


@torch.no_grad()
def evaluate_heldout(
    generator: McDiGenerator,
    store: ZooStore,
    tasksets,
    config: PipelineConfig,
    hypernetwork: OnePassHypernetwork | None = None,
) -> dict:
    """Held-out metric of generated weights beside θ₀, mean of zoo, nearest training task, the one-pass
    hypernetwork and the per-task reference, plus generation latency and the memorisation distance."""
    k = generator.scheduler.num_segments
    train_ids = [t.task_id for t in tasksets.train]
    train_final, train_conditions = load_raw_targets(store, train_ids, 1)
    train_final = {n: v[:, 0] for n, v in train_final.items()}  # (n_train, *shape): θ_M of each task
    test_conditions = tasksets.test.conditions()
    generate_kwargs = {"sampler": config.sampler, "num_inference_steps": config.num_inference_steps}
    vectors = generator.generate_vectors(test_conditions, seed=config.eval_seed, **generate_kwargs)
    generated = generator.codec.decode(vectors)
    nearest = nearest_task_indices(train_conditions, test_conditions)
    mean = mean_of_zoo(train_final)
    hyper = hypernetwork.generate(test_conditions) if hypernetwork is not None else None

    methods: dict[str, list[float]] = {}
    for j, task in enumerate(tasksets.test):
        reference = store.read(task.task_id)
        candidates = {
            "generated": {n: v[j] for n, v in generated.items()},
            "nearest_task": {n: v[nearest[j]] for n, v in train_final.items()},
            "mean_of_zoo": mean,
            "init": task.init_params(),
            "per_task_reference": {n: v[-1] for n, v in reference.params.items()},
        }
        if hyper is not None:
            candidates["hypernetwork"] = {n: v[j] for n, v in hyper.items()}
        for name, params in candidates.items():
            methods.setdefault(name, []).append(float(task.evaluate(params)))

    zoo_vectors = load_zoo_tensors(store, train_ids, generator.codec, k).targets.flatten(0, 1)
    single = test_conditions[:1]
    latency = median_ms(lambda: generator.generate_vectors(single, seed=0, **generate_kwargs))
    first = tasksets.test[0]
    results = {
        "metric": first.metric,
        "higher_is_better": first.higher_is_better,
        "heldout_metric": {name: sum(v) / len(v) for name, v in methods.items()},
        "per_task": methods,
        "generation_ms_median": latency,
        "nearest_checkpoint_distance": float(nearest_checkpoint_distance(vectors, zoo_vectors).mean()),
        "num_test_tasks": len(tasksets.test),
    }
    if hypernetwork is not None:
        results["hypernetwork_ms_median"] = median_ms(lambda: hypernetwork.generate(single))
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
