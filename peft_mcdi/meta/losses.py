"""Training losses of the weight generator (SPEC §3.3): Mc-Di local consistency, vanilla ε-prediction, Tw-Di.

All randomness of a loss evaluation (segment, timestep, noise, condition dropout) is drawn *outside* the loss by
:func:`draw_loss_noise` and passed in. That keeps the loss a pure function of (parameters, task, noise): it can be
vmapped over a meta-batch, and a per-(step, task) generator makes one process and N processes draw the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from peft_mcdi.generator.schedulers import LocalConsistencyScheduler


LossVariant = Literal["mcdi", "twdi"]
LOSS_VARIANTS = ("mcdi", "twdi")
LossWeighting = Literal["epsilon", "paper"]


@dataclass
class LossNoise:
    """Pre-drawn randomness for one task's loss on ``n`` samples. Shapes: (n,), (n,), (n, D), (n,)."""

    segments: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor
    drop_condition: torch.Tensor

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return self.segments, self.timesteps, self.noise, self.drop_condition


def draw_loss_noise(
    scheduler: LocalConsistencyScheduler,
    num_samples: int,
    dim: int,
    generator: torch.Generator,
    variant: LossVariant = "mcdi",
    condition_dropout: float = 0.0,
) -> LossNoise:
    segments, timesteps = scheduler.sample_segments_and_timesteps(num_samples, generator, variant)
    noise = torch.randn(num_samples, dim, generator=generator)
    drop = torch.rand(num_samples, generator=generator) < condition_dropout
    return LossNoise(segments, timesteps, noise, drop)


def diffusion_loss(
    denoise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: LocalConsistencyScheduler,
    targets: torch.Tensor,
    noise: LossNoise,
    variant: LossVariant = "mcdi",
    weighting: LossWeighting = "epsilon",
    coordinate_weights: torch.Tensor | None = None,
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """Mean loss of one task over the pre-drawn samples.

    Args:
        denoise: ``(x_t (n, D), t (n,), drop_condition (n,)) -> f (n, D)``; the task condition is bound inside.
        targets: (k, D) — the task's local targets θ⁽¹⁾…θ⁽ᵏ⁾ in codec space, θ⁽ᵏ⁾ the final weights.
        variant: ``"mcdi"`` — x_t = √ᾱᵢ(t)θ⁽ⁱ⁾ + √(1−ᾱᵢ(t))ε and loss ‖√(1−ᾱᵢ(t))·f − √(1−ᾱ_t)·ε‖²; with k = 1 this is
            vanilla ε-prediction. ``"twdi"`` — the standard loss ‖f − ε‖² with θ⁽ⁱ⁾ as x_0 on its own stretch.
        weighting: (ε-prediction) ``"epsilon"`` divides the Mc-Di loss by (1−ᾱ_t), the target's variance. The
            minimiser is the same (it is a positive per-t constant); what changes is that k = 1 is *exactly* the
            vanilla loss and all variants are on the ε scale, so their curves compare. ``"paper"`` keeps the raw
            form of SPEC §3.3.
        coordinate_weights: (D,) weights of the squared residual per coordinate, mean 1 (None: all 1). They change
            which coordinates the denoiser spends its capacity on, not the minimiser of any one coordinate.
        min_snr_gamma: Min-SNR-γ weighting (Hang et al., 2023): each sample's ε-loss × min(SNR, γ)/SNR, SNR of the
            noise level it was drawn at (ᾱ/(1−ᾱ) of its own segment's schedule for Mc-Di). The ε-loss of a nearly
            clean sample asks for the exact weights (what the zoo's per-task noise is made of) and dominates the
            gradient; the noisy samples, where only the condition can tell the denoiser where to go, weigh little.
            Capping the x₀-equivalent weight at γ gives the noisy samples their share. With x̂₀-prediction the
            weight is min(SNR, γ), the same weighting of the same samples. None: unweighted.

    With ``scheduler.config.prediction_type == "sample"`` ``denoise`` returns x̂₀ and the loss is ‖x̂₀ − x̂₀*‖², x̂₀*
    from :meth:`~peft_mcdi.generator.schedulers.LocalConsistencyScheduler.sample_targets` (Mc-Di) or θ⁽ⁱ⁾ (Tw-Di).
    """
    segments, timesteps, eps, drop = noise.as_tuple()
    x0 = targets[segments - 1]  # (n, D)
    if variant == "mcdi":
        alpha_bar = scheduler.local_alphas_cumprod(timesteps, segments)
        x_t = scheduler.add_noise(x0, eps, timesteps, segments)
    elif variant == "twdi":
        alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        x_t = scheduler.add_noise(x0, eps, timesteps)
    else:
        raise ValueError(f"variant must be one of {LOSS_VARIANTS}, got {variant!r}.")
    if weighting not in ("epsilon", "paper"):
        raise ValueError(f"weighting must be 'epsilon' or 'paper', got {weighting!r}.")
    f = denoise(x_t, timesteps, drop)
    predicts_sample = scheduler.config.prediction_type == "sample"
    if predicts_sample:
        if weighting == "paper":
            raise ValueError(
                "weighting='paper' is the raw ε-form of SPEC §3.3; with prediction_type='sample' the loss is "
                "‖x̂₀ − x̂₀*‖² on the weights' scale: use weighting='epsilon'."
            )
        residual = f - (x0 if variant == "twdi" else scheduler.sample_targets(x_t, eps, timesteps, segments))
    elif variant == "mcdi":
        pred_scale, target_scale = scheduler.loss_scales(timesteps, segments)
        if weighting == "epsilon":
            pred_scale, target_scale = pred_scale / target_scale, torch.ones_like(target_scale)
        residual = pred_scale.to(f.dtype)[:, None] * f - target_scale.to(f.dtype)[:, None] * eps
    else:
        residual = f - eps
    squared = residual.pow(2)
    if coordinate_weights is not None:
        squared = squared * coordinate_weights.to(squared)
    if min_snr_gamma is not None:
        snr = alpha_bar / (1 - alpha_bar)
        weight = snr.clamp(max=min_snr_gamma) if predicts_sample else snr.clamp(max=min_snr_gamma) / snr
        squared = squared * weight.to(squared.dtype)[:, None]
    return squared.mean()
