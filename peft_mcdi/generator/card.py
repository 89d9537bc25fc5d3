"""Model cards for generators, written from the generator's own metadata (never from hand-typed numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from peft_mcdi.utils import atomic_write_text


TAGS = ["peft", "mcdi", "lora", "weight-generation"]


def generator_card(generator, repo_id: str | None = None) -> str:
    """Markdown with YAML front matter. Reads ``generator.config.metadata``: ``base_model``, ``target_modules``,
    ``r``, ``task_encoder``, ``taskset``/``num_train_tasks``, ``licenses`` ({name: licence}), ``results``
    ({metric: value}) and ``latency_ms``, whichever are present."""
    meta = generator.config.metadata
    sched = generator.scheduler.config
    heads = generator.codec.row_tokens  # a head generator: class rows from the prototypes of a support set
    tags = [*TAGS[:2], "image-classification", TAGS[-1]] if heads else TAGS
    front = {"library_name": "peft_mcdi", "tags": tags, "license": meta.get("license", "apache-2.0")}
    if meta.get("base_model"):
        front["base_model"] = meta["base_model"]
    name = repo_id or meta.get("name", "path/to/generator")
    params = sum(p.numel() for p in generator.denoiser.parameters())
    title = f"# Mc-Di {'head' if heads else 'weight'} generator"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        title + (f" for {meta['base_model']}" if meta.get("base_model") else ""),
        "",
        "A conditional diffusion model that *generates* "
        + ("a linear classifier head for a frozen backbone from a labelled support set (one row per class, from its "
           "prototype)" if heads else "adapter weights for a new task from its description")
        + ", with no gradient step (Mc-Di: local consistency diffusion + Reptile, Guan et al., CVPR 2026).",
        "",
        "| | |",
        "|---|---|",
        f"| {'backbone' if heads else 'base model'} | {meta.get('base_model', 'n/a')} |",
    ]  # fmt: skip
    if heads:
        lines.append(f"| generated parameters | {generator.codec.unit_dim:,} per class (weight row and bias) |")
    else:
        lines += [
            f"| target modules | {', '.join(meta['target_modules']) if meta.get('target_modules') else 'n/a'} |",
            f"| LoRA rank | {meta.get('r', 'n/a')} |",
            f"| generated parameters | {generator.codec.unit_dim:,} ({len(generator.codec.shapes)} tensors) |",
        ]
    lines += [
        f"| generator parameters | {params:,} ({generator.config.denoiser.type} denoiser) |",
        f"| training tasks | {meta.get('num_train_tasks', 'n/a')} ({meta.get('taskset', 'unknown kind')}) |",
    ]
    if not heads:
        lines.append(f"| task encoder | {meta.get('task_encoder', 'n/a')} |")
    lines += [
        f"| diffusion | T = {sched.num_train_timesteps}, k = {sched.num_segments} local targets, "
        f"{generator.config.loss_variant} loss, {sched.beta_schedule} β, {sched.prediction_type}-prediction |",
        f"| sampler | DDPM, {sched.num_train_timesteps} steps (DDIM with fewer steps available) |",
    ]
    if meta.get("feature_extractor"):
        fx = meta["feature_extractor"]
        projection = (
            f", projected on {fx['projection_dim']} source principal components" if fx["projection_dim"] else ""
        )
        lines.append(
            f"| features | {fx['backbone']} at {fx['image_size']} px{projection} (saved with the generator) |"
        )
    if meta.get("latency_ms") is not None:
        lines.append(f"| generation latency (median) | {meta['latency_ms']:.2f} ms |")
    for metric, value in (meta.get("results") or {}).items():
        lines.append(f"| {metric} | {value} |")
    if meta.get("heldout"):
        lines += ["", f"Held-out tasks: {meta['heldout']['split']}."]
    if meta.get("licenses"):
        lines += ["", "## Licences of the models and data used", ""]
        lines += [f"- {what}: {licence}" for what, licence in meta["licenses"].items()]
    if meta.get("train_tasks"):
        lines += ["", "## Training tasks", "", f"<details><summary>{len(meta['train_tasks'])} tasks</summary>", ""]
        lines += [", ".join(meta["train_tasks"]), "", "</details>"]
    if generator.codec.row_tokens and meta.get("feature_extractor"):  # a head generator that carries its backbone
        usage = head_model_usage(name, meta)
    elif generator.codec.row_tokens:  # a head generator: conditioned on class prototypes of a frozen backbone
        usage = [
            "from peft_mcdi.tuners.head import McDiHeadConfig, McDiHeadModel",
            "",
            f'model = McDiHeadModel(backbone, McDiHeadConfig(generator_name_or_path="{name}"))',
            "model.adapt(support_images, support_labels)  # a linear head, no gradient step",
            "logits = model(query_images)",
        ]
    elif meta.get("base_model") and meta.get("task_type"):  # everything AutoMcDiModel needs is in the metadata
        usage = auto_model_usage(name, meta)
    else:
        usage = [
            "import peft_mcdi",
            "from peft import get_peft_model",
            "",
            f"model = get_peft_model(base_model, peft_mcdi.McDiConfig(r={meta.get('r', 8)}, "
            f"target_modules={json.dumps(meta.get('target_modules') or ['q_proj', 'v_proj'])}, "
            f'generator_name_or_path="{name}"))',
            'info = model.adapt("Describe the task in one sentence.")',
        ]
    lines += ["", "## Usage", "", "```python", *usage, "```", ""]
    return "\n".join(lines)


def head_model_usage(name: str, meta: dict) -> list[str]:
    """The card's snippet for a head generator saved with its feature extractor: raw images in; with the held-out
    episode shipped beside it when there is one, so that the snippet runs as written (tests run it)."""
    example = bool(meta.get("example_episode"))
    lines = ["from peft_mcdi.shipped import example_episode"] if example else []
    lines += ["from peft_mcdi.tuners.head import McDiHeadModel", ""]
    if example:
        lines.append(f'support_images, support_labels, query_images, query_labels = example_episode("{name}")')
    lines += [
        f'model = McDiHeadModel.from_generator("{name}")  # with the backbone it was trained on',
        "model.adapt(support_images, support_labels)  # a linear head from raw images, no gradient step",
        "predicted = model(query_images).argmax(-1)",
    ]
    if example:
        lines.append('print(f"accuracy {(predicted == query_labels).float().mean():.3f}")')
    return lines


def auto_model_usage(name: str, meta: dict) -> list[str]:
    """The card's snippet for a LoRA generator whose metadata names its base: one call to a ready model, then the
    inputs in the generator's template (tests run it as written)."""
    example = meta.get("example") or {"prompt": "Describe the task in one sentence.", "inputs": ["an input"]}
    lines = [
        "from peft_mcdi import AutoMcDiModel",
        "",
        f'model = AutoMcDiModel.from_generator("{name}")  # the base model, tokenizer and input template',
        f"prompt = {json.dumps(example['prompt'], ensure_ascii=False)}",
        "model.adapt(prompt)  # the LoRA weights are generated: no gradient step",
        f"words = {json.dumps(example['inputs'], ensure_ascii=False)}",
        "inputs = model.tokenizer([model.input_template.format(input=w) for w in words], padding=True, "
        'return_tensors="pt")',
    ]
    if str(meta["task_type"]).upper() == "SEQ_CLS":
        lines += [
            "predicted = model(**inputs).logits.argmax(-1).tolist()",
            "print({w: model.config.id2label[p] for w, p in zip(words, predicted)})",
        ]
    else:
        lines += [
            "answers = model.generate(**inputs, max_new_tokens=8, do_sample=False)",
            'new = answers[:, inputs["input_ids"].shape[1] :]',
            "print(model.tokenizer.batch_decode(new, skip_special_tokens=True))",
        ]
    return lines


_SECTION_BEGIN, _SECTION_END = "<!-- mcdi:begin -->", "<!-- mcdi:end -->"


def adapter_card(config, existing: str | None = None, exported_as_lora: bool = False) -> str:
    """The card of a *generated* adapter: peft's card (``existing``, when peft wrote one) with the Mc-Di tags and,
    on top, a section recording where the weights came from (``config.provenance``) and how to load or export them.
    The section sits between markers, so saving again replaces it instead of appending a second copy."""
    from huggingface_hub import ModelCard, ModelCardData

    card = ModelCard(existing) if existing else ModelCard.from_template(ModelCardData())
    card.data["library_name"] = card.data.get("library_name") or "peft"
    card.data["tags"] = sorted(set(card.data.get("tags") or []) | set(TAGS))
    if config.base_model_name_or_path and not card.data.get("base_model"):
        card.data["base_model"] = config.base_model_name_or_path
    provenance = config.provenance or {}
    rows = [
        ("base model", config.base_model_name_or_path or "n/a"),
        ("target modules", ", ".join(sorted(config.target_modules)) if config.target_modules else "n/a"),
        ("LoRA rank / alpha", f"{config.r} / {config.lora_alpha}"),
        ("task prompt", provenance.get("prompt") or ("(embedding)" if provenance else "not generated yet")),
        ("seed", provenance.get("seed", "n/a")),
        ("generator", provenance.get("generator") or config.generator_name_or_path or "n/a"),
        ("generator revision", provenance.get("generator_revision") or "n/a"),
        ("generator sha256", provenance.get("generator_sha256") or "n/a"),
        ("sampler", f"{config.sampler}, {config.num_sampling_steps or config.num_train_timesteps} steps"),
        (
            "peft_mcdi version / format",
            f"{provenance.get('peft_mcdi_version', 'n/a')} / {provenance.get('format_version', 'n/a')}",
        ),
    ]
    if exported_as_lora:
        usage = [
            "from peft import PeftModel",
            "",
            'model = PeftModel.from_pretrained(base_model, "path/to/this/adapter")  # a plain LoRA adapter',
        ]
    else:
        usage = [
            "import peft_mcdi  # registers the MCDI PEFT type",
            "from peft import PeftModel",
            "",
            'model = PeftModel.from_pretrained(base_model, "path/to/this/adapter")',
            'model.adapt("Another task, in one sentence.")  # when the generator above can be resolved',
            'peft_mcdi.export_lora(model, "plain-lora")  # for runtimes that only know LORA',
        ]
    section = [
        _SECTION_BEGIN,
        "## Generated adapter (Mc-Di)",
        "",
        "These LoRA weights were *generated* from a task prompt by a Mc-Di weight generator, with no gradient step on "
        "the task" + (", and exported as a plain LoRA adapter." if exported_as_lora else "."),
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        "```python",
        *usage,
        "```",
        _SECTION_END,
    ]
    text = card.text
    if _SECTION_BEGIN in text and _SECTION_END in text:
        before, rest = text.split(_SECTION_BEGIN, 1)
        text = before.rstrip() + "\n\n" + "\n".join(section) + rest.split(_SECTION_END, 1)[1]
    else:
        text = "\n".join(section) + "\n\n" + text.lstrip()  # first, above peft's template
    return f"---\n{card.data.to_yaml()}\n---\n{text}"


def write_adapter_card(folder: Path, config, exported_as_lora: bool = False) -> None:
    """Create or refresh ``folder/README.md`` with :func:`adapter_card` (atomic; keeps what peft wrote)."""
    path = Path(folder) / "README.md"
    existing = path.read_text(encoding="utf-8") if path.is_file() else None
    atomic_write_text(path, adapter_card(config, existing, exported_as_lora))
