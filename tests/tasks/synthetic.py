"""Synthetic feature sets for the vision unit tests: Gaussian clusters around random class centres (no backbone)."""

import torch

from peft_mcdi.tasks.episodes import FeatureSet


def clustered_features(num_classes: int = 12, per_class: int = 30, dim: int = 16, spread: float = 0.6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return FeatureSet("synthetic", features, labels)
