"""The few-shot protocol's small backbone: Conv-4 (four 3×3 conv–BN–ReLU–max-pool blocks, 64 channels), trained by
ordinary classification on the *background* classes only, then frozen. Evaluation classes never reach it.

Weights are cached as safetensors under ``cache_root()/backbones``, keyed by a hash of the training configuration
and of the training images, so every benchmark seed that shares the background split shares the backbone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from peft_mcdi.utils import DictConfigMixin, atomic_write, cache_root, stable_hash


class Conv4(nn.Module):
    """28×28 grayscale → (B, channels) features; 28 → 14 → 7 → 3 → 1 spatially."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        layers, in_ch = [], 1
        for _ in range(4):
            layers += [nn.Conv2d(in_ch, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2)]
            in_ch = channels
        self.body = nn.Sequential(*layers)
        self.feature_dim = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 1, 28, 28) float in [0, 1] → (B, channels)."""
        return self.body(images).flatten(1)


@dataclass
class Conv4TrainConfig(DictConfigMixin):
    channels: int = field(default=64, metadata={"help": "Channels of every conv block (and the feature width)."})
    epochs: int = field(default=6, metadata={"help": "Passes over the background images."})
    batch_size: int = field(default=128, metadata={"help": "Mini-batch size."})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate (cosine-decayed to 0)."})
    max_shift: int = field(default=2, metadata={"help": "Random translation augmentation, in pixels."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, batch order and augmentation."})

    def __post_init__(self) -> None:
        for name in ("channels", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Conv4TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}.")


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): one roll of a padded batch per image offset."""
    if max_shift <= 0:
        return x
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    h, w = x.shape[-2:]
    rows = (torch.arange(h)[None] + dy[:, None])[:, None, :, None]  # (n, 1, h, 1)
    cols = (torch.arange(w)[None] + dx[:, None])[:, None, None, :]  # (n, 1, 1, w)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def to_float_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W) → float (n, 1, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)


def train_conv4(images: np.ndarray, labels: np.ndarray, config: Conv4TrainConfig, progress: bool = False) -> Conv4:
    """Classification training on (images, labels) with a temporary linear head, which is then discarded."""
    torch.manual_seed(config.seed)
    model = Conv4(config.channels)
    head = nn.Linear(config.channels, int(labels.max()) + 1)
    x, y = to_float_images(images), torch.from_numpy(labels)
    params = [*model.parameters(), *head.parameters()]
    steps = config.epochs * -(-len(x) // config.batch_size)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    g = torch.Generator().manual_seed(config.seed)
    bar = tqdm(total=steps, desc="pretrain conv4", disable=not progress)
    model.train()
    for _ in range(config.epochs):
        for idx in torch.randperm(len(x), generator=g).split(config.batch_size):
            loss = F.cross_entropy(head(model(_random_shift(x[idx], config.max_shift, g))), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def images_fingerprint(images: np.ndarray, labels: np.ndarray | None = None) -> str:
    """Content hash of an image array (and labels): part of every cache key derived from the images."""
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update(str(images.shape).encode())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()[:16]


def pretrained_conv4(
    images: np.ndarray, labels: np.ndarray, config: Conv4TrainConfig | None = None, progress: bool = False
) -> Conv4:
    """The Conv-4 trained on (images, labels) with ``config``: read from the cache, trained (and cached) once."""
    config = config or Conv4TrainConfig()
    key = stable_hash({"config": config.to_dict(), "data": images_fingerprint(images, labels)})
    path = cache_root() / "backbones" / f"conv4-{key}.safetensors"
    model = Conv4(config.channels)
    model.cache_key = f"conv4-{key}"  # what features computed with this backbone are cached under
    if path.is_file():
        try:
            model.load_state_dict(load_file(path), strict=True)
        except Exception as err:  # a torn or foreign file: say which one, never silently retrain over it
            raise ValueError(f"cached backbone {path} cannot be loaded ({err}); delete it to retrain.") from err
        return model.eval()
    model = train_conv4(images, labels, config, progress)
    model.cache_key = f"conv4-{key}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
    return model


@torch.no_grad()
def conv4_features(model: Conv4, images: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    """uint8 (n, 28, 28) → (n, channels) float32 features of the frozen backbone."""
    model.eval()
    x = to_float_images(images)
    return torch.cat([model(chunk) for chunk in x.split(batch_size)])
