"""`mcdi collect`, `mcdi train` and `mcdi eval`: the pipeline's stages on a run configuration."""

from __future__ import annotations

import argparse
import json

from peft_mcdi.cli.common import CommandError, add_config_arguments, load_generator, load_run_config


def add_parsers(sub, epilog: str) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
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
    add_config_arguments(p)
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
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)

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
    add_config_arguments(p)
    p.set_defaults(func=cmd_eval)


def cmd_collect(args) -> int:
    loaded = load_run_config(args)
    if loaded is None:
        return 0
    from peft_mcdi.train import run_training

    out = run_training(*loaded, stage="collect")
    if out:
        print(f"zoo: {out['zoo']}")
    return 0


def cmd_train(args) -> int:
    loaded = load_run_config(args)
    if loaded is None:
        return 0
    from peft_mcdi.train import run_training

    run_training(*loaded)
    return 0


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
    loaded = load_run_config(args)
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
