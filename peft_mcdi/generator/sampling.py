"""Sampling chains: noise → T denoising steps → normalised weight vector (SPEC §3.6).

Every task of a batch owns a ``torch.Generator`` seeded with its seed, and all of its noise (x_T and each ancestral
z) is drawn from it alone, so a task gets the same weights whether it is generated alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from peft_mcdi.generator.codec import TokenLayout
from peft_mcdi.generator.schedulers import LocalConsistencyScheduler


SAMPLERS = ("ddpm", "ddim")


def _task_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _noise(generators: list[torch.Generator], dim: int, device: torch.device) -> torch.Tensor:
    return torch.stack([torch.randn(dim, generator=g, device=device) for g in generators])


@torch.inference_mode()
def sample(
    denoiser: torch.nn.Module,
    scheduler: LocalConsistencyScheduler,
    condition: torch.Tensor,
    dim: int,
    seeds: Sequence[int],
    sampler: str = "ddpm",
    num_inference_steps: int | None = None,
    guidance_scale: float = 1.0,
    layout: TokenLayout | None = None,
    return_chain: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the reverse chain for a batch of task conditions.

    Args:
        condition: (B, C) — or (B, N, C) for per-token conditions — on the denoiser's device.
        dim: length of the weight vector in codec space.
        seeds: one seed per task (length B).
        sampler: ``"ddpm"`` (ancestral, default; with all T steps it passes the Mc-Di local waypoints) or ``"ddim"``
            (deterministic; with fewer steps it is faster and aims at the final target only).
        num_inference_steps: steps to take, ≤ T; ``None`` takes all T.
        guidance_scale: classifier-free guidance s, f = f_null + s·(f_cond − f_null); 1 disables it (one forward).
        return_chain: also return x_T, …, x_0 (each (B, D)), e.g. for PCA pictures of sampling paths.

    Returns:
        x_0 of shape (B, D) (and the chain when asked).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
    if len(seeds) != condition.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {condition.shape[0]} conditions; pass one seed per task.")
    device = condition.device
    B = condition.shape[0]
    generators = _task_generators(seeds, device)
    steps = scheduler.timesteps_for(num_inference_steps)

    cond_emb = denoiser.embed_condition(condition)
    rows = denoiser.condition_rows(condition)
    guided = guidance_scale != 1.0
    if guided:  # conditional and unconditional halves in one forward
        dropped = torch.ones(B, dtype=torch.bool, device=device)
        cond_emb = torch.cat([cond_emb, denoiser.embed_condition(condition, dropped)])
        rows = None if rows is None else torch.cat([rows, denoiser.condition_rows(condition, dropped)])

    # The adaLN modulations depend only on (t, condition): one batched computation for the whole chain.
    ts = torch.tensor([t for t, _ in steps], device=device)[:, None].expand(-1, cond_emb.shape[0])  # (S, B')
    mods = denoiser.modulations(ts, cond_emb if cond_emb.dim() == 2 else None)
    token_bias = denoiser.token_bias(cond_emb, layout)
    skips = denoiser.skip_scale(ts)  # (S, B') or None

    x = _noise(generators, dim, device)
    chain = [x] if return_chain else None
    for s, (t, t_prev) in enumerate(steps):
        c_x, c_eps, sigma = scheduler.step_coefficients(t, t_prev, sampler)
        x_in = torch.cat([x, x]) if guided else x
        step_mods = [tuple(m[s] for m in block) for block in mods]
        f = denoiser.denoise(x_in, step_mods, token_bias, layout, None if skips is None else skips[s], rows)
        if guided:
            f_cond, f_null = f.chunk(2)
            f = f_null + guidance_scale * (f_cond - f_null)
        x = (x * c_x).add_(f, alpha=-c_eps)  # one pass each, no temporaries: D can be ~10⁶
        if sigma > 0:
            x.add_(_noise(generators, dim, device), alpha=sigma)
        if return_chain:
            chain.append(x)
    return (x, chain) if return_chain else x
