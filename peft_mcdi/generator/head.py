"""``HeadGenerator``: a labelled support set in, a classifier head for a frozen backbone out, no gradient step.

It is a :class:`~peft_mcdi.generator.model.McDiGenerator` whose codec is the rows layout (``{"weight": [d], "bias":
[]}``, one token per class) and whose denoiser takes one condition per token: the class prototype. So it is
permutation-equivariant in classes and works for any number of ways, whatever N it was trained on (SPEC §3.2, §3.5).
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from peft_mcdi.generator.anchor import PrototypeAnchor
from peft_mcdi.generator.model import McDiGenerator
from peft_mcdi.tasks.episodes import EpisodeBatch, prototypes


def nearest_other_distances(conditions: torch.Tensor) -> torch.Tensor:
    """Each of (M, C) conditions' L2 distance to its nearest *other* one: how far training support sets lie apart."""
    distances = torch.cdist(conditions.float(), conditions.float())
    return distances.fill_diagonal_(float("inf")).min(1).values


def prototype_rule(prototypes: torch.Tensor, anchor: PrototypeAnchor | None) -> dict[str, torch.Tensor]:
    """The nearest-centroid head on (E, N, d) prototypes: the generator's anchor, or the rule at scale 1 for a
    generator without one (the scale does not change its answers)."""
    return anchor(prototypes) if anchor is not None else PrototypeAnchor().rule(prototypes, 1.0)


class GeneratedHead(nn.Linear):
    """An ``nn.Linear`` head that L2-normalises its input first, as the features it was generated for were."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(features, dim=-1))


class HeadGenerator:
    """Generate linear heads from support sets with a rows-layout :class:`McDiGenerator`.

    Args:
        generator: the meta-trained generator (codec rows layout, per-token conditions).
        sampler / num_inference_steps / guidance_scale: sampling options (see ``McDiGenerator.generate``).
        num_samples: heads drawn per support set and averaged. A K-shot support set does not determine the head a
            larger training pool would give, so single samples scatter around it; their mean estimates E[head |
            support], which classifies better (measured in ``benchmarks/results/vision_*.md``). All samples of a
            batch go through the generator in one call.
        fallback_quantile: write the prototype rule instead of the generated head for a support set farther from
            every training support set (mean prototypes, ``nearest_training_distance``) than this quantile of the
            training sets' own distances to their nearest other one: a generator should not extrapolate, and under
            a shift of the features its heads fall 7–27 points below the rule while the distance flags nearly every
            such episode (``benchmarks/studies/vision_ood_fallback.py``). None: never fall back.
    """

    def __init__(
        self,
        generator: McDiGenerator,
        sampler: str = "ddpm",
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        num_samples: int = 1,
        fallback_quantile: float | None = None,
    ) -> None:
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}.")
        if fallback_quantile is not None and not 0 < fallback_quantile <= 1:
            raise ValueError(f"fallback_quantile must be None or in (0, 1], got {fallback_quantile!r}.")
        if fallback_quantile is not None and generator.train_conditions.shape[0] < 2:
            raise ValueError(
                "fallback_quantile needs the training conditions the generator recorded (at least 2), it has "
                f"{generator.train_conditions.shape[0]}: this generator cannot tell how far a support set is."
            )
        if not generator.codec.row_tokens or set(generator.codec.shapes) != {"weight", "bias"}:
            raise ValueError(
                "HeadGenerator needs a generator trained on classifier heads: a rows-layout codec with tensors "
                f"'weight' and 'bias'; got row_tokens={generator.codec.row_tokens}, tensors {generator.codec.names}."
            )
        self.generator = generator.eval()
        self.sample_kwargs = {
            "sampler": sampler,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
        }
        self.num_samples = num_samples
        self.fallback_threshold = (
            None
            if fallback_quantile is None
            else float(nearest_other_distances(generator.train_conditions).quantile(fallback_quantile))
        )
        self.last_generation_ms: float | None = None
        self.last_condition: torch.Tensor | None = None  # the prototypes of the last call, (E, N, d)
        self.last_fallback: torch.Tensor | None = None  # which support sets of the last call got the rule, (E,)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> HeadGenerator:
        """Load the generator folder (or Hub repo: ``revision``, ``cache_dir``, ``token``, ``local_files_only``,
        ``device`` go to ``McDiGenerator.from_pretrained``; ``sampler``, ``num_inference_steps``,
        ``guidance_scale`` and ``num_samples`` to this class)."""
        sample_keys = ("sampler", "num_inference_steps", "guidance_scale", "num_samples", "fallback_quantile")
        sample_kwargs = {k: kwargs.pop(k) for k in sample_keys if k in kwargs}
        return cls(McDiGenerator.from_pretrained(name_or_path, **kwargs), **sample_kwargs)

    @property
    def feature_dim(self) -> int:
        return self.generator.codec.shapes["weight"][0]

    def conditions(self, support_x: torch.Tensor, support_y: torch.Tensor, num_ways: int | None = None):
        """Class prototypes of L2-normalised features: support_x (E, n, d) or (n, d), labels in 0..N−1 → (E, N, d)."""
        if support_x.dim() == 2:
            support_x, support_y = support_x[None], support_y[None]
        if support_x.dim() != 3 or support_x.shape[-1] != self.feature_dim:
            raise ValueError(
                f"support features must be (n, {self.feature_dim}) or (episodes, n, {self.feature_dim}), got "
                f"{tuple(support_x.shape)}."
            )
        if support_y.shape != support_x.shape[:2]:
            raise ValueError(
                f"support labels have shape {tuple(support_y.shape)}, expected {tuple(support_x.shape[:2])}."
            )
        num_ways = num_ways if num_ways is not None else int(support_y.max()) + 1
        counts = F.one_hot(support_y.long(), num_ways).sum(1)  # (E, N)
        if (counts == 0).any():
            raise ValueError(f"every class 0..{num_ways - 1} needs at least one support example; some have none.")
        return prototypes(F.normalize(support_x.float(), dim=-1), support_y.long(), num_ways)

    @torch.no_grad()
    def generate_heads(
        self, support_x: torch.Tensor, support_y: torch.Tensor, num_ways: int | None = None, seed: int | list = 0
    ) -> dict[str, torch.Tensor]:
        """Heads for a batch of support sets: {"weight": (E, N, d), "bias": (E, N)} (for normalised features).

        ``seed``: one int for every episode, or one per episode; sample j of an episode with seed s uses seed
        s·num_samples + j, so an episode gets the same head alone or in a batch."""
        start = time.perf_counter()
        condition = self.conditions(support_x, support_y, num_ways)  # (E, N, d)
        E, n = condition.shape[0], self.num_samples
        seeds = [seed] * E if isinstance(seed, int) else list(seed)
        if len(seeds) != E:
            raise ValueError(f"got {len(seeds)} seeds for {E} support sets; pass one int or one seed per set.")
        draws = [s * n + j for s in seeds for j in range(n)]  # episode-major: (E·n,)
        heads = self.generator.generate(condition.repeat_interleave(n, 0), seed=draws, **self.sample_kwargs)
        heads = {k: v.unflatten(0, (E, n)).mean(1) for k, v in heads.items()}
        self.last_fallback = torch.zeros(E, dtype=torch.bool)
        if self.fallback_threshold is not None:
            self.last_fallback = self.generator.nearest_training_distance(condition).cpu() > self.fallback_threshold
            rule = prototype_rule(condition, self.generator.anchor)
            far = self.last_fallback.to(condition.device)
            heads = {k: torch.where(far.view(-1, *[1] * (v.dim() - 1)), rule[k], v) for k, v in heads.items()}
        self.last_condition = condition
        self.last_generation_ms = (time.perf_counter() - start) * 1e3
        return heads

    def generate_episode_heads(self, batch: EpisodeBatch) -> dict[str, torch.Tensor]:
        """Heads for every episode of ``batch``, episode i drawn with seed i: the vision benchmark's seeding, so that
        studies and scripts score the heads it scored."""
        return self.generate_heads(batch.support_x, batch.support_y, batch.num_ways, list(range(len(batch.support_x))))

    def generate_head(
        self, support_x: torch.Tensor, support_y: torch.Tensor, num_ways: int | None = None, seed: int = 0
    ) -> GeneratedHead:
        """One support set (n, d) → a :class:`GeneratedHead` (``nn.Linear`` on the raw backbone features)."""
        heads = self.generate_heads(support_x, support_y, num_ways, seed)
        weight, bias = heads["weight"][0], heads["bias"][0]
        head = GeneratedHead(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        return head.requires_grad_(False)
