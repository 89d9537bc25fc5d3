"""The ``mcdi`` command line: collect a trajectory zoo, train a generator, generate an adapter, evaluate, benchmark,
write a generator's model card.

    mcdi train --config examples/configs/logistic.yaml meta.num_outer_steps=300 output_dir=runs/x
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        -m peft_mcdi.cli train --config ...     # the same, sharded over 2 processes (CPU over gloo, or 2 GPUs)
    mcdi generate --generator runs/x/generator "Decide whether the word names a fish." --out adapters/fish
    mcdi eval --generator runs/x/generator --config examples/configs/logistic.yaml
    mcdi bench --run-dir runs/x          # pictures (PNG) and results.md next to runs/x/results.json
    mcdi bench --generator runs/x/generator
    mcdi card --generator runs/x/generator

A user mistake (a missing file, a generator that does not fit the base model, an unknown config key) prints one
line on stderr and exits with status 1 (2 for a malformed command line); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml


# Errors that come from what the user typed or pointed at; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, yaml.YAMLError, FloatingPointError, ImportError)


class CommandError(ValueError):
    """A user mistake detected by the CLI itself."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a malformed command line is one line (not usage + error) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_CONFIG_EPILOG = """\
The configuration is a YAML file (--config) whose keys are listed below, then KEY=VALUE overrides (dotted keys for
sections, values in YAML syntax). Omitted keys keep their defaults; an unknown key is refused with the allowed ones.

config keys:
{keys}
"""


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="run configuration file (default: built-in defaults)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. meta.num_outer_steps=50"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration as YAML and exit (a dry run)"
    )


def build_parser(prog: str = "mcdi") -> argparse.ArgumentParser:
    from peft_mcdi.train import config_help

    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=prog, description=__doc__.split("\n\n")[0], formatter_class=fmt)
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    epilog = _CONFIG_EPILOG.format(keys=config_help())

    p = sub.add_parser(
        "collect",
        help="collect the trajectory zoo (sharded over accelerate processes, resumable)",
        description="Train every task of the configured task family with Adam+SAM and record its trajectory into "
        "the zoo (zoo_dir, or the cache keyed by a hash of the task family and recorder). Finished tasks are "
        "skipped, so rerunning after an interruption continues. Under accelerate launch, process r collects tasks "
        "r, r+N, ... (each task once).",
        epilog=epilog,
        formatter_class=fmt,
    )
    _add_config_arguments(p)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser(
        "train",
        help="the whole pipeline: collect → meta-train → evaluate → save generator and results.json",
        description="Collect the zoo, meta-train a Mc-Di generator (Reptile or single-level), evaluate it on the "
        "held-out tasks beside the baselines and write <output_dir>/generator and <output_dir>/results.json. Works "
        "unchanged under accelerate launch (one or several processes; meta-batches are spread over processes with "
        "the same result as one process). Rerunning the same command after a kill continues: finished zoo tasks are "
        "not recollected and meta-training resumes from the last checkpoint (set meta.checkpoint_every).",
        epilog=epilog,
        formatter_class=fmt,
    )
    _add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "generate",
        help="generate an adapter for a task prompt (no gradient step) and save it",
        description="Load a generator, build the base model named in its metadata (or --base-model) with an MCDI "
        "adapter, generate the LoRA for the task prompt and save it with save_pretrained (loadable with "
        "PeftModel.from_pretrained after `import peft_mcdi`), or as a plain LoRA adapter with --export-lora. "
        "Generators without a base model (e.g. the logistic family) write the generated tensors to "
        "OUT/generated.safetensors instead; give their condition with --condition.",
        formatter_class=fmt,
    )
    p.add_argument("prompt", nargs="?", help="the task prompt (omit when --condition is given)")
    p.add_argument("--generator", required=True, metavar="PATH_OR_HUB_ID", help="generator folder or Hub id")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the adapter (or tensors) to")
    p.add_argument("--base-model", metavar="ID", help="base model (default: the one in the generator's metadata)")
    p.add_argument("--export-lora", action="store_true", help="write a plain LoRA adapter (peft_type LORA)")
    p.add_argument(
        "--condition", metavar="FLOATS", help="the condition vector itself, comma-separated (skips the encoder)"
    )
    p.add_argument("--task-encoder", help="sentence encoder for the prompt (default: the generator's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generation noise (default 0)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm", help="sampler (default ddpm)")
    p.add_argument("--num-steps", type=int, help="denoising steps (default: all T of the generator)")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (default 1: off)")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="scale of the generation noise (default 1; 0: deterministic)"
    )
    p.add_argument("--revision", help="Hub revision of the generator")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "eval",
        help="evaluate a saved generator on the configured task family's held-out tasks",
        description="Generate weights for the held-out tasks of the configured task family and print their metric "
        "beside θ₀, the mean of the zoo, the nearest training task and the per-task fine-tuned reference (the zoo "
        "is collected first where tasks are missing). Use the config the generator was trained with.",
        epilog=epilog,
        formatter_class=fmt,
    )
    p.add_argument("--generator", required=True, metavar="PATH_OR_HUB_ID", help="generator folder or Hub id")
    p.add_argument("--out", metavar="JSON", help="also write the results to this file")
    _add_config_arguments(p)
    p.set_defaults(func=cmd_eval)

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

    p = sub.add_parser(
        "card",
        help="write or refresh a generator's model card (README.md) from its metadata and results",
        description="Render GENERATOR/README.md from the generator's metadata (base model, target modules, rank, "
        "training tasks, diffusion settings) and, when found, a results.json (held-out metric per method, "
        "generation latency): --results, else GENERATOR/results.json, else GENERATOR/../results.json (the layout "
        "that `mcdi train` writes).",
        formatter_class=fmt,
    )
    p.add_argument("--generator", required=True, metavar="DIR", help="local generator folder")
    p.add_argument("--results", metavar="JSON", help="results file (default: found next to the generator)")
    p.add_argument("--repo-id", help="Hub id to show in the usage snippet")
    p.set_defaults(func=cmd_card)
    return parser


def _version() -> str:
    from peft_mcdi import __version__

    return __version__


# ------------------------------------------------------------------------------------------------------ commands
def _load_run_config(args):
    from peft_mcdi.train import dump_config, load_config

    config, train_args = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(config, train_args), end="")
        return None
    return config, train_args


def cmd_collect(args) -> int:
    loaded = _load_run_config(args)
    if loaded is None:
        return 0
    from peft_mcdi.train import run_training

    out = run_training(*loaded, stage="collect")
    if out:
        print(f"zoo: {out['zoo']}")
    return 0


def cmd_train(args) -> int:
    loaded = _load_run_config(args)
    if loaded is None:
        return 0
    from peft_mcdi.train import run_training

    run_training(*loaded)
    return 0


def load_generator(name_or_path: str, revision: str | None = None, device: str = "cpu"):
    """A generator from a folder or a Hub id; a path that does not exist is a clear error, not a Hub lookup."""
    from peft_mcdi.generator.model import McDiGenerator

    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") != 1
    if not path.exists() and looks_local:
        raise FileNotFoundError(f"no generator folder at {name_or_path} (and it is not a Hub id like 'owner/name')")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name_or_path} is a file; --generator takes the generator's folder")
    return McDiGenerator.from_pretrained(
        str(path) if path.exists() else name_or_path, revision=revision, device=device
    )


def _parse_condition(text: str, generator):
    import torch

    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise CommandError(f"--condition must be comma-separated numbers, got {text!r}") from err
    width = generator.config.denoiser.condition_dim
    if len(values) != width:
        raise CommandError(f"--condition has {len(values)} values; the generator expects conditions of width {width}")
    return torch.tensor(values)


def _build_base_model(base: str, meta: dict):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from peft_mcdi.data.offline_models import resolve_pretrained

    path = resolve_pretrained(base)
    if str(meta.get("task_type", "")).upper() == "SEQ_CLS":
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=int(meta.get("num_labels", 2)))
    return AutoModelForCausalLM.from_pretrained(path)


def cmd_generate(args) -> int:
    import torch
    from peft import get_peft_model
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    import peft_mcdi
    from peft_mcdi.generator.condition import DEFAULT_TEXT_ENCODER, TextEncoder
    from peft_mcdi.utils import atomic_write, atomic_write_text

    if (args.prompt is None) == (args.condition is None):
        raise CommandError("give exactly one of a task prompt or --condition")
    hf_logging.disable_progress_bar()  # the command prints one summary line, not weight-loading bars
    generator = load_generator(args.generator, args.revision)
    meta = generator.config.metadata
    sched = generator.scheduler.config
    if args.num_steps is not None and not 1 <= args.num_steps <= sched.num_train_timesteps:
        raise CommandError(f"--num-steps must be in [1, {sched.num_train_timesteps}] for this generator")
    encoder_name = args.task_encoder or meta.get("task_encoder") or DEFAULT_TEXT_ENCODER
    encoder = None
    if args.condition is not None:
        condition = _parse_condition(args.condition, generator)
    else:
        encoder = TextEncoder(encoder_name)
        condition = encoder.encode([args.prompt])[0]
        width = generator.config.denoiser.condition_dim
        if condition.shape[-1] != width:
            raise CommandError(
                f"the prompt embedding ({encoder_name}) has width {condition.shape[-1]} but the generator expects "
                f"{width}; this generator takes --condition (it was trained on {meta.get('taskset', 'unknown')})"
            )
    out = Path(args.out)
    base = args.base_model or meta.get("base_model")
    if base is None:
        if args.export_lora:
            raise CommandError("--export-lora needs a LoRA generator with a base model (metadata or --base-model)")
        weights = generator.generate(
            condition[None],
            seed=args.seed,
            guidance_scale=args.guidance_scale,
            temperature=args.temperature,
            **_sampling(args),
        )
        tensors = {k: v[0].contiguous() for k, v in weights.items()}
        atomic_write(out / "generated.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        record = {
            "generator": args.generator,
            "prompt": args.prompt,
            "condition": condition.tolist(),
            "seed": args.seed,
            "sampler": args.sampler,
            "num_steps": args.num_steps,
            "guidance_scale": args.guidance_scale,
            "temperature": args.temperature,
            "peft_mcdi_version": peft_mcdi.__version__,
        }
        atomic_write_text(out / "generation.json", json.dumps(record, indent=2))
        print(f"wrote {len(tensors)} generated tensors to {out / 'generated.safetensors'} (no base model)")
        return 0

    if generator.codec.row_tokens:
        raise CommandError("this generator produces classifier-head rows, not a LoRA adapter for a base model")
    if not meta.get("target_modules"):
        raise CommandError("the generator's metadata names no target_modules; it cannot be applied to a base model")
    extra = {"lora_alpha": meta["lora_alpha"]} if meta.get("lora_alpha") is not None else {}
    config = peft_mcdi.McDiConfig(
        r=int(meta.get("r", 8)),
        **extra,
        target_modules=list(meta["target_modules"]),
        task_type=meta.get("task_type"),
        generator_name_or_path=args.generator,
        generator_revision=args.revision,
        task_encoder=encoder_name,
        sampler=args.sampler,
        num_sampling_steps=args.num_steps,
        guidance_scale=args.guidance_scale,
        temperature=args.temperature,
        seed=args.seed,
        num_train_timesteps=sched.num_train_timesteps,
        num_segments=sched.num_segments,
    )
    torch.manual_seed(0)  # the base model's freshly initialised parts (none for a complete checkpoint)
    model = get_peft_model(_build_base_model(base, meta), config)
    model.base_model.attach_generator(generator)  # says what differs when the base model is not the right one
    if encoder is not None:
        model.base_model._mcdi_encoders[encoder_name] = encoder  # already loaded above: reuse it
    info = model.adapt(args.prompt) if args.prompt is not None else model.adapt(embedding=condition)
    if args.export_lora:
        peft_mcdi.export_lora(model, out)
        kind = "plain LoRA adapter (peft_type LORA)"
    else:
        model.save_pretrained(out)
        kind = "MCDI adapter (load with PeftModel.from_pretrained after `import peft_mcdi`)"
    print(
        f"wrote {kind} for {base} to {out}: encoder {info.encoder_ms:.1f} ms, generator {info.generator_ms:.1f} ms, "
        f"nearest training task at distance {info.nearest_training_distance[0]:.3f}"
    )
    return 0


def _sampling(args) -> dict:
    return {"sampler": args.sampler, "num_inference_steps": args.num_steps}


def check_generator_fits(generator, store, tasksets) -> None:
    """A ValueError that says what differs when ``generator`` was not trained for this task family."""
    first = store.read(tasksets.train[0].task_id)
    shapes = {n: list(v.shape[1:]) for n, v in first.params.items()}
    theirs = {n: list(s) for n, s in generator.codec.shapes.items()}
    if shapes != theirs:
        raise CommandError(
            f"the generator writes tensors {_brief(theirs)} but tasks of this task set have {_brief(shapes)}; "
            "use the config it was trained with"
        )
    width = tasksets.test[0].condition.shape[-1]
    if width != generator.config.denoiser.condition_dim:
        raise CommandError(
            f"the generator takes conditions of width {generator.config.denoiser.condition_dim}, this task set's "
            f"are {width} wide; use the config it was trained with"
        )


def _brief(shapes: dict) -> str:
    items = list(shapes.items())
    text = ", ".join(f"{n} {s}" for n, s in items[:3])
    return "{" + text + (f", … ({len(items)} in all)" if len(items) > 3 else "") + "}"


def cmd_eval(args) -> int:
    loaded = _load_run_config(args)
    if loaded is None:
        return 0
    config, train_args = loaded
    from peft_mcdi.pipeline import build_tasksets, evaluate_heldout, format_results, prepare_zoo
    from peft_mcdi.utils import atomic_write_text

    generator = load_generator(args.generator)
    tasksets = build_tasksets(config)
    store, _ = prepare_zoo(config, tasksets, progress=train_args.progress)
    check_generator_fits(generator, store, tasksets)
    results = evaluate_heldout(generator, store, tasksets, config)
    results.update(generator=args.generator, config=config.to_dict())
    print(format_results(results))
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2, default=str))
        print(f"results: {args.out}")
    return 0


def cmd_bench(args) -> int:
    if args.engine:
        script = Path(__file__).resolve().parents[1] / "benchmarks" / "engine.py"
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

    from peft_mcdi.evaluation import median_ms

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
            generator.generate_vectors(condition, seed=0, **_sampling(args))
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

    from peft_mcdi import plots
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


def find_results(generator_dir: Path, explicit: str | None) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"results file {explicit} does not exist")
        return path
    for candidate in (generator_dir / "results.json", generator_dir.parent / "results.json"):
        if candidate.is_file():
            return candidate
    return None


def cmd_card(args) -> int:
    from peft_mcdi.generator.model import CARD_NAME
    from peft_mcdi.pipeline import render_generator_card
    from peft_mcdi.utils import atomic_write_text

    folder = Path(args.generator)
    if not folder.is_dir():
        raise FileNotFoundError(f"no generator folder at {args.generator}")
    generator = load_generator(str(folder))
    results_path = find_results(folder, args.results)
    results = None
    if results_path is not None:
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CommandError(f"{results_path} is not valid JSON ({err})") from err
        if not isinstance(results, dict) or "heldout_metric" not in results:
            raise CommandError(
                f"{results_path} is not a results file of `mcdi train` / `mcdi eval` (no heldout_metric)"
            )
    atomic_write_text(folder / CARD_NAME, render_generator_card(generator, results, args.repo_id))
    print(f"wrote {folder / CARD_NAME}" + (f" with the results of {results_path}" if results_path else ""))
    return 0


# ------------------------------------------------------------------------------------------------------------ main
def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror and err.filename:
        text = f"{err.strerror}: {err.filename}"
    return text


def main(argv: list[str] | None = None, prog: str = "mcdi") -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, malformed command lines
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    debug = args.debug or os.environ.get("MCDI_DEBUG") == "1"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"{prog} {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
