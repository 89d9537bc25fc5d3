"""The vision benchmark harness: one suite, one seed, every method side by side on the same test episodes.

Stages (each cached, so a rerun resumes): build the suite (data, backbone, features, episodes) → collect the zoo of
meta-training trajectories → per generator variant (Mc-Di, Mv-Di, Tw-Di, single-level) meta-train, with held-out
accuracy measured at several budgets (quality against compute, SPEC §4) → the one-pass hypernetwork, Reptile →
per test setting, every method on the same episodes, with latency, throughput and peak memory.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from peft_mcdi.evaluation.baselines.heads import (
    ReptileHeadConfig,
    ReptileHeadInit,
    prototype_head,
)
from peft_mcdi.evaluation.baselines.hypernetwork import OnePassHypernetwork
from peft_mcdi.evaluation.harness import first_reaching, paired_difference
from peft_mcdi.evaluation.metrics import measured, median_ms
from peft_mcdi.evaluation.plots import sampling_chains, sampling_pca_data
from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.head import HeadGenerator
from peft_mcdi.generator.schedulers import SchedulerConfig, local_target_epochs
from peft_mcdi.meta.chain import finetune_through_chain
from peft_mcdi.meta.data import load_raw_targets
from peft_mcdi.meta.trainer import MetaTrainConfig, MetaTrainer
from peft_mcdi.pipeline import FUNCTIONAL, VARIANTS, FunctionalRecipe, PipelineConfig, build_generator, variant_recipe
from peft_mcdi.tasks.episodes import EpisodeBatch
from peft_mcdi.tasks.vision_suites import VisionSuite, build_suite
from peft_mcdi.utils import DictConfigMixin, atomic_write_text, cache_root, stable_hash
from peft_mcdi.zoo.heads import collect_heads, train_heads
from peft_mcdi.zoo.recorder import RecorderConfig
from peft_mcdi.zoo.store import ZooStore


RESULT_NAME = "result.json"  # a finished run's result, beside its checkpoints
MATCHED = ("mcdi", "mcdi" + FUNCTIONAL)  # the generators whose accuracy the gradient baselines' steps-to-match target


@dataclass
class VisionBenchConfig(DictConfigMixin):
    """Everything but the suite: trajectories, generator, meta-training, baselines, evaluation."""

    recorder: RecorderConfig = field(
        default_factory=lambda: RecorderConfig(num_epochs=10, lr=0.01, rho=0.05),
        metadata={"help": "Adam+SAM trajectories of the zoo (and the per-task reference on test support sets)."},
    )
    denoiser: DenoiserConfig = field(
        default_factory=lambda: DenoiserConfig(
            type="tokens", hidden_dim=128, num_layers=2, num_heads=4, per_token_condition=True, condition_skip=True
        ),
        metadata={"help": "Row-token denoiser (condition_dim is set to the suite's feature width)."},
    )
    num_train_timesteps: int = field(default=20, metadata={"help": "T of every variant."})
    variants: list[str] = field(
        default_factory=lambda: [*VARIANTS, "mcdi" + FUNCTIONAL],
        metadata={
            "help": f"Generator variants, of {list(VARIANTS)}, each optionally with the suffix '{FUNCTIONAL}' "
            "(trained with the functional recipe on residuals of the prototype rule)."
        },
    )
    functional: FunctionalRecipe = field(
        default_factory=lambda: FunctionalRecipe(anchor="prototype"),
        metadata={
            "help": "How the '*_functional' variants are trained (SPEC §3.7): heads anchored on the prototype rule, "
            "the task-loss term on each training episode's labelled pool, then the chain."
        },
    )
    meta: MetaTrainConfig = field(
        default_factory=lambda: MetaTrainConfig(
            num_outer_steps=1500, meta_batch_size=8, samples_per_task=8, outer_lr=3e-3
        ),
        metadata={"help": "Meta-training (algorithm is set per variant)."},
    )
    budgets: list[int] = field(
        default_factory=lambda: [250, 500, 1000],
        metadata={"help": "Outer-step budgets (below num_outer_steps) at which held-out accuracy is also measured."},
    )
    curve_episodes: int = field(default=200, metadata={"help": "Test episodes of the first setting for the curve."})
    codec_normalization: str = field(default="element", metadata={"help": "'tensor' or 'element' statistics."})
    condition_dropout: float = field(default=0.1, metadata={"help": "Condition dropout (guidance)."})
    hypernetwork_steps: int = field(default=1500, metadata={"help": "Training steps of the one-pass hypernetwork."})
    fewshot_steps: int = field(
        default=5,
        metadata={
            "help": "Adam steps (the zoo's learning rate, no SAM) on an episode's support set for the few-shot rows: "
            "from the functional generator's head (mcdi_functional_fewshot) and from zeros (zero_fewshot)."
        },
    )
    reptile: ReptileHeadConfig = field(default_factory=ReptileHeadConfig, metadata={"help": "Reptile baseline."})
    finetune_steps: int = field(default=100, metadata={"help": "Budget of the gradient baselines (steps)."})
    finetune_lr: float = field(default=0.01, metadata={"help": "Adam lr of the logistic-regression baseline."})
    sampler: str = field(default="ddpm", metadata={"help": "Sampler at evaluation: 'ddpm' or 'ddim'."})
    num_inference_steps: int | None = field(default=None, metadata={"help": "Sampling steps (None: all T)."})
    guidance_scale: float = field(default=2.0, metadata={"help": "Classifier-free guidance at evaluation."})
    num_samples: int = field(default=8, metadata={"help": "Heads averaged per episode at evaluation."})
    latency_repeats: int = field(default=30, metadata={"help": "Repeats of every latency measurement."})

    def head_generator(self, generator, single_sample: bool = False) -> HeadGenerator:
        """The evaluation's sampling options around ``generator`` (``single_sample``: one draw, no guidance)."""
        if single_sample:
            return HeadGenerator(generator, self.sampler, self.num_inference_steps)
        return HeadGenerator(generator, self.sampler, self.num_inference_steps, self.guidance_scale, self.num_samples)

    def __post_init__(self) -> None:
        self.nested_from_dicts()
        unknown = sorted(v for v in self.variants if variant_recipe(v)[0] not in VARIANTS)
        if unknown:
            raise ValueError(
                f"unknown variants {unknown}; valid: {list(VARIANTS)}, each optionally with the suffix '{FUNCTIONAL}'."
            )

    def pipeline(self, name: str, feature_dim: int, taskset: str, seed: int) -> PipelineConfig:
        """The pipeline settings of one generator variant (the functional ones through :attr:`functional`)."""
        recipe, functional = variant_recipe(name)
        spec = VARIANTS[recipe]
        config = PipelineConfig(
            taskset=taskset,
            scheduler=SchedulerConfig(num_train_timesteps=self.num_train_timesteps, num_segments=spec["num_segments"]),
            denoiser=DenoiserConfig(**{**self.denoiser.to_dict(), "condition_dim": feature_dim}),
            codec_normalization=self.codec_normalization,
            loss_variant=spec["loss_variant"],
            condition_dropout=self.condition_dropout,
            meta=MetaTrainConfig(**{**self.meta.to_dict(), "algorithm": spec["algorithm"], "seed": seed}),
        )
        return self.functional.apply(config, temperature=1.0, seed=seed) if functional else config


def collect_zoo(suite: VisionSuite, suite_key: dict, recorder: RecorderConfig, progress: bool) -> ZooStore:
    """Trajectories of the meta-training episodes only (test episodes' references are trained batched later)."""
    key = {"suite": suite_key, "recorder": recorder.to_dict()}
    store = ZooStore.open(cache_root() / "zoo" / f"{suite.name}-{stable_hash(key)}", key)
    collect_heads(suite.train, store, recorder, progress=progress)
    store.write_manifest()
    return store


def meta_train_variant(
    name: str, suite: VisionSuite, store: ZooStore, config: VisionBenchConfig, run_dir: Path, seed: int,
    evaluate_curve, progress: bool,
) -> tuple[HeadGenerator, dict]:  # fmt: skip
    """Build and meta-train one variant, measuring held-out accuracy at each budget on the way; a functional variant
    then fine-tunes through its sampling chain (its last curve point, ``"chain_steps"``)."""
    pipeline = config.pipeline(name, suite.feature_dim, suite.name, seed)
    train = list(suite.train)
    generator, data = build_generator(pipeline, store, suite.tasksets(next(iter(suite.tests))))
    scored = train if pipeline.meta.functional_weight > 0 else None  # the functional term's episodes
    trainer = MetaTrainer(generator, data, pipeline.meta, output_dir=run_dir / name, tasks=scored)
    trainer.maybe_resume()
    # The curve (cumulative meta-training seconds and held-out accuracy at each budget) is kept beside the
    # checkpoints, so a resumed run reports the points measured before the interruption instead of re-measuring them
    # on a later generator.
    record = run_dir / name / "curve.json"
    points = {p.get("outer_steps", "chain"): p for p in json.loads(record.read_text())} if record.is_file() else {}
    seconds = 0.0
    budgets = sorted({*[b for b in config.budgets if b < config.meta.num_outer_steps], config.meta.num_outer_steps})
    for budget in budgets:
        if budget in points:
            seconds = points[budget]["meta_train_seconds"]
            continue
        trainer.config.num_outer_steps = budget
        start = time.perf_counter()
        trainer.train(progress=progress)
        seconds += time.perf_counter() - start  # a run resumed past its last record undercounts; none do here
        points[budget] = {"outer_steps": budget, "meta_train_seconds": seconds, "accuracy": evaluate_curve(generator)}
        atomic_write_text(record, json.dumps(list(points.values()), indent=1))
    curve = [points[b] for b in budgets]
    if pipeline.chain.steps:  # resumes from its own checkpoints (a finished one loads its result)
        start = time.perf_counter()
        chain_dir = run_dir / name / "chain"
        finetune_through_chain(generator, data, train, pipeline.chain, progress, checkpoint_dir=chain_dir)
        if "chain" not in points:
            points["chain"] = {"chain_steps": pipeline.chain.steps, "chain_seconds": time.perf_counter() - start,
                               "accuracy": evaluate_curve(generator)}  # fmt: skip
            atomic_write_text(record, json.dumps(list(points.values()), indent=1))
        curve.append(points["chain"])
    return config.head_generator(generator), {
        "curve": curve,
        "meta_train_seconds": seconds,
        "final_loss": trainer.history[-1]["loss"] if trainer.history else None,
    }


def _rows_of(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Head rows (…, N, d + 1): weight and bias side by side."""
    return torch.cat([params["weight"], params["bias"][..., None]], -1)


def _mean(x: torch.Tensor) -> float:
    return float(x.float().mean())


def evaluate_setting(
    batch: EpisodeBatch,
    generators: dict[str, HeadGenerator],
    one_pass: dict[str, OnePassHypernetwork],
    reptile: ReptileHeadInit,
    zoo_rows: torch.Tensor,
    zoo_conditions: torch.Tensor,
    config: VisionBenchConfig,
) -> dict:
    """Every method on the episodes of one setting: accuracy per episode, cost, and the paired differences over
    episodes of the functional generator against the free rule and logistic regression."""
    E, N = batch.support_x.shape[0], batch.num_ways
    seeds = list(range(E))
    acc: dict[str, torch.Tensor] = {}
    cost: dict[str, dict] = {}
    one = batch[:1]
    generated, generated_rows = {}, {}
    functional = "mcdi" + FUNCTIONAL
    for name in ("mcdi", functional):  # the ablation of the sampling options: one draw, no guidance
        if name in generators:
            generators = {**generators, f"{name}_1_sample": config.head_generator(generators[name].generator, True)}
    for name, gen in generators.items():
        heads, batched_s, peak = measured(
            lambda g=gen: g.generate_heads(batch.support_x, batch.support_y, N, seed=seeds)
        )
        acc[name], generated[name] = batch.accuracy(heads), heads
        generated_rows[name] = _rows_of(heads)
        cost[name] = {
            "ms_per_episode_median": median_ms(
                lambda g=gen: g.generate_heads(one.support_x, one.support_y, N), config.latency_repeats
            ),
            "episodes_per_s_batched": E / batched_s,
            "peak_memory_mb_batched": peak,
        }
    for name, network in one_pass.items():
        acc[name] = batch.accuracy(network.generate(batch.prototypes))
        cost[name] = {
            "ms_per_episode_median": median_ms(lambda n=network: n.generate(one.prototypes), config.latency_repeats)
        }
    if functional in generators:
        acc["anchor"] = batch.accuracy(generators[functional].generator.anchor(batch.prototypes))
        lr = config.recorder.lr  # the few-shot rows differ only in where they start
        acc[f"{functional}_fewshot"] = train_heads(
            batch, config.fewshot_steps, lr, init=generated[functional]
        ).accuracy[-1]
        acc["zero_fewshot"] = train_heads(batch, config.fewshot_steps, lr).accuracy[-1]
    acc["prototype"] = batch.accuracy(prototype_head(batch))
    cost["prototype"] = {"ms_per_episode_median": median_ms(lambda: prototype_head(one), config.latency_repeats)}

    # Gradient baselines: full curves over the step budget, on every episode at once.
    logistic = train_heads(batch, config.finetune_steps, config.finetune_lr)
    reference_steps = config.recorder.num_epochs * batch.steps_per_epoch  # the zoo's recipe, on the support set
    reference = train_heads(
        batch, reference_steps, config.recorder.lr, rho=config.recorder.rho, feature_noise=batch.feature_noise
    )
    tuned = reptile.fine_tune(batch, config.finetune_steps)
    acc["logistic_regression"] = logistic.accuracy[-1]
    acc["per_task_reference"] = reference.accuracy[-1]
    acc["reptile_finetune"] = tuned.accuracy[-1]
    # what the gradient baselines must reach: each generator's accuracy (steps and ms to match it, SPEC §4)
    targets = {name: _mean(acc[name]) for name in MATCHED if name in acc}
    gradient_runs = (
        ("logistic_regression", logistic, config.finetune_lr, 0.0),
        ("per_task_reference", reference, config.recorder.lr, config.recorder.rho),
    )
    for name, run, lr, rho in gradient_runs:
        steps = len(run.accuracy) - 1
        single = median_ms(lambda s=steps, lr=lr, rho=rho: train_heads(one, s, lr, rho), 5, warmup=1)
        cost[name] = {
            "steps": steps,
            "accuracy_at_steps": {s: _mean(run.accuracy[s]) for s in (1, 10, 100) if s < len(run.accuracy)},
            "ms_per_episode_median": single,
            "ms_per_step": single / steps,
        }
        for target, value in targets.items():
            match = first_reaching(run.accuracy.mean(-1).tolist(), value)
            cost[name][f"steps_to_match_{target}"] = match if match is not None else "> budget"
            if match is not None:
                cost[name][f"ms_to_match_{target}"] = match * cost[name]["ms_per_step"]
    cost["reptile_finetune"] = {
        "steps": config.finetune_steps,
        "accuracy_at_steps": {s: _mean(tuned.accuracy[s]) for s in (0, 1, 10, 100) if s < len(tuned.accuracy)},
    }
    for target, value in targets.items():
        match = first_reaching(tuned.accuracy.mean(-1).tolist(), value)
        cost["reptile_finetune"][f"steps_to_match_{target}"] = match if match is not None else "> budget"

    # Memorisation checks: the zoo's mean head row for every class; per class, the final row of the training class
    # whose prototype is nearest; and how far generated rows sit from their nearest zoo row (codec space).
    mean_row = zoo_rows.mean(0)
    acc["mean_of_zoo"] = batch.accuracy({"weight": mean_row[:-1].expand(E, N, -1), "bias": mean_row[-1].expand(E, N)})
    nearest = torch.cdist(batch.prototypes.flatten(0, 1), zoo_conditions).argmin(1)
    rows = zoo_rows[nearest].view(E, N, -1)
    acc["nearest_training_rows"] = batch.accuracy({"weight": rows[..., :-1], "bias": rows[..., -1]})
    distances = {
        name: _mean(torch.cdist(r.flatten(0, 1), zoo_rows).min(1).values) for name, r in generated_rows.items()
    }
    distances["per_task_reference"] = _mean(
        torch.cdist(_rows_of(reference.params).flatten(0, 1), zoo_rows).min(1).values
    )
    paired = {
        f"{functional} - {other}": paired_difference(acc[functional], acc[other])
        for other in ("prototype", "logistic_regression")
        if functional in acc
    }
    return {
        "num_episodes": E,
        "accuracy": {k: _mean(v) for k, v in acc.items()},
        **({"paired_difference": paired} if paired else {}),
        "accuracy_std_over_episodes": {k: float(v.float().std()) for k, v in acc.items()},
        "cost": cost,
        "distance_to_nearest_zoo_row": distances,
    }


def sampling_picture(batch: EpisodeBatch, generator: HeadGenerator, config: VisionBenchConfig, chains: int = 3):
    """Figure-1 data for the first episode of ``batch``: ``chains`` sampling chains (seeds 0..chains−1) and the
    per-task reference's Adam+SAM trajectory on the episode's support set (epochs 0..M), in codec space."""
    one = batch[:1]
    spe = one.steps_per_epoch
    run = train_heads(one, config.recorder.num_epochs * spe, config.recorder.lr, rho=config.recorder.rho,
                      feature_noise=one.feature_noise, keep_every=spe)  # fmt: skip
    N, d = one.num_ways, one.support_x.shape[-1]
    checkpoints = [
        {"weight": torch.zeros(1, N, d), "bias": torch.zeros(1, N)},
        *[run.kept[s] for s in sorted(run.kept)],
    ]
    codec = generator.generator.codec
    trajectory = torch.cat([codec.encode(c) for c in checkpoints])  # (M + 1, D)
    condition = generator.conditions(one.support_x, one.support_y, N).expand(chains, -1, -1)
    path = sampling_chains(generator.generator, condition, seed=list(range(chains)), **generator.sample_kwargs)
    steps = generator.generator.scheduler.timesteps_for(generator.sample_kwargs["num_inference_steps"])
    scheduler = generator.generator.scheduler
    return sampling_pca_data(
        path, trajectory.expand(chains, -1, -1), trajectory[None][:0],  # no zoo trajectories: other classes
        chain_timesteps=[steps[0][0], *(t_prev for _, t_prev in steps)],
        boundaries=scheduler.boundaries.tolist(),
        target_epochs=local_target_epochs(config.recorder.num_epochs, scheduler.num_segments),
    )  # fmt: skip


def _run_dir(suite: VisionSuite, config: VisionBenchConfig) -> Path:
    """Where one run's stages are cached: keyed by everything that determines them."""
    return cache_root() / "runs" / f"{suite.name}-{stable_hash([suite.config, config.to_dict()])}"


def recorded_generator(run: dict, name: str) -> HeadGenerator:
    """The ``name`` generator of a recorded run (one entry of a results JSON's ``runs``), for studies of what it
    learnt: its saved folder, or, for runs recorded before every variant's folder was saved, the variant rebuilt from
    the run's stage caches (which must still be there: nothing is retrained here)."""
    config = VisionBenchConfig(**run["bench_config"])
    folder = run.get("generator_dirs", {}).get(name)
    if folder and Path(folder).is_dir():
        return config.head_generator(HeadGenerator.from_pretrained(folder).generator)
    suite_kwargs = {k: v for k, v in run["suite_config"].items() if k != "name"}
    suite = build_suite(run["suite_config"]["name"], **suite_kwargs)
    run_dir = _run_dir(suite, config)
    if not (run_dir / name / "curve.json").is_file():
        raise FileNotFoundError(
            f"run {run['suite']} seed {run['seed']}: no saved '{name}' generator and no stage cache at "
            f"{run_dir / name}; rerun its `benchmarks/vision.py` command with MCDI_CACHE set as it was."
        )
    store = collect_zoo(suite, suite.config, config.recorder, progress=False)

    def unmeasured(generator) -> float:
        raise RuntimeError(f"run {run['suite']} seed {run['seed']}: '{name}' is not fully cached in {run_dir / name}")

    return meta_train_variant(name, suite, store, config, run_dir, run["seed"], unmeasured, progress=False)[0]


def run_vision_benchmark(
    suite_name: str, suite_kwargs: dict, config: VisionBenchConfig, seed: int, progress: bool = False, log=print
) -> dict:
    """One suite, one seed (the seed reruns the suite's data, zoo, meta-training and episodes)."""
    suite_kwargs = {**suite_kwargs, "seed": seed}
    began = start = time.perf_counter()
    suite = build_suite(suite_name, **suite_kwargs, progress=progress)
    log(f"{suite.name} seed {seed}: {len(suite.train)} training episodes, settings {list(suite.tests)} "
        f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    start = time.perf_counter()
    store = collect_zoo(suite, suite.config, config.recorder, progress)
    zoo_seconds = time.perf_counter() - start
    log(f"zoo: {len(suite.train)} trajectories ({zoo_seconds:.0f} s)")
    run_dir = _run_dir(suite, config)
    if (run_dir / RESULT_NAME).is_file():  # this exact run was evaluated before: its result, not a re-evaluation
        log(f"{suite.name} seed {seed}: evaluated before, result read from {run_dir / RESULT_NAME}")
        return json.loads((run_dir / RESULT_NAME).read_text())

    first = next(iter(suite.tests))
    curve_batch = EpisodeBatch.stack(suite.tests[first])[: config.curve_episodes]

    def evaluate_curve(generator) -> float:
        gen = config.head_generator(generator)
        heads = gen.generate_episode_heads(curve_batch)
        return _mean(curve_batch.accuracy(heads))

    generators, training = {}, {}
    for name in config.variants:
        generators[name], training[name] = meta_train_variant(
            name, suite, store, config, run_dir, seed, evaluate_curve, progress
        )
        curve = [(c.get("outer_steps", "chain"), round(c["accuracy"], 4)) for c in training[name]["curve"]]
        log(f"{name}: curve {curve}")
    one_pass = {}
    paper = [g.generator for n, g in generators.items() if not variant_recipe(n)[1]]
    if config.hypernetwork_steps and paper:  # regression onto the zoo's final heads, with the paper's codec
        _, data = build_generator(
            PipelineConfig(
                taskset=suite.name,
                scheduler=SchedulerConfig(num_segments=1),
                codec_normalization=config.codec_normalization,
                denoiser=paper[0].config.denoiser,
            ),  # fmt: skip
            store,
            suite.tasksets(first),
        )
        one_pass["hypernetwork"] = OnePassHypernetwork.like(paper[0])
        start = time.perf_counter()
        one_pass["hypernetwork"].fit(data, num_steps=config.hypernetwork_steps, seed=seed, progress=progress)
        training["hypernetwork"] = {"train_seconds": time.perf_counter() - start}
    functional = "mcdi" + FUNCTIONAL
    if functional in generators:  # the one-pass functional baseline, anchored alike, with the same budget of passes
        pipeline = config.pipeline(functional, suite.feature_dim, suite.name, seed)
        _, data = build_generator(pipeline, store, suite.tasksets(first))
        steps = config.functional.passes(pipeline.meta, pipeline.chain)
        one_pass["hypernetwork_sft"] = OnePassHypernetwork.like(generators[functional].generator)
        start = time.perf_counter()
        one_pass["hypernetwork_sft"].fit_functional(
            data, list(suite.train), steps, pipeline.meta.meta_batch_size, seed=seed, progress=progress,
            checkpoint_dir=run_dir / "hypernetwork_sft",
        )  # fmt: skip
        training["hypernetwork_sft"] = {"train_seconds": time.perf_counter() - start, "steps": steps}

    reptile = ReptileHeadInit(suite.feature_dim, ReptileHeadConfig(**{**config.reptile.to_dict(), "seed": seed}))
    g = torch.Generator().manual_seed(seed)

    def reptile_batch(step: int) -> EpisodeBatch:
        idx = torch.randint(len(suite.train), (config.reptile.meta_batch_size,), generator=g).tolist()
        return EpisodeBatch.stack([suite.train[i] for i in idx], pool=True)

    start = time.perf_counter()
    reptile.meta_train(reptile_batch)
    training["reptile"] = {"train_seconds": time.perf_counter() - start}

    raw, conditions = load_raw_targets(store, [t.task_id for t in suite.train], 1)
    zoo_rows = _rows_of({k: v[:, 0] for k, v in raw.items()}).flatten(0, 1)  # (tasks·N, d + 1): final heads
    zoo_conditions = conditions.flatten(0, 1)  # (tasks·N, d): the prototypes they were conditioned on
    settings = {}
    for setting, episodes in suite.tests.items():
        settings[setting] = evaluate_setting(
            EpisodeBatch.stack(episodes), generators, one_pass, reptile, zoo_rows, zoo_conditions, config
        )
        ranked = sorted(settings[setting]["accuracy"].items(), key=lambda kv: -kv[1])
        log(f"{setting}: " + ", ".join(f"{k} {v:.4f}" for k, v in ranked))
    # The Mc-Di generators of this run (paper and functional), with their cards and the suite's feature extractor
    # (what McDiHeadConfig.generator_name_or_path and McDiHeadModel.from_generator point at).
    generator_dirs = {}
    sampling = f"mean of {config.num_samples}, guidance {config.guidance_scale}"
    for name in (n for n in MATCHED if n in generators):
        generator = generators[name].generator
        generator.config.metadata.update(
            base_model=suite.info.get("backbone"),
            results={f"{k} accuracy ({sampling})": f"{v['accuracy'][name]:.4f}" for k, v in settings.items()},
            latency_ms=settings[first]["cost"][name]["ms_per_episode_median"],
        )
        generator_dirs[name] = str(run_dir / f"{name}_generator")
        generator.save_pretrained(generator_dirs[name])
        if suite.feature_extractor is not None:  # McDiHeadModel.from_generator(folder) then takes raw images
            suite.feature_extractor.save_pretrained(generator_dirs[name])
    pca = (
        sampling_picture(EpisodeBatch.stack(suite.tests[first]), generators["mcdi"], config)
        if "mcdi" in generators
        else None
    )
    result = {
        "generator_dir": generator_dirs.get("mcdi"),
        "generator_dirs": generator_dirs,
        "pca": pca,
        "suite": suite.name,
        "seed": seed,
        "suite_config": suite.config,
        "bench_config": config.to_dict(),
        "num_train_episodes": len(suite.train),
        "zoo_seconds": zoo_seconds,
        "training": training,
        "settings": settings,
        "seconds": time.perf_counter() - began,  # the whole run, wherever it ran (a worker process, another day)
    }
    atomic_write_text(run_dir / RESULT_NAME, json.dumps(result, indent=1))
    return result
