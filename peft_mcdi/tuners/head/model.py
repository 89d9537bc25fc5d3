"""``McDiHeadModel``: a frozen backbone plus named classifier heads, each generated from a labelled support set.

The vision counterpart of ``McDiModel`` (PEFT's split: the config says what, this module says where): ``adapt()``
writes a head per support set without any gradient step, ``forward`` classifies with the active (or a named) head,
``save_pretrained`` / ``from_pretrained`` round-trip the heads as safetensors + JSON with a model card.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from peft_mcdi.generator.head import GeneratedHead, HeadGenerator
from peft_mcdi.tasks.episodes import EpisodeBatch
from peft_mcdi.tuners.head.config import CONFIG_NAME, McDiHeadConfig
from peft_mcdi.utils import atomic_write, atomic_write_text
from peft_mcdi.zoo.heads import train_heads


WEIGHTS_NAME = "heads.safetensors"


@dataclass
class HeadAdaptInfo:
    """What one ``adapt()`` call did; times are wall-clock milliseconds."""

    adapter_name: str
    num_classes: int
    backbone_ms: float
    generator_ms: float
    nearest_training_distance: float
    refine_ms: float = 0.0
    fell_back: bool = False  # the support set was too far from the training ones: the head is the prototype rule


def refine_head(head: GeneratedHead, features: torch.Tensor, labels: torch.Tensor, steps: int, lr: float) -> None:
    """``steps`` Adam steps of the support set's cross-entropy on ``head``, in place, through the same loop as the
    benchmark's few-shot rows (:func:`~peft_mcdi.zoo.heads.train_heads`, on the L2-normalised features the head
    reads)."""
    x = F.normalize(features.float(), dim=-1)[None]
    y = labels.long()[None]
    init = {"weight": head.weight.detach()[None], "bias": head.bias.detach()[None]}
    with torch.enable_grad():  # adapt() runs under no_grad
        trained = train_heads(EpisodeBatch(x, y, x, y, head.out_features), steps, lr, init=init).params
    with torch.no_grad():
        head.weight.copy_(trained["weight"][0])
        head.bias.copy_(trained["bias"][0])


class McDiHeadModel(nn.Module):
    """Args:
    backbone: frozen feature extractor; ``config.feature_method`` names the method that returns (B, d) features.
    config: :class:`McDiHeadConfig`.
    generator: a loaded :class:`HeadGenerator` (default: loaded from ``config.generator_name_or_path``).
    """

    def __init__(self, backbone: nn.Module, config: McDiHeadConfig, generator: HeadGenerator | None = None) -> None:
        super().__init__()
        method = config.feature_method
        if method != "forward" and not callable(getattr(backbone, method, None)):
            raise ValueError(
                f"the backbone ({type(backbone).__name__}) has no method {method!r} (config.feature_method)."
            )
        self.backbone = backbone.eval().requires_grad_(False)
        self.config = config
        self._generator = generator
        self.heads = nn.ModuleDict()
        self.class_names: dict[str, list[str] | None] = {}
        self.active_adapter: str | None = None

    @property
    def generator(self) -> HeadGenerator:
        """The head generator, loaded on first use: heads loaded by :meth:`from_pretrained` classify without it."""
        if self._generator is None:
            if self.config.generator_name_or_path is None:
                raise ValueError("McDiHeadModel needs a generator: pass one or set config.generator_name_or_path.")
            self._generator = HeadGenerator.from_pretrained(
                self.config.generator_name_or_path,
                revision=self.config.generator_revision,
                sampler=self.config.sampler,
                num_inference_steps=self.config.num_sampling_steps,
                guidance_scale=self.config.guidance_scale,
                num_samples=self.config.num_samples,
                fallback_quantile=self.config.fallback_quantile,
            )
        return self._generator

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        fn = (
            self.backbone
            if self.config.feature_method == "forward"
            else getattr(self.backbone, self.config.feature_method)
        )
        return fn(images)

    @torch.no_grad()
    def adapt(
        self,
        support_images: torch.Tensor,
        support_labels: torch.Tensor,
        adapter_name: str = "default",
        class_names: list[str] | None = None,
        refine_steps: int = 0,
        refine_lr: float = 0.01,
    ) -> HeadAdaptInfo:
        """Generate the head of ``adapter_name`` from labelled images (labels in 0..N−1) and make it active.

        ``refine_steps``: that many full-batch Adam steps (learning rate ``refine_lr``) of cross-entropy on the
        support set, starting from the generated head: the benchmark's ``mcdi_functional_fewshot`` row, for when a
        few milliseconds more buy accuracy (the generated head is a better start than zeros, SPEC §4)."""
        if not isinstance(refine_steps, int) or refine_steps < 0:
            raise ValueError(f"refine_steps must be an int >= 0, got {refine_steps!r}.")
        if not refine_lr > 0:
            raise ValueError(f"refine_lr must be > 0, got {refine_lr!r}.")
        if support_labels.dim() != 1 or support_labels.shape[0] != support_images.shape[0]:
            raise ValueError(
                f"support_labels must be (n,) matching the {support_images.shape[0]} support images, got shape "
                f"{tuple(support_labels.shape)}."
            )
        num_classes = int(support_labels.max()) + 1
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries, the labels have {num_classes} classes.")
        start = time.perf_counter()
        feats = self.features(support_images)
        backbone_ms = (time.perf_counter() - start) * 1e3
        gen = self.generator
        head = gen.generate_head(feats, support_labels, num_classes, seed=self.config.seed)
        distance = float(gen.generator.nearest_training_distance(gen.last_condition)[0])
        refine_ms = 0.0
        if refine_steps:
            start = time.perf_counter()
            refine_head(head, feats, support_labels, refine_steps, refine_lr)
            refine_ms = (time.perf_counter() - start) * 1e3
        self.heads[adapter_name] = head
        self.class_names[adapter_name] = class_names
        self.active_adapter = adapter_name
        fell_back = bool(gen.last_fallback[0])
        return HeadAdaptInfo(
            adapter_name, num_classes, backbone_ms, gen.last_generation_ms, distance, refine_ms, fell_back
        )

    def set_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.heads:
            raise ValueError(f"no head named {adapter_name!r}; heads: {list(self.heads)}.")
        self.active_adapter = adapter_name

    def forward(self, images: torch.Tensor, adapter_name: str | None = None) -> torch.Tensor:
        """Logits (B, N) of the named (default: active) head."""
        name = adapter_name or self.active_adapter
        if name is None:
            raise ValueError("no head yet: call adapt(support_images, support_labels) first.")
        if name not in self.heads:
            raise ValueError(f"no head named {name!r}; heads: {list(self.heads)}.")
        return self.heads[name](self.features(images))

    # ------------------------------------------------------------------ save/load
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """head_config.json (config, class names) + heads.safetensors (``<name>.weight`` / ``<name>.bias``) + card."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        state = {f"{name}.{k}": v.detach().cpu().contiguous() for name, head in self.heads.items()
                 for k, v in head.state_dict().items()}  # fmt: skip
        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        meta = {
            "config": self.config.to_dict(),
            "class_names": self.class_names,
            "active_adapter": self.active_adapter,
        }
        atomic_write_text(folder / CONFIG_NAME, json.dumps(meta, indent=2))
        atomic_write_text(folder / "README.md", self._card())

    @classmethod
    def from_generator(cls, generator_name_or_path: str | os.PathLike, **config_kwargs) -> McDiHeadModel:
        """A ready model from a head generator that carries its feature extractor (the shipped ones, e.g.
        ``"peft-mcdi/glyphs-conv4"``, and those ``benchmarks/vision.py`` saves): the backbone, input size and
        projection it was trained on are built from the generator's folder, so ``adapt(images, labels)`` takes raw
        images. ``config_kwargs`` go to :class:`McDiHeadConfig` (sampling options, ``generator_revision``)."""
        from peft_mcdi.generator.model import generator_folder
        from peft_mcdi.models.feature_extractor import FeatureExtractor

        config = McDiHeadConfig(generator_name_or_path=str(generator_name_or_path), **config_kwargs)
        folder = generator_folder(generator_name_or_path, config.generator_revision)
        extractor = FeatureExtractor.from_pretrained(folder)
        model = cls(extractor, config)
        if model.generator.feature_dim != extractor.feature_dim:
            raise ValueError(
                f"{generator_name_or_path}: the generator writes heads on {model.generator.feature_dim} features but "
                f"its feature extractor ({extractor.config.backbone}) gives {extractor.feature_dim}."
            )
        return model

    @classmethod
    def from_pretrained(cls, backbone: nn.Module, save_directory: str | os.PathLike, generator=None) -> McDiHeadModel:
        """Rebuild the heads saved by :meth:`save_pretrained` on ``backbone`` (the generator loads lazily, only if
        ``adapt`` is called again)."""
        folder = Path(save_directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a McDiHeadModel folder: {name} is missing.")
        meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        config = McDiHeadConfig.from_dict(meta["config"])
        model = cls(backbone, config, generator)
        model.class_names = dict(meta["class_names"])
        try:
            state = load_file(folder / WEIGHTS_NAME)
        except Exception as err:
            raise ValueError(f"{folder / WEIGHTS_NAME} is corrupt or truncated ({err}).") from err
        for name in meta["class_names"]:
            weight = state[f"{name}.weight"]
            head = GeneratedHead(weight.shape[1], weight.shape[0])
            head.load_state_dict({"weight": weight, "bias": state[f"{name}.bias"]}, strict=True)
            model.heads[name] = head.requires_grad_(False)
        model.active_adapter = meta["active_adapter"]
        return model

    def _card(self) -> str:
        rows = [f"| {name} | {head.out_features} | {', '.join(self.class_names[name] or []) or 'n/a'} |"
                for name, head in self.heads.items()]  # fmt: skip
        return "\n".join([
            "---", "library_name: peft_mcdi", "tags: [peft, mcdi, weight-generation, image-classification]", "---", "",
            "# Generated classifier heads (Mc-Di)", "",
            "Linear heads for a frozen backbone, *generated* from labelled support sets by a Mc-Di head generator "
            f"(`{self.config.generator_name_or_path or 'in-memory generator'}`), with no gradient step. Each head "
            "L2-normalises the backbone features first.", "",
            "| head | classes | class names |", "|---|---|---|", *rows, "",
            "```python", "from peft_mcdi.tuners.head import McDiHeadModel", "",
            'model = McDiHeadModel.from_pretrained(backbone, "path/to/this/folder")',
            "logits = model(images)  # the active head; model(images, adapter_name=...) for another", "```", "",
        ])  # fmt: skip
