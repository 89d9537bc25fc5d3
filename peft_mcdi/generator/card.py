"""Model cards for generators, written from the generator's own metadata (never from hand-typed numbers)."""

from __future__ import annotations

import json

import yaml


TAGS = ["peft", "mcdi", "lora", "weight-generation"]


def generator_card(generator, repo_id: str | None = None) -> str:
    """Markdown with YAML front matter. Reads ``generator.config.metadata``: ``base_model``, ``target_modules``,
    ``r``, ``task_encoder``, ``taskset``/``num_train_tasks``, ``licenses`` ({name: licence}), ``results``
    ({metric: value}) and ``latency_ms``, whichever are present."""
    meta = generator.config.metadata
    sched = generator.scheduler.config
    front = {"library_name": "peft_mcdi", "tags": TAGS, "license": meta.get("license", "apache-2.0")}
    if meta.get("base_model"):
        front["base_model"] = meta["base_model"]
    name = repo_id or meta.get("name", "path/to/generator")
    params = sum(p.numel() for p in generator.denoiser.parameters())
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# Mc-Di weight generator{' for ' + meta['base_model'] if meta.get('base_model') else ''}",
        "",
        "A conditional diffusion model that *generates* adapter weights for a new task from its description, with no "
        "gradient step (Mc-Di: local consistency diffusion + Reptile, Guan et al., CVPR 2026).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {meta.get('base_model', 'n/a')} |",
        f"| target modules | {', '.join(meta['target_modules']) if meta.get('target_modules') else 'n/a'} |",
        f"| LoRA rank | {meta.get('r', 'n/a')} |",
        f"| generated parameters | {generator.codec.unit_dim:,} ({len(generator.codec.shapes)} tensors) |",
        f"| generator parameters | {params:,} ({generator.config.denoiser.type} denoiser) |",
        f"| training tasks | {meta.get('num_train_tasks', 'n/a')} ({meta.get('taskset', 'unknown kind')}) |",
        f"| task encoder | {meta.get('task_encoder', 'n/a')} |",
        f"| diffusion | T = {sched.num_train_timesteps}, k = {sched.num_segments} local targets, "
        f"{generator.config.loss_variant} loss, {sched.beta_schedule} β |",
        f"| sampler | DDPM, {sched.num_train_timesteps} steps (DDIM with fewer steps available) |",
    ]
    if meta.get("latency_ms") is not None:
        lines.append(f"| generation latency (median) | {meta['latency_ms']:.2f} ms |")
    for metric, value in (meta.get("results") or {}).items():
        lines.append(f"| {metric} | {value} |")
    if meta.get("licenses"):
        lines += ["", "## Licences of the models and data used", ""]
        lines += [f"- {what}: {licence}" for what, licence in meta["licenses"].items()]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import peft_mcdi",
        "from peft import get_peft_model",
        "",
        f"model = get_peft_model(base_model, peft_mcdi.McDiConfig(r={meta.get('r', 8)}, "
        f"target_modules={json.dumps(meta.get('target_modules') or ['q_proj', 'v_proj'])}, "
        f'generator_name_or_path="{name}"))',
        'info = model.adapt("Describe the task in one sentence.")',
        "```",
        "",
    ]
    return "\n".join(lines)
