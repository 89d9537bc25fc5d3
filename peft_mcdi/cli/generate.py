"""`mcdi generate`: an adapter for a task prompt (or a condition vector), saved as MCDI or plain LoRA."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peft_mcdi.cli.common import CommandError, load_generator, sampling_options


def add_parser(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
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


def cmd_generate(args) -> int:
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    import peft_mcdi
    from peft_mcdi.auto import model_for_generator
    from peft_mcdi.generator.condition import DEFAULT_TEXT_ENCODER, TextEncoder
    from peft_mcdi.utils import atomic_write, atomic_write_text, check_local_or_hub

    if (args.prompt is None) == (args.condition is None):
        raise CommandError("give exactly one of a task prompt or --condition")
    if args.prompt is not None and not args.prompt.strip():
        raise CommandError("the task prompt is empty: describe the task, e.g. 'Decide whether the word names a fish.'")
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
            **sampling_options(args),
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
    check_local_or_hub(base, "--base-model")
    model = model_for_generator(
        generator,
        args.generator,
        args.revision,
        base,
        with_tokenizer=False,
        task_encoder=encoder_name,
        sampler=args.sampler,
        num_sampling_steps=args.num_steps,
        guidance_scale=args.guidance_scale,
        temperature=args.temperature,
        seed=args.seed,
    )
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
