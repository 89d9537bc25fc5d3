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

from peft_mcdi.generator.model import McDiGenerator
from peft_mcdi.tasks.episodes import prototypes


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
    """

    def __init__(
        self,
        generator: McDiGenerator,
        sampler: str = "ddpm",
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        num_samples: int = 1,
    ) -> None:
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}.")
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
        self.last_generation_ms: float | None = None
        self.last_condition: torch.Tensor | None = None  # the prototypes of the last call, (E, N, d)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> HeadGenerator:
        """Load the generator folder (or Hub repo: ``revision``, ``cache_dir``, ``token``, ``local_files_only``,
        ``device`` go to ``McDiGenerator.from_pretrained``; ``sampler``, ``num_inference_steps``,
        ``guidance_scale`` and ``num_samples`` to this class)."""
        sample_keys = ("sampler", "num_inference_steps", "guidance_scale", "num_samples")
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
        self.last_condition = condition
        self.last_generation_ms = (time.perf_counter() - start) * 1e3
        return heads

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
