"""Synthetic feature sets for the vision unit tests: Gaussian clusters around random class centres (no backbone)."""

import torch

from peft_mcdi.tasks.episodes import FeatureSet


def clustered_features(
    num_classes: int = 12,
    per_class: int = 30,
    dim: int = 16,
    spread: float = 0.6,
    seed: int = 0,
    nuisance: float = 0.0,
):
    """``nuisance`` > 0 adds noise of that std along one random direction shared by every class: the nearest-centroid
    rule then weighs a direction that carries no class information, which a head trained across tasks learns to
    discount."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    if nuisance:
        direction = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
        features = features + nuisance * torch.randn(len(labels), 1, generator=g) * direction
    return FeatureSet("synthetic", features, labels)
