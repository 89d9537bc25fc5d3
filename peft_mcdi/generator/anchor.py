"""Anchors: a training-free rule that a generator's weights are a residual on (SPEC §3.7).

A generator fitted to zoo weights learns their per-task noise or their mean; a head generator that learns nothing
should still classify as well as the free rule beside it. With an anchor, the generated weights are
``anchor(condition) + decode(x₀)``: the zero residual is the rule at every point of training, the diffusion targets
are the zoo's weights minus the rule, and a functional term (the task loss of anchor + residual) only has to learn
what the rule misses. The anchor lives in the generator's ``model.safetensors`` under ``anchor.`` and is named in
its ``config.json`` (``GeneratorConfig.anchor``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from peft_mcdi.generator.codec import WeightCodec


class PrototypeAnchor(nn.Module):
    """The nearest-centroid rule as a linear head on L2-normalised features: w_c = 2s·p_c, b_c = −s·‖p_c‖².

    For any s > 0, argmax_c (w_c·x + b_c) = argmin_c ‖x − p_c‖² (‖x‖ = 1 is the same for every class), so the rule
    is the prototype classifier whatever s is; s sets its logit scale, i.e. its confidence under cross-entropy.
    :meth:`fit` sets s by least squares on the zoo's trained heads, so that the residuals the generator models are
    what training adds to the rule, not a rescaling of it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    @staticmethod
    def check(shapes: Mapping[str, list[int]], row_tokens: bool, condition_dim: int) -> None:
        """Raise unless the generator writes class-row heads on features of the condition's width."""
        if not row_tokens or dict(shapes) != {"weight": [condition_dim], "bias": []}:
            raise ValueError(
                "anchor='prototype' needs a classifier-head generator whose conditions are the class prototypes: "
                f"a rows-layout codec with shapes {{'weight': [{condition_dim}], 'bias': []}}; got row_tokens="
                f"{row_tokens}, shapes {dict(shapes)}."
            )

    def rule(self, prototypes: torch.Tensor, scale: torch.Tensor | float) -> dict[str, torch.Tensor]:
        return {"weight": 2 * scale * prototypes, "bias": -scale * prototypes.pow(2).sum(-1)}

    def forward(self, prototypes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Prototypes (…, N, d) → {"weight": (…, N, d), "bias": (…, N)}."""
        return self.rule(prototypes, self.scale)

    @torch.no_grad()
    def fit(self, heads: Mapping[str, torch.Tensor], prototypes: torch.Tensor) -> PrototypeAnchor:
        """Least-squares s over trained heads {"weight": (…, N, d), "bias": (…, N)} and their prototypes (…, N, d);
        a zoo whose heads do not point towards their prototypes (s ≤ 0) is an error, not a silent flip of the rule."""
        unit = self.rule(prototypes.double(), 1.0)
        numerator = sum((heads[n].double() * unit[n]).sum() for n in unit)
        denominator = sum(unit[n].pow(2).sum() for n in unit)
        scale = float(numerator / denominator)
        if not scale > 0:
            raise ValueError(
                f"the zoo's heads do not point towards their class prototypes (least-squares scale {scale:.4g}); "
                "the prototype anchor does not fit this zoo."
            )
        self.scale.fill_(scale)
        return self


ANCHORS = {"prototype": PrototypeAnchor}


class AnchoredDecoding:
    """Codec space ↔ weights for a module with a ``codec`` and an ``anchor`` (None: none), so that the generator
    and the one-pass networks built from its config write weights the same way."""

    codec: WeightCodec
    anchor: PrototypeAnchor | None

    def decode(self, vectors: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised vectors (B, D) of conditions (B, C) [(B, N, C)] → weights {name: (B, *shape)}: the codec's
        decoding, plus the anchor's rule on the conditions when there is one."""
        weights = self.codec.decode(vectors)
        if self.anchor is None:
            return weights
        rule = self.anchor(condition)
        return {name: value + rule[name] for name, value in weights.items()}

    def encode(self, weights: Mapping[str, torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`decode`: weights {name: (B, *shape)} of conditions → normalised vectors (B, D)."""
        if self.anchor is not None:
            rule = self.anchor(condition)
            weights = {name: value - rule[name] for name, value in weights.items()}
        return self.codec.encode(weights)
