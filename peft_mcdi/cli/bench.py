"""`mcdi bench`: pictures and results.md of a trained run, a generator's latency and throughput, or the engine
benchmark of a source checkout."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from peft_mcdi.cli.common import CommandError, load_generator, sampling_options
from peft_mcdi.cli.training import check_generator_fits


def add_parser(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "bench",
        help="pictures and results.md of a trained run, latency/throughput of a generator, or the engine benchmark",
        description="With --run-dir (the output_dir of `mcdi train`): time the run's generator and write, next to "
        "its results.json, three PNG pictures and a results.md that shows them: metric_vs_time.png (held-out "
        "metric of every method against the time to produce one task's weights), finetune_curves.png (fine-tuning "
        "held-out tasks from θ₀ and from the generated weights, with the generated weights' metric as a line) and "
        "sampling_pca.png (sampling chains of held-out tasks against the zoo's trajectory checkpoints, PCA); the "
        "numbers behind them go to bench.json. The run's config and zoo are used (the zoo must still be there). "
        "With --generator: median generation time for each batch size (random conditions of the generator's "
        "width), per task and in tasks per second. With --engine: run benchmarks/engine.py of the source checkout "
        "(latency, memory and throughput for 1e3-1e6 parameters beside a one-pass hypernetwork; writes "
        "benchmarks/results/engine.{json,md}).",
        formatter_class=fmt,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run-dir", metavar="DIR", help="output_dir of `mcdi train`: pictures, results.md, bench.json")
    what.add_argument("--generator", metavar="PATH_OR_HUB_ID", help="generator folder or Hub id to time")
    what.add_argument("--engine", action="store_true", help="run benchmarks/engine.py from the source checkout")
    p.add_argument("--engine-args", default="", metavar="ARGS", help="arguments for benchmarks/engine.py (quoted)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64], metavar="B", help="default: 1 8 64")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per batch size (default 20)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm", help="sampler (default ddpm)")
    p.add_argument("--num-steps", type=int, help="denoising steps (default: all T)")
    p.add_argument("--num-rows", type=int, default=5, help="class rows for classifier-head generators (default 5)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--num-threads", type=int, metavar="N", help="torch intra-op threads while timing (default: torch's default)"
    )
    p.add_argument(
        "--curve-tasks",
        type=int,
        default=4,
        metavar="N",
        help="--run-dir: held-out tasks fine-tuned for the learning curves (default 4; 0: no curves)",
    )
    p.add_argument(
        "--pca-tasks",
        type=int,
        default=3,
        metavar="N",
        help="--run-dir: held-out tasks whose sampling chains are drawn (default 3; 0: no PCA picture)",
    )
    p.add_argument(
        "--pca-train-tasks",
        type=int,
        default=8,
        metavar="N",
        help="--run-dir: training tasks' trajectories drawn for context, nearest in condition (default 8)",
    )
    p.add_argument("--out", metavar="JSON", help="also write the timing measurements to this file")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    if args.engine:
        script = Path(__file__).resolve().parents[2] / "benchmarks" / "engine.py"
        if not script.is_file():
            raise FileNotFoundError(
                f"{script} not found: the engine benchmark runs from a source checkout of peft_mcdi"
            )
        return subprocess.call([sys.executable, str(script), *shlex.split(args.engine_args)])
    if any(b < 1 for b in args.batch_sizes) or args.repeats < 1:
        raise CommandError("--batch-sizes and --repeats must be positive")
    if min(args.curve_tasks, args.pca_tasks, args.pca_train_tasks) < 0:
        raise CommandError("--curve-tasks, --pca-tasks and --pca-train-tasks must be >= 0")
    if args.num_threads is not None and args.num_threads < 1:
        raise CommandError("--num-threads must be positive")
    import torch

    threads = torch.get_num_threads()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        if args.run_dir is not None:
            return _bench_run_dir(args)

        from peft_mcdi.utils import atomic_write_text

        record = _time_generator(load_generator(args.generator, device=args.device), args)
        record = {"generator": args.generator, **record}
        if args.out:
            atomic_write_text(args.out, json.dumps(record, indent=2))
            print(f"results: {args.out}")
        return 0
    finally:
        torch.set_num_threads(threads)  # leave an in-process caller as it was


def _time_generator(generator, args) -> dict:
    """Median generation time per batch size (printed as a table); the record ``bench.json`` keeps."""
    import torch

    from peft_mcdi.evaluation.metrics import median_ms

    sched = generator.scheduler.config
    if args.num_steps is not None and not 1 <= args.num_steps <= sched.num_train_timesteps:
        raise CommandError(f"--num-steps must be in [1, {sched.num_train_timesteps}] for this generator")
    width = generator.config.denoiser.condition_dim
    per_token = generator.codec.row_tokens and generator.config.denoiser.per_token_condition
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'batch':>6} {'median ms':>10} {'ms / task':>10} {'tasks / s':>10}")
    for batch in args.batch_sizes:
        shape = (batch, args.num_rows, width) if per_token else (batch, width)
        condition = torch.randn(*shape, generator=g).to(args.device)

        def run(condition=condition):
            generator.generate_vectors(condition, seed=0, **sampling_options(args))
            if str(args.device).startswith("cuda"):
                torch.cuda.synchronize()

        ms = median_ms(run, repeats=args.repeats)
        rows.append({"batch_size": batch, "median_ms": ms, "ms_per_task": ms / batch, "tasks_per_s": 1e3 * batch / ms})
        print(f"{batch:>6} {ms:>10.2f} {ms / batch:>10.3f} {1e3 * batch / ms:>10.1f}")
    return {
        "device": args.device,
        "sampler": args.sampler,
        "num_steps": args.num_steps or sched.num_train_timesteps,
        "generated_parameters": generator.codec.unit_dim,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }


def _run_config(run_dir: Path, results: dict):
    """The run's PipelineConfig: its train_config.yaml (written by `mcdi train`), else results.json's config."""
    from peft_mcdi.pipeline import PipelineConfig
    from peft_mcdi.train import load_config

    if (run_dir / "train_config.yaml").is_file():
        return load_config(run_dir / "train_config.yaml")[0]
    if not isinstance(results.get("config"), dict):
        raise CommandError(f"{run_dir} has neither train_config.yaml nor a config in results.json")
    try:
        return PipelineConfig(**results["config"])
    except TypeError as err:
        raise CommandError(f"the config in {run_dir / 'results.json'} does not fit this version ({err})") from err


def _run_zoo(results: dict, config):
    from peft_mcdi.pipeline import zoo_folder
    from peft_mcdi.zoo.store import ZooStore

    root = Path(results["zoo"]) if results.get("zoo") else zoo_folder(config)[0]
    if not (root / "tasks").is_dir():
        root = zoo_folder(config)[0]
    if not (root / "tasks").is_dir():
        raise FileNotFoundError(
            f"the run's zoo is not at {root} (the curves and the PCA need it): rerun `mcdi collect` with the run's "
            "config, or pass --curve-tasks 0 --pca-tasks 0"
        )
    return ZooStore(root)


def _bench_run_dir(args) -> int:
    import torch

    from peft_mcdi.evaluation import plots
    from peft_mcdi.generator.schedulers import local_target_epochs
    from peft_mcdi.pipeline import build_tasksets
    from peft_mcdi.utils import atomic_write_text

    run_dir = Path(args.run_dir)
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} does not exist: --run-dir takes the output_dir of `mcdi train`")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CommandError(f"{results_path} is not valid JSON ({err})") from err
    if not isinstance(results, dict) or "heldout_metric" not in results:
        raise CommandError(f"{results_path} is not a results file of `mcdi train` (no heldout_metric)")
    config = _run_config(run_dir, results)
    generator = load_generator(str(run_dir / "generator"), device=args.device)
    sampling = {
        "sampler": config.sampler,
        "num_inference_steps": config.num_inference_steps,
        "temperature": config.temperature,
    }
    if args.curve_tasks or args.pca_tasks:  # what fails on a user mistake comes before the timing
        store = _run_zoo(results, config)
        tasksets = build_tasksets(config)
        check_generator_fits(generator, store, tasksets)
        test = list(tasksets.test)
    timing = _time_generator(generator, args)

    pictures, curves, pca = {}, None, None
    if args.curve_tasks:
        tasks = test[: args.curve_tasks]
        # the weights evaluate_heldout scored: all held-out conditions, the run's evaluation seed and sampler
        weights = generator.generate(tasksets.test.conditions(), seed=config.eval_seed, **sampling)
        generated = [{n: v[j].cpu() for n, v in weights.items()} for j in range(len(tasks))]
        print(f"fine-tuning {len(tasks)} held-out task(s) from θ₀ and from the generated weights ...", flush=True)
        curves = plots.finetune_curves_data(tasks, generated, config.recorder)
        per_task = results.get("per_task", {})
        levels = {
            name: sum(per_task[name][: len(tasks)]) / len(tasks)
            for name in ("nearest_task", "hypernetwork")
            if len(per_task.get(name, [])) >= len(tasks)
        }
        plots.plot_finetune_curves(curves, run_dir / "finetune_curves.png", levels)
    extra_ms = {"per_task_reference": curves["finetune_ms_median"]} if curves else None
    plots.plot_metric_vs_time(plots.metric_vs_time_data(results, extra_ms), run_dir / "metric_vs_time.png")
    pictures["metric_vs_time"] = "metric_vs_time.png"
    if curves:
        pictures["finetune_curves"] = "finetune_curves.png"
    if args.pca_tasks:
        tasks = test[: args.pca_tasks]
        conditions = torch.stack([t.condition for t in tasks])
        chains = plots.sampling_chains(generator, conditions, seed=config.eval_seed, **sampling)
        steps = generator.scheduler.timesteps_for(config.num_inference_steps)
        train = list(tasksets.train)
        near = _nearest_training_tasks(conditions, tasksets.train.conditions(), args.pca_train_tasks)

        def encode(task_ids):
            trajectories = [store.read(i) for i in task_ids]
            vectors = [
                generator.codec.encode({n: v.to(generator.device) for n, v in t.params.items()}) for t in trajectories
            ]
            return torch.stack(vectors).float().cpu(), trajectories[0].epochs

        heldout, epochs = encode([t.task_id for t in tasks])
        context, _ = encode([train[i].task_id for i in near]) if near else (heldout[:0], epochs)
        targets = local_target_epochs(config.recorder.num_epochs, generator.scheduler.num_segments)
        pca = plots.sampling_pca_data(
            chains,
            heldout,
            context,
            chain_timesteps=[steps[0][0], *(t_prev for _, t_prev in steps)],
            boundaries=generator.scheduler.boundaries.tolist(),
            target_epochs=[epochs.index(e) for e in targets if e in epochs],
        )
        plots.plot_sampling_pca(pca, run_dir / "sampling_pca.png")
        pictures["sampling_pca"] = "sampling_pca.png"

    title = f"Results: {config.taskset} ({run_dir.name})"
    markdown = plots.results_markdown(results, pictures, timing, curves, pca, title=title)
    atomic_write_text(run_dir / "results.md", markdown)
    record = {"timing": timing, "curves": curves, "pca": pca, "pictures": pictures}
    atomic_write_text(run_dir / "bench.json", json.dumps(record, indent=2))
    if args.out:
        atomic_write_text(args.out, json.dumps({"generator": str(run_dir / "generator"), **timing}, indent=2))
    for name in pictures.values():
        print(f"picture: {run_dir / name}")
    print(f"results: {run_dir / 'results.md'}")
    return 0


def _nearest_training_tasks(query, train, n: int) -> list[int]:
    """Indices of the ``n`` training conditions nearest to any query condition (per-token conditions pooled)."""
    import torch

    if n == 0 or len(train) == 0:
        return []

    def pool(c):
        return c.reshape(c.shape[0], -1, c.shape[-1]).mean(1).float()

    distance = torch.cdist(pool(query), pool(train)).min(dim=0).values
    return distance.argsort()[:n].tolist()
