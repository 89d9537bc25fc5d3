"""The noise schedule of local consistency diffusion: the one home of all schedule maths (SPEC §3.3).

Steps are numbered t = 1..T as in DDPM; index 0 is the clean end (ᾱ_0 = 1), so every table below has T + 1 entries
and is indexed by t directly. Sampling runs t = T → 0; the sample reached at t = 0 is the generated weight vector.

Mc-Di trains k nested segments that all start at the noise end: segment i ends at the boundary step b_i, where the
chain must sit on the local target θ⁽ⁱ⁾ (the i-th trajectory checkpoint). Inside segment i the forward process is the
DDPM process restarted at b_i, with the local cumulative product ᾱᵢ(t) = ∏_{b_i < j ≤ t} α_j = ᾱ_t / ᾱ_{b_i}. The
network's ε-prediction is rescaled in the loss so that an *unmodified* global DDPM step lands on the local target.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from peft_mcdi.utils import DictConfigMixin, atomic_write_text


SCHEDULER_CONFIG_NAME = "scheduler_config.json"
BETA_SCHEDULES = ("linear", "cosine")
PREDICTION_TYPES = ("epsilon", "sample")


@dataclass
class SchedulerConfig(DictConfigMixin):
    """Configuration of :class:`LocalConsistencyScheduler`; JSON round-trips."""

    num_train_timesteps: int = field(default=20, metadata={"help": "T, the number of diffusion steps (paper: 20)."})
    num_segments: int = field(
        default=3,
        metadata={"help": "k, the number of local targets along the trajectory; k = 1 is vanilla diffusion."},
    )
    beta_schedule: Literal["linear", "cosine"] = field(
        default="linear",
        metadata={
            "help": "How β_t grows. 'linear' (default) keeps ᾱ_T ≈ 0.018 for T=20; 'cosine' drives α_T to ~0, which "
            "made Mc-Di diverge on the toy family (SPEC §3.3 pitfalls)."
        },
    )
    beta_start: float = field(default=1e-3, metadata={"help": "β_1 of the linear schedule."})
    beta_end: float = field(
        default=0.35, metadata={"help": "β_T of the linear schedule (0.35 for T=20 gives ᾱ_T ≈ 0.018)."}
    )
    prediction_type: Literal["epsilon", "sample"] = field(
        default="epsilon",
        metadata={
            "help": "What the denoiser outputs: 'epsilon', the noise (DDPM, the paper), or 'sample', the clean "
            "weights x̂₀ (diffusers' name). The chain and its Mc-Di waypoints are the same; what changes is what "
            "the network must represent. Near the noise end an ε-network outputs ≈ x_t minus a small multiple "
            "(√ᾱ_T ≈ 0.13) of the weights, and the task's part of the ε-loss is tiny; an x̂₀-network there is a "
            "regressor of E[θ | condition] — the one-pass hypernetwork — with its loss on the weights' own scale.",
            "omit_default": True,
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {self.num_train_timesteps!r}.")
        if not isinstance(self.num_segments, int) or self.num_segments < 1:
            raise ValueError(f"num_segments must be a positive int, got {self.num_segments!r}.")
        if self.num_segments > self.num_train_timesteps:
            raise ValueError(
                f"num_segments (k={self.num_segments}) must not exceed num_train_timesteps "
                f"(T={self.num_train_timesteps}): each segment needs at least one diffusion step."
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}.")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}.")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}."
            )


def segment_boundaries(num_train_timesteps: int, num_segments: int) -> list[int]:
    """b_i = (T·(k−i) + ⌊k/2⌋) div k for i = 1..k: T·(k−i)/k rounded half up, so b_k = 0 (SPEC §3.3)."""
    T, k = num_train_timesteps, num_segments
    return [(T * (k - i) + k // 2) // k for i in range(1, k + 1)]


def local_target_epochs(num_epochs: int, num_segments: int) -> list[int]:
    """e_i = round_half_up(i·M/k) for i = 1..k: the epochs whose weights are the local targets (SPEC §3.1)."""
    M, k = num_epochs, num_segments
    return [(2 * i * M + k) // (2 * k) for i in range(1, k + 1)]


class LocalConsistencyScheduler:
    """β/α/ᾱ tables, segment boundaries, local noising and the DDPM / DDIM sampler steps.

    Like a diffusers scheduler it is independent of the network: the denoiser maps (sample, t, condition) to an
    ε- or x̂₀-prediction (``config.prediction_type``), and everything that involves an alpha lives here.
    """

    def __init__(self, config: SchedulerConfig | None = None, **kwargs) -> None:
        if config is not None and kwargs:
            raise ValueError("pass either a SchedulerConfig or keyword arguments, not both.")
        self.config = config if config is not None else SchedulerConfig(**kwargs)
        T = self.config.num_train_timesteps
        betas = self._betas(self.config, T)
        # Index 0 is the clean end: β_0 = 0, α_0 = ᾱ_0 = 1.
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.boundaries = torch.tensor(segment_boundaries(T, self.config.num_segments), dtype=torch.long)

    @staticmethod
    def _betas(config: SchedulerConfig, T: int) -> torch.Tensor:
        if config.beta_schedule == "linear":
            return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
        # Nichol & Dhariwal's cosine schedule, clipped at 0.999 as usual.
        s = 0.008
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)

    # ---------------------------------------------------------------- schedule
    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    @property
    def num_segments(self) -> int:
        return self.config.num_segments

    def local_alphas_cumprod(self, timesteps: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """ᾱᵢ(t) = ∏_{b_i < j ≤ t} α_j = ᾱ_t / ᾱ_{b_i}, in float64 for accuracy (segments are 1-based).

        Callers pass t ∈ (b_i, T] (as :meth:`sample_segments_and_timesteps` draws them); no data-dependent check here,
        so the loss stays vmappable.
        """
        b = self.boundaries.to(timesteps.device)[segments - 1]
        acp = self.alphas_cumprod.to(timesteps.device)
        return acp[timesteps] / acp[b]

    # ---------------------------------------------------------------- training
    def sample_segments_and_timesteps(
        self, batch_size: int, generator: torch.Generator | None = None, variant: str = "mcdi"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw (segment i, step t) pairs for a training batch; both long tensors of shape (batch,).

        Mc-Di: i uniform in 1..k, then t uniform in (b_i, T] (the nested segments of SPEC §3.3).
        Tw-Di: t uniform in 1..T and i the segment whose own stretch (b_i, b_{i−1}] contains it (b_0 = T).
        """
        T, k = self.num_train_timesteps, self.num_segments
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        if variant == "mcdi":
            segments = torch.randint(1, k + 1, (batch_size,), generator=generator)
            b = self.boundaries[segments - 1]
            timesteps = b + 1 + (u * (T - b)).long().clamp(max=T - b - 1)
        elif variant == "twdi":
            timesteps = 1 + (u * T).long().clamp(max=T - 1)
            # The segment whose stretch holds t is the first i with b_i < t.
            segments = 1 + (self.boundaries[None, :] >= timesteps[:, None]).sum(dim=1)
        else:
            raise ValueError(f"variant must be 'mcdi' or 'twdi', got {variant!r}.")
        return segments, timesteps

    def add_noise(
        self, targets: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, segments: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_t = √ᾱᵢ(t)·θ⁽ⁱ⁾ + √(1−ᾱᵢ(t))·ε (local noising); with ``segments=None``, the global DDPM q(x_t | x_0).

        targets, noise: (batch, D); timesteps, segments: (batch,).
        """
        if segments is None:
            acp = self.alphas_cumprod.to(timesteps.device)[timesteps]
        else:
            acp = self.local_alphas_cumprod(timesteps, segments)
        acp = acp.to(targets.dtype)[:, None]
        return acp.sqrt() * targets + (1 - acp).sqrt() * noise

    def loss_scales(self, timesteps: torch.Tensor, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two factors of the Mc-Di loss ‖ √(1−ᾱᵢ(t))·f − √(1−ᾱ_t)·ε ‖², shape (batch,) each (SPEC §3.3)."""
        local = self.local_alphas_cumprod(timesteps, segments)
        glob = self.alphas_cumprod.to(timesteps.device)[timesteps]
        return (1 - local).sqrt(), (1 - glob).sqrt()

    def sample_targets(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, segments: torch.Tensor
    ) -> torch.Tensor:
        """The x̂₀-prediction that satisfies the Mc-Di loss exactly, (x_t − (1−ᾱ_t)/√(1−ᾱᵢ(t))·ε)/√ᾱ_t, (batch, D).

        It is the x̂₀ whose implied ε̂ = (x_t − √ᾱ_t·x̂₀)/√(1−ᾱ_t) is the rescaled noise √(1−ᾱ_t)/√(1−ᾱᵢ(t))·ε that the
        ε-loss asks for, so an unmodified global step lands on θ⁽ⁱ⁾ at b_i either way. For the last segment (b_k = 0,
        ᾱᵢ = ᾱ_t) it is θ⁽ᵏ⁾ itself: k = 1 is the plain x₀-loss.
        """
        local = self.local_alphas_cumprod(timesteps, segments)
        glob = self.alphas_cumprod.to(timesteps.device)[timesteps]
        noise_scale = ((1 - glob) / (1 - local).sqrt()).to(sample.dtype)[:, None]
        return (sample - noise_scale * noise) / glob.sqrt().to(sample.dtype)[:, None]

    def clean_estimate(
        self, sample: torch.Tensor, model_output: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x̂₀ the denoiser's output implies under the global schedule, (batch, D): (x_t − √(1−ᾱ_t)·f)/√ᾱ_t for
        ε-prediction, f itself for x̂₀-prediction. For x_t drawn from the last segment's target (b_k = 0, where the
        local and global schedules agree) it estimates the final weights θ⁽ᵏ⁾ — what the functional term of SPEC §3.7
        decodes and scores."""
        if self.config.prediction_type == "sample":
            return model_output
        acp = self.alphas_cumprod.to(timesteps.device)[timesteps].to(sample.dtype)[:, None]
        return (sample - (1 - acp).sqrt() * model_output) / acp.sqrt()

    # ---------------------------------------------------------------- sampling
    def timesteps_for(self, num_inference_steps: int | None = None) -> list[tuple[int, int]]:
        """The (t, t_prev) pairs a sampler visits, from T down to 0; ``None`` means all T steps."""
        T = self.num_train_timesteps
        n = T if num_inference_steps is None else num_inference_steps
        if not isinstance(n, int) or not 1 <= n <= T:
            raise ValueError(f"num_inference_steps must be an int in [1, {T}] (T), got {num_inference_steps!r}.")
        grid = [round(T * (n - j) / n) for j in range(n + 1)]  # T, ..., 0, strictly decreasing since n ≤ T
        return list(zip(grid[:-1], grid[1:]))

    def step_coefficients(
        self, t: int, t_prev: int, sampler: str = "ddpm", device="cpu", dtype=torch.float32
    ) -> tuple[float, float, float]:
        """(c_x, c_eps, σ) with x_{t_prev} = c_x·x_t − c_eps·f + σ·z, f the denoiser's output.

        DDPM (global schedule, any stride): with a = ᾱ_t/ᾱ_{t_prev}, μ = (x_t − (1−a)/√(1−ᾱ_t)·f)/√a and
        σ² = (1−ᾱ_{t_prev})/(1−ᾱ_t)·(1−a). With t_prev = t−1 this is the textbook step, which is what makes the
        Mc-Di waypoints exact. DDIM (η = 0): x̂_0 = (x_t − √(1−ᾱ_t)·f)/√ᾱ_t, x_{t_prev} = √ᾱ_{t_prev}·x̂_0 +
        √(1−ᾱ_{t_prev})·f, deterministic. For ``prediction_type="sample"`` the coefficients take in the ε̂ that f
        implies, (x_t − √ᾱ_t·f)/√(1−ᾱ_t), so the chain is the same one and a sampler step costs the same.
        """
        acp = self.alphas_cumprod
        a_t, a_p = float(acp[t]), float(acp[t_prev])
        if sampler == "ddpm":
            a = a_t / a_p
            c_x = 1 / math.sqrt(a)
            c_eps = (1 - a) / math.sqrt(1 - a_t) / math.sqrt(a)
            sigma = math.sqrt((1 - a_p) / (1 - a_t) * (1 - a)) if t_prev > 0 else 0.0
        elif sampler == "ddim":
            c_x = math.sqrt(a_p / a_t)
            c_eps = math.sqrt(a_p) * math.sqrt(1 - a_t) / math.sqrt(a_t) - math.sqrt(1 - a_p)
            sigma = 0.0
        else:
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}.")
        if self.config.prediction_type == "sample":
            c_x, c_eps = c_x - c_eps / math.sqrt(1 - a_t), -c_eps * math.sqrt(a_t) / math.sqrt(1 - a_t)
        return c_x, c_eps, sigma

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        t_prev: int,
        sample: torch.Tensor,
        noise: torch.Tensor | None = None,
        sampler: str = "ddpm",
    ) -> torch.Tensor:
        """One sampler step x_t → x_{t_prev}; ``noise`` is the z of the ancestral term (ignored by DDIM / t_prev=0)."""
        c_x, c_eps, sigma = self.step_coefficients(t, t_prev, sampler)
        prev = c_x * sample - c_eps * model_output
        if sigma > 0 and noise is not None:
            prev = prev + sigma * noise
        return prev

    # --------------------------------------------------------------- save/load
    def save_config(self, save_directory: str | os.PathLike) -> None:
        os.makedirs(save_directory, exist_ok=True)
        atomic_write_text(
            os.path.join(save_directory, SCHEDULER_CONFIG_NAME), json.dumps(asdict(self.config), indent=2)
        )

    @classmethod
    def from_config_file(cls, directory: str | os.PathLike) -> LocalConsistencyScheduler:
        path = os.path.join(directory, SCHEDULER_CONFIG_NAME)
        with open(path, encoding="utf-8") as f:
            return cls(SchedulerConfig.from_dict(json.load(f)))
