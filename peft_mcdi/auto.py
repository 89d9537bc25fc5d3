"""``AutoMcDiModel``: from a generator's id to a base model with an MCDI adapter, its tokenizer and input template.

A generator's metadata names everything needed to use it (:func:`peft_mcdi.pipeline.adapter_metadata`): the base
model by its Hub id, the task type, target modules, rank and alpha, the task encoder and, for generators that record
them, the input template their training tasks used and the label names. Reading them here means a user needs to know
none of them — the same way ``AutoModel`` reads a checkpoint's ``config.json``.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager

import torch

from peft_mcdi.generator.model import McDiGenerator


DEFAULT_INPUT_TEMPLATE = "{input}"  # generators that record none were trained on the example alone


class AutoMcDiModel:
    """Not instantiated: :meth:`from_generator` returns a ``peft.PeftModel``, as transformers' Auto classes return
    the concrete model."""

    def __init__(self) -> None:
        raise OSError("AutoMcDiModel is built with AutoMcDiModel.from_generator(generator_id), not instantiated.")

    @classmethod
    def from_generator(
        cls,
        generator_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        base_model_name_or_path: str | None = None,
        adapter_name: str = "default",
        **config_kwargs,
    ):
        """The base model named in the generator's metadata (offline copies where installed, else the Hub), with
        an MCDI adapter configured from that metadata and the generator attached; ``model.tokenizer`` and
        ``model.input_template`` (a ``str.format`` pattern with ``{input}``) say how to feed it.

        Args:
            generator_name_or_path: a shipped id (``"peft-mcdi/wordnet-minilm"``), a folder or a Hub repo id.
            revision: Hub revision of the generator.
            base_model_name_or_path: another copy of the base (a local folder, a mirror); it must have the same
                layout, which attaching the generator checks.
            adapter_name: the adapter the generator writes.
            config_kwargs: other ``McDiConfig`` fields (``sampler``, ``seed``, ``temperature``, …).
        """
        generator = McDiGenerator.from_pretrained(generator_name_or_path, revision=revision)
        return model_for_generator(
            generator, str(generator_name_or_path), revision, base_model_name_or_path, adapter_name, **config_kwargs
        )


def model_for_generator(
    generator: McDiGenerator,
    name: str,
    revision: str | None = None,
    base_model_name_or_path: str | None = None,
    adapter_name: str = "default",
    with_tokenizer: bool = True,
    **config_kwargs,
):
    """:meth:`AutoMcDiModel.from_generator` for a generator already loaded from ``name``; ``mcdi generate``, which
    feeds the model no text, skips the tokenizer."""
    from transformers import AutoTokenizer

    from peft_mcdi.models.offline import from_pretrained
    from peft_mcdi.tuners.mcdi import McDiConfig

    meta = generator.config.metadata
    if generator.codec.row_tokens:
        raise ValueError(
            f"{name} generates classifier heads for a vision backbone, not a LoRA adapter: use "
            "peft_mcdi.tuners.head.McDiHeadModel(backbone, McDiHeadConfig(generator_name_or_path=...))."
        )
    missing = [key for key in ("target_modules", "r") if not meta.get(key)]
    base = base_model_name_or_path or meta.get("base_model")
    if base is None:
        missing.append("base_model")
    if missing:
        raise ValueError(
            f"the metadata of generator {name} lacks {missing}, so the model it adapts is unknown; pass "
            "base_model_name_or_path= or build it yourself: get_peft_model(base, McDiConfig(r=..., "
            f"target_modules=[...], generator_name_or_path={name!r}))."
        )
    sched = generator.scheduler.config
    options = {
        "r": int(meta["r"]),
        "target_modules": list(meta["target_modules"]),
        "task_type": meta.get("task_type"),
        "generator_name_or_path": name,
        "generator_revision": revision,
        "num_train_timesteps": sched.num_train_timesteps,
        "num_segments": sched.num_segments,
        **({"lora_alpha": meta["lora_alpha"]} if meta.get("lora_alpha") is not None else {}),
        **({"task_encoder": meta["task_encoder"]} if meta.get("task_encoder") else {}),
        **config_kwargs,
    }
    config = McDiConfig(**options)
    torch.manual_seed(0)  # the base's freshly initialised parts (a classification head), overwritten by adapt()
    model = quiet_get_peft_model(base_model_for(base, meta), config, adapter_name)
    model.base_model.attach_generator(generator, adapter_name)  # says what differs when the base is another one
    model.tokenizer = from_pretrained(AutoTokenizer, base) if with_tokenizer else None
    model.input_template = meta.get("input_template", DEFAULT_INPUT_TEMPLATE)
    return model


def base_model_for(base: str, meta: dict):
    """The base model of a LoRA generator's metadata: a sequence classifier with the generator's labels for
    ``SEQ_CLS``, a causal LM otherwise; refused with the base's own layer names when it lacks the target modules."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from peft_mcdi.models.offline import from_pretrained
    from peft_mcdi.utils import check_local_or_hub

    check_local_or_hub(base, "base model")
    if str(meta.get("task_type", "")).upper() == "SEQ_CLS":
        labels = meta.get("labels") or []  # names of the classes, e.g. ["no", "yes"], where recorded
        names = (
            {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}} if labels else {}
        )
        with quiet_load_report():  # its head is missing from the checkpoint by design: the generator writes it
            model = from_pretrained(
                AutoModelForSequenceClassification, base, num_labels=int(meta.get("num_labels", 2)), **names
            )
    else:
        model = from_pretrained(AutoModelForCausalLM, base)
    check_target_modules(model, base, meta)
    return model


def quiet_get_peft_model(base_model, config, adapter_name: str = "default"):
    """``peft.get_peft_model`` without the FutureWarning that peft 0.21 triggers by reading a property transformers 5
    deprecates (``is_gradient_checkpointing``): not the user's call, and nothing the user can change."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning
        )
        return get_peft_model(base_model, config, adapter_name=adapter_name)


@contextmanager
def quiet_load_report():
    """transformers' load report held back: for a base whose classification head the generator writes, it would
    tell the user to train the head ("MISSING … Consider training on your downstream task")."""
    # the package's logger, not transformers.modeling_utils': a level set on that one makes transformers 5 run (and
    # log) a tensor-parallel check
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_target_modules(model, base: str, meta: dict) -> None:
    """Say what differs when the base has none of the modules the generator writes LoRA for (peft alone would stop
    at "no modules were targeted"); shape differences are ``attach_generator``'s to report."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in meta["target_modules"] if m not in leaves]
    if missing:
        kinds = {"Linear", "Conv1D", "Linear4bit", "Linear8bitLt"}  # the layers LoRA attaches to in such bases
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ in kinds})
        raise ValueError(
            f"the generator writes LoRA for {sorted(meta['target_modules'])} of {meta.get('base_model') or 'its base'}"
            f", but {base} has no module named {missing} (its linear layers: {linear[:8]}); pass the base model the "
            "generator was trained for, or leave the base model to the generator's metadata"
        )
