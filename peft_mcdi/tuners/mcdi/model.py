"""``McDiModel``: peft's LoRA tuner whose adapters are written by a generator (``adapt``) rather than trained.

Everything LoRA does keeps working because the layers *are* LoRA layers: merging, several adapters, mixed-adapter
batches, quantized bases. What this class adds is the bridge between a LoRA adapter's parameters and the weight
codec of a :class:`~peft_mcdi.generator.model.McDiGenerator`.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass

import torch
from peft import LoraModel
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper

import peft_mcdi
from peft_mcdi.generator.condition import TextEncoder
from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.model import (
    FORMAT_VERSION,
    WEIGHTS_NAME,
    GeneratorConfig,
    McDiGenerator,
    local_generator_folder,
)
from peft_mcdi.generator.schedulers import SchedulerConfig
from peft_mcdi.utils import to_device


@dataclass
class AdaptInfo:
    """What one ``adapt()`` call did. Times are wall-clock milliseconds."""

    adapter_names: list[str]
    encoder_ms: float
    generator_ms: float
    seeds: list[int]  # per task, the seed of the weights written (the selected one when num_samples > 1)
    nearest_training_distance: list[float]  # per task; NaN when the generator recorded no training conditions


def _layer_index(name: str) -> int:
    numbers = [int(p) for p in name.split(".") if p.isdigit()]
    return numbers[-1] if numbers else -1


class McDiModel(LoraModel):
    prefix: str = "lora_"  # the layers are LoRA layers: their parameters are lora_A / lora_B

    def __init__(self, model, config, adapter_name, low_cpu_mem_usage: bool = False, **kwargs) -> None:
        super().__init__(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, **kwargs)
        self._mcdi_generators: dict[str, McDiGenerator] = {}
        self._mcdi_encoders: dict[str, TextEncoder] = {}

    # ------------------------------------------------------------ LoRA ↔ codec
    def lora_parameters(self, adapter_name: str = "default") -> dict[str, torch.nn.Parameter]:
        """Everything the generator writes for an adapter, under canonical names: the LoRA matrices
        (``<module>.lora_A.weight``), module-major — every layer's q_proj, then every layer's v_proj, … — so the
        codec's tokens are read by slices; then, for sequence-classification bases, the task head that peft trains
        beside the LoRA (``modules_to_save``, e.g. ``classifier.weight``/``.bias``), generated together with it."""
        found, heads = [], {}
        for name, module in self.model.named_modules():
            if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
                found.append((name.rsplit(".", 1)[-1], _layer_index(name), name, module))
            elif isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
                for pname, param in module.modules_to_save[adapter_name].named_parameters():
                    heads[f"{name}.{pname}"] = param
        if not found:
            raise ValueError(f"the model has no LoRA adapter named {adapter_name!r}; it has {list(self.peft_config)}.")
        params = {}
        for _, _, name, module in sorted(found, key=lambda f: f[:3]):
            params[f"{name}.lora_A.weight"] = module.lora_A[adapter_name].weight
            params[f"{name}.lora_B.weight"] = module.lora_B[adapter_name].weight
        return params | heads

    def lora_shapes(self, adapter_name: str = "default") -> dict[str, list[int]]:
        return {name: list(p.shape) for name, p in self.lora_parameters(adapter_name).items()}

    def check_generator(self, generator: McDiGenerator, adapter_name: str = "default") -> None:
        """Raise a ValueError that says what differs when ``generator`` was not made for this adapter's layout."""
        mine, theirs = self.lora_shapes(adapter_name), generator.codec.shapes
        if generator.codec.row_tokens:
            raise ValueError("this generator produces classifier-head rows, not LoRA matrices.")
        problems = []
        missing, extra = [k for k in theirs if k not in mine], [k for k in mine if k not in theirs]
        if missing or extra:
            problems.append(
                f"{len(mine)} LoRA tensors here vs {len(theirs)} in the generator; generator-only: "
                f"{missing[:3]}, model-only: {extra[:3]}"
            )
        shapes = [
            f"{k}: model {mine[k]} vs generator {list(v)}"
            for k, v in theirs.items()
            if k in mine and list(v) != mine[k]
        ]
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches (rank or width), e.g. {shapes[:2]}")
        if not problems and list(mine) != list(theirs):
            problems.append("same tensors but in another order")
        config = self.peft_config[adapter_name]
        sched = generator.scheduler.config
        if (sched.num_train_timesteps, sched.num_segments) != (config.num_train_timesteps, config.num_segments):
            problems.append(
                f"generator has T={sched.num_train_timesteps}, k={sched.num_segments}; the config "
                f"expects T={config.num_train_timesteps}, k={config.num_segments}"
            )
        if problems:
            trained_for, base = generator.config.metadata.get("base_model"), config.base_model_name_or_path
            origin = f" (it was trained for {trained_for}; this model is {base})" if trained_for != base else ""
            raise ValueError(f"generator does not fit adapter {adapter_name!r}{origin}: " + "; ".join(problems) + ".")

    def attach_generator(self, generator: McDiGenerator, adapter_name: str = "default") -> None:
        """Use ``generator`` for ``adapter_name`` after checking that it fits (layer count, modules, shapes, rank)."""
        self.check_generator(generator, adapter_name)
        first = next(iter(self.lora_parameters(adapter_name).values()))
        self._mcdi_generators[adapter_name] = generator.to(first.device)

    def create_generator(
        self,
        adapter_name: str = "default",
        denoiser: DenoiserConfig | None = None,
        condition_dim: int = 384,
        **generator_kwargs,
    ) -> McDiGenerator:
        """An untrained generator that fits this adapter (to train from scratch, and for tests), attached to it."""
        config = self.peft_config[adapter_name]
        denoiser = denoiser or DenoiserConfig(type="tokens", condition_dim=condition_dim, hidden_dim=128, num_layers=2)
        metadata = {
            "base_model": config.base_model_name_or_path,
            "target_modules": sorted(config.target_modules) if config.target_modules else None,
            "r": config.r,
            "task_encoder": config.task_encoder,
            **({"task_type": str(config.task_type)} if config.task_type else {}),
        }
        generator = McDiGenerator(
            GeneratorConfig(
                codec={"shapes": self.lora_shapes(adapter_name)},
                denoiser=denoiser,
                metadata=metadata,
                **generator_kwargs,
            ),
            SchedulerConfig(num_train_timesteps=config.num_train_timesteps, num_segments=config.num_segments),
        )
        self.attach_generator(generator, adapter_name)
        return generator

    def get_generator(self, adapter_name: str = "default") -> McDiGenerator:
        """The generator that writes ``adapter_name`` (loaded from its config's ``generator_name_or_path`` on first
        use): its metadata, training conditions and card."""
        return self._generator_for(adapter_name)

    def _generator_for(self, adapter_name: str) -> McDiGenerator:
        if adapter_name not in self._mcdi_generators:
            config = self.peft_config[adapter_name]
            if config.generator_name_or_path is None:
                raise ValueError(
                    f"adapter {adapter_name!r} has no generator: set McDiConfig.generator_name_or_path, or call "
                    "attach_generator() / create_generator() first."
                )
            source = (config.generator_name_or_path, config.generator_revision)
            loaded = [  # adapters naming the same generator share one copy (and can be generated in one batch)
                g
                for name, g in self._mcdi_generators.items()
                if (self.peft_config[name].generator_name_or_path, self.peft_config[name].generator_revision) == source
            ]
            generator = loaded[0] if loaded else McDiGenerator.from_pretrained(source[0], revision=source[1])
            self.attach_generator(generator, adapter_name)
        # Generators are not submodules (they are not part of the adapted model's state), so model.to(device) leaves
        # them behind: follow the adapter's weights here, or adapt() would quietly generate on the old device.
        generator = self._mcdi_generators[adapter_name]
        device = self._adapter_device(adapter_name)
        return generator if generator.device == device else generator.to(device)

    def _adapter_device(self, adapter_name: str) -> torch.device:
        return next(iter(self.lora_parameters(adapter_name).values())).device

    def _encoder_for(self, name: str) -> TextEncoder:
        if name not in self._mcdi_encoders:
            self._mcdi_encoders[name] = TextEncoder(name)
        return self._mcdi_encoders[name]

    # ------------------------------------------------------------------ adapt
    @torch.no_grad()
    def adapt(
        self,
        prompts: str | list[str] | None = None,
        *,
        embedding: torch.Tensor | None = None,
        adapter_names: str | list[str] | None = None,
        seed: int | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        num_samples: int = 1,
        examples: dict | list[dict] | None = None,
        refine_steps: int = 0,
        refine_lr: float = 1e-3,
    ) -> AdaptInfo:
        """Generate LoRA weights for one or several tasks and write them into their adapters, without gradients.

        Args:
            prompts: a task description or a list of them (one adapter each).
            embedding: precomputed conditions (B, C) or (C,) instead of prompts (skips the encoder).
            adapter_names: where to write each task's weights; default: the active adapter. Missing adapters are
                created with the active adapter's config.
            seed, guidance_scale, temperature: override the adapter config's values.
            num_samples: draw this many candidates per task (seeds ``seed``, ``seed + 1``, …) and keep the one with
                the lowest loss on ``examples``.
            examples: labelled examples for that selection: model inputs with ``labels`` (a dict for one task, a
                list of dicts, one per task). No gradient is taken; each candidate costs one forward pass.
            refine_steps: with ``examples``, this many Adam steps (learning rate ``refine_lr``) on the generated
                adapter's own weights, on the examples' loss, after generation (and selection): the generated
                weights as a few-shot initialisation. The only gradients ``adapt`` takes; the base model and every
                other adapter stay as they were.
        """
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
        if num_samples > 1 and examples is None:
            raise ValueError("num_samples > 1 selects on labelled examples: pass examples=dict(..., labels=...).")
        if not isinstance(refine_steps, int) or refine_steps < 0:
            raise ValueError(f"refine_steps must be an int >= 0, got {refine_steps!r}.")
        if refine_steps and examples is None:
            raise ValueError("refine_steps > 0 trains on labelled examples: pass examples=dict(..., labels=...).")
        if not refine_lr > 0:
            raise ValueError(f"refine_lr must be > 0, got {refine_lr!r}.")
        num_tasks = _count_tasks(prompts, embedding)
        if adapter_names is None:
            if num_tasks != 1:
                raise ValueError(f"{num_tasks} tasks need adapter_names (one per task).")
            adapter_names = [self.active_adapters[0]]
        adapter_names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(adapter_names) != num_tasks:
            raise ValueError(f"got {num_tasks} tasks but {len(adapter_names)} adapter_names.")
        template = self.peft_config[self.active_adapters[0]]
        for name in adapter_names:
            if name not in self.peft_config:
                self._add_adapter_like(name, template)
        configs = [self.peft_config[n] for n in adapter_names]
        generator = self._generator_for(adapter_names[0])
        for name in adapter_names[1:]:
            if self._generator_for(name) is not generator:
                raise ValueError(
                    "adapters generated in one batch must share one generator; call adapt() per generator."
                )

        start = time.perf_counter()
        if embedding is None:
            texts = [prompts] if isinstance(prompts, str) else list(prompts)
            encoder_names = {c.task_encoder for c in configs}
            if len(encoder_names) != 1:
                raise ValueError(f"adapters of one batch use different task encoders: {sorted(encoder_names)}.")
            condition = self._encoder_for(encoder_names.pop()).encode(texts)
        else:
            condition = embedding[None] if embedding.dim() == 1 else embedding
        encoder_ms = (time.perf_counter() - start) * 1e3

        seed = configs[0].seed if seed is None else seed
        guidance = configs[0].guidance_scale if guidance_scale is None else guidance_scale
        temperature = configs[0].temperature if temperature is None else temperature
        start = time.perf_counter()
        # Task j's candidate s uses seed + s whatever the batch: a task gets the same candidates alone or batched.
        weights = generator.generate(
            condition.repeat_interleave(num_samples, dim=0),
            seed=[seed + s for _ in adapter_names for s in range(num_samples)],
            sampler=configs[0].sampler,
            num_inference_steps=configs[0].num_sampling_steps,
            guidance_scale=guidance,
            temperature=temperature,
        )
        generator_ms = (time.perf_counter() - start) * 1e3
        finite = torch.stack([torch.isfinite(w.reshape(w.shape[0], -1)).all(1) for w in weights.values()]).all(0)
        if not finite.all():
            broken = sorted({row // num_samples for row in (~finite).nonzero().flatten().tolist()})
            raise ValueError(
                f"the generator produced NaN or infinite weights for adapter(s) {[adapter_names[i] for i in broken]} "
                "(a corrupt or diverged generator); nothing was written."
            )

        if isinstance(examples, dict):
            examples = [examples]
        if examples is not None and len(examples) != len(adapter_names):
            raise ValueError(f"got {len(examples)} example sets for {len(adapter_names)} tasks; pass one per task.")
        chosen = []
        for j, name in enumerate(adapter_names):
            params = self.lora_parameters(name)
            losses = []
            for s in range(num_samples):
                row = j * num_samples + s
                torch._foreach_copy_(list(params.values()), [weights[k][row].to(p.dtype) for k, p in params.items()])
                if num_samples > 1:
                    losses.append(self._loss_on(name, examples[j]))
            best = min(range(num_samples), key=losses.__getitem__) if num_samples > 1 else 0
            if best != num_samples - 1:  # the last candidate written is not the best: write the best one back
                row = j * num_samples + best
                torch._foreach_copy_(list(params.values()), [weights[k][row].to(p.dtype) for k, p in params.items()])
            chosen.append(seed + best)
            if refine_steps:
                self._refine(name, examples[j], refine_steps, refine_lr)
            self.peft_config[name].provenance = {
                "prompt": texts[j] if embedding is None else None,
                "seed": seed + best,
                "num_samples": num_samples,
                "guidance_scale": guidance,
                "temperature": temperature,
                **({"refine_steps": refine_steps, "refine_lr": refine_lr} if refine_steps else {}),
                "generator": self.peft_config[name].generator_name_or_path,
                "generator_revision": self.peft_config[name].generator_revision,
                "generator_sha256": _weights_sha256(self.peft_config[name].generator_name_or_path),
                "peft_mcdi_version": peft_mcdi.__version__,
                "format_version": FORMAT_VERSION,
            }
        distance = generator.nearest_training_distance(condition).tolist()
        return AdaptInfo(adapter_names, encoder_ms, generator_ms, chosen, distance)

    def _loss_on(self, adapter_name: str, examples: dict) -> float:
        """The model's loss on labelled examples with only ``adapter_name`` active (a forward pass, no gradient)."""
        if "labels" not in examples:
            raise ValueError("examples must include 'labels' (the model computes the selection loss from them).")
        previous = self.active_adapters
        self.set_adapter(adapter_name)
        try:
            return float(self.model(**self._on_adapter_device(adapter_name, examples)).loss)
        finally:
            self.set_adapter(previous)

    def _on_adapter_device(self, adapter_name: str, examples: dict) -> dict:
        """``examples``' tensors on the adapter's device: a user tokenises on the CPU, the model may sit on a GPU."""
        return to_device(examples, self._adapter_device(adapter_name))

    def _refine(self, adapter_name: str, examples: dict, steps: int, lr: float) -> None:
        """``steps`` Adam steps on ``adapter_name``'s own weights (LoRA and head) on the loss of ``examples``, with
        gradients on for them alone; their ``requires_grad`` flags and the active adapter are restored after."""
        if "labels" not in examples:
            raise ValueError("examples must include 'labels' (the model computes the refinement loss from them).")
        params = list(self.lora_parameters(adapter_name).values())
        examples = self._on_adapter_device(adapter_name, examples)
        flags, previous = [p.requires_grad for p in params], self.active_adapters
        self.set_adapter(adapter_name)
        optimizer = torch.optim.Adam(params, lr=lr)
        try:
            with torch.enable_grad():
                for p in params:
                    p.requires_grad_(True)
                for _ in range(steps):
                    optimizer.zero_grad(set_to_none=True)
                    self.model(**examples).loss.backward()
                    optimizer.step()
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
                p.grad = None
            self.set_adapter(previous)

    def _add_adapter_like(self, name: str, template) -> None:
        """A new adapter with ``template``'s config (as ``PeftModel.add_adapter`` does), sharing its generator."""
        config = copy.deepcopy(template)
        config.provenance = None
        self.peft_config[name] = config
        self.inject_adapter(self.model, name)
        generator = self._mcdi_generators.get(self.active_adapters[0])
        if generator is not None and config.generator_name_or_path == template.generator_name_or_path:
            self.attach_generator(generator, name)


def _count_tasks(prompts, embedding) -> int:
    """How many tasks one ``adapt()`` call writes, after refusing what would otherwise write a meaningless adapter
    silently (an empty prompt) or fail later with a message about something else (a tensor given as prompts)."""
    if (prompts is None) == (embedding is None):
        raise ValueError("pass exactly one of prompts (task descriptions) or embedding= (precomputed conditions).")
    if embedding is not None:
        if not isinstance(embedding, torch.Tensor) or embedding.dim() not in (1, 2) or embedding.numel() == 0:
            shape = list(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
            raise ValueError(f"embedding= must be a non-empty tensor of shape (C,) or (B, C), got {shape}.")
        if not torch.isfinite(embedding).all():
            raise ValueError("embedding= contains NaN or infinite values.")
        return 1 if embedding.dim() == 1 else embedding.shape[0]
    if isinstance(prompts, torch.Tensor):
        raise ValueError(
            "prompts must be strings (a task description or a list of them); to pass precomputed conditions, "
            "use adapt(embedding=tensor)."
        )
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        raise ValueError("the prompt list is empty: pass at least one task description.")
    for i, text in enumerate(texts):
        where = "the prompt" if isinstance(prompts, str) else f"prompt {i}"
        if not isinstance(text, str):
            raise ValueError(f"{where} is a {type(text).__name__}; prompts must be strings (or pass embedding=).")
        if not text.strip():
            raise ValueError(f"{where} is empty: describe the task, e.g. 'Decide whether the word names a fish.'")
    return len(texts)


def _weights_sha256(generator_path: str | None) -> str | None:
    """sha256 of a local or shipped generator's weights file (the identity a provenance record needs); None
    otherwise."""
    folder = local_generator_folder(generator_path) if generator_path is not None else None
    if folder is None or not (folder / WEIGHTS_NAME).is_file():
        return None
    path = folder / WEIGHTS_NAME
    return hashlib.sha256(path.read_bytes()).hexdigest()
