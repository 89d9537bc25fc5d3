"""Sampling chains: noise → T denoising steps → normalised weight vector (SPEC §3.6).

Every task of a batch owns a ``torch.Generator`` seeded with its seed, and all of its noise (x_T and each ancestral
z) is drawn from it alone, so a task gets the same weights whether it is generated alone or in a batch.

Token denoisers read x_t only through affine per-type encoders of rank ≤ hidden_dim, while a LoRA token holds
r·(d_in + d_out) numbers (9,216 for SmolLM2's q_proj at r = 8, against 128). Write each token as x = U e + n with U an
orthonormal basis of its encoder's row space: the denoiser sees only e. Every sampler step is affine in (x_t, f, z)
with scalar coefficients and f is affine in the trunk's output h (decode(h) = D h + d, plus skip_t·x_t), so e follows a
chain of its own in k = hidden_dim numbers per token, e ← α e + β Uᵀ(D h + d) + σ ζ with α = c_x − c_eps·skip_t,
β = −c_eps, and n never feeds back: it ends as (I − UUᵀ)(D ĥ + c·d + ν z), where ĥ is a weighted sum of the steps' h
and ν the total weight of the noise that reached it (x_T's and every ancestral z's). The T steps then cost T trunk
passes and one decode instead of T full-width encodes, decodes and updates: the same distribution as the full chain,
not the same draws (a step's noise is drawn in k numbers per token, the rest once at the end).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from peft_mcdi.generator.codec import TokenLayout
from peft_mcdi.generator.denoisers import RowSpace
from peft_mcdi.generator.schedulers import LocalConsistencyScheduler


SAMPLERS = ("ddpm", "ddim")


def _task_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@torch.inference_mode()  # inference mode is per thread, and the helper thread below fills inference tensors
def _noise(generators: list[torch.Generator], out: torch.Tensor) -> torch.Tensor:
    """Fill ``out`` (B, D) with standard normal noise, row i from generator i (the stream ``torch.randn`` draws)."""
    for row, g in zip(out, generators):
        row.normal_(generator=g)
    return out


def usable_cpu_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _spare_cpu_core() -> bool:
    """Whether torch's intra-op pool leaves a core idle for the noise helper thread."""
    return torch.get_num_threads() < usable_cpu_cores()


class _AncestralNoise:
    """The ancestral z of each step, drawn one step ahead on a helper thread while the denoiser runs (CPU).

    A task's generator is sequential and single-threaded: at SmolLM2 sizes its draws are about a third of a DDPM
    chain. Drawing in the same order into two alternating buffers gives exactly the values of drawing inline; the
    helper thread runs while the main thread is inside the denoiser's kernels (which release the GIL). It pays on a
    core the intra-op pool leaves idle (2 cores, 1 thread: the chain 1.3–1.6× faster than drawing inline); when the
    pool already uses every core it competes with the denoiser's kernels and gains nothing (inline / helper 0.90 and
    1.04), so the draws then stay inline (``benchmarks/studies/sampler_threads.py``)."""

    def __init__(self, generators: list[torch.Generator], like: torch.Tensor, num_draws: int) -> None:
        self._generators, self._left, self._index = generators, num_draws, 0
        self._buffers = (torch.empty_like(like), torch.empty_like(like))
        helper = num_draws and like.device.type == "cpu" and _spare_cpu_core()
        self._pool = ThreadPoolExecutor(max_workers=1) if helper else None
        self._next = self._draw()

    def _draw(self) -> Future | torch.Tensor | None:
        if not self._left:
            return None
        self._left -= 1
        self._index ^= 1
        out = self._buffers[self._index]
        return self._pool.submit(_noise, self._generators, out) if self._pool else _noise(self._generators, out)

    def take(self) -> torch.Tensor:
        """The next step's z; starts drawing the one after (into the other buffer)."""
        z = self._next.result() if isinstance(self._next, Future) else self._next
        self._next = self._draw()
        return z

    def __enter__(self) -> _AncestralNoise:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


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
    temperature: float = 1.0,
    layout: TokenLayout | None = None,
    return_chain: bool = False,
    row_space: bool | None = None,
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
        temperature: τ scales x_T and every ancestral z. 1 samples the learned distribution; below 1 the chain
            keeps less of the noise, 0 runs it deterministically from x_T = 0 toward the mode the condition
            implies. Where the training tasks' weights spread widely around what their conditions predict
            (Adam noise in a LoRA zoo), a full-temperature sample carries a spread unrelated to the new task.
        return_chain: also return x_T, …, x_0 (each (B, D)), e.g. for PCA pictures of sampling paths.
        row_space: run the chain in the row space of the denoiser's token encoders (module docstring): ``None``
            where that is at most half the weights and no chain is asked for; ``True`` always (token denoisers
            without ``condition_skip``); ``False`` never. Both give the same distribution, not the same draws.

    Returns:
        x_0 of shape (B, D) (and the chain when asked).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}.")
    if len(seeds) != condition.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {condition.shape[0]} conditions; pass one seed per task.")
    device = condition.device
    B = condition.shape[0]
    generators = _task_generators(seeds, device)
    steps = scheduler.timesteps_for(num_inference_steps)

    cond_emb = denoiser.embed_condition(condition)
    rows = denoiser.condition_rows(condition, layout=layout)
    guided = guidance_scale != 1.0
    if guided:  # conditional and unconditional halves in one forward
        dropped = torch.ones(B, dtype=torch.bool, device=device)
        cond_emb = torch.cat([cond_emb, denoiser.embed_condition(condition, dropped)])
        rows = None if rows is None else torch.cat([rows, denoiser.condition_rows(condition, dropped, layout)])

    # The adaLN modulations depend only on (t, condition): one batched computation for the whole chain.
    ts = torch.tensor([t for t, _ in steps], device=device)[:, None].expand(-1, cond_emb.shape[0])  # (S, B')
    mods = denoiser.modulations(ts, cond_emb if cond_emb.dim() == 2 else None)
    token_bias = denoiser.token_bias(cond_emb, layout)
    skips = denoiser.skip_scale(ts)  # (S, B') or None

    coefficients = [scheduler.step_coefficients(t, t_prev, sampler) for t, t_prev in steps]
    wanted = not return_chain if row_space is None else row_space
    spaces = denoiser.input_row_space(layout, device) if wanted else None
    if row_space and (spaces is None or return_chain):
        raise ValueError(
            "row_space=True needs a token denoiser without condition_skip and return_chain=False (the chain's "
            "states are never formed in full)."
        )
    if spaces is not None and (row_space or sum(n * space.rank for n, space in spaces) * 2 <= dim):
        skips = None if skips is None else skips[:, 0].tolist()
        run = _RowSpaceChain(denoiser, layout, spaces, coefficients, skips, guidance_scale if guided else None)
        return run(mods, token_bias, generators, B, dim, temperature)

    # x lives in one buffer updated in place: D can be ~10⁶, and a fresh (B, D) tensor per step costs more in
    # allocation and page faults than the arithmetic on it.
    # At temperature 0 no noise is drawn at all (the draws are a large share of a chain's time at LoRA sizes).
    warm = temperature > 0
    x = (
        _noise(generators, torch.empty(B, dim, device=device)).mul_(temperature)
        if warm
        else torch.zeros(B, dim, device=device)
    )
    chain = [x.clone()] if return_chain else None
    num_draws = sum(sigma > 0 for *_, sigma in coefficients) if warm else 0
    with _AncestralNoise(generators, x, num_draws) as noise:
        for s, (c_x, c_eps, sigma) in enumerate(coefficients):
            x_in = torch.cat([x, x]) if guided else x
            step_mods = [tuple(m[s] for m in block) for block in mods]
            f = denoiser.denoise(x_in, step_mods, token_bias, layout, None if skips is None else skips[s], rows)
            if guided:
                f_cond, f_null = f.chunk(2)
                f = f_cond.sub_(f_null).mul_(guidance_scale).add_(f_null)
            x.mul_(c_x).add_(f, alpha=-c_eps)
            if sigma > 0 and warm:
                x.add_(noise.take(), alpha=sigma * temperature)
            if return_chain:
                chain.append(x.clone())
    return (x, chain) if return_chain else x


def _draw_aside(generators: list[torch.Generator], out: torch.Tensor) -> Future | torch.Tensor:
    """:func:`_noise` on a helper thread when the intra-op pool leaves a core idle (see :class:`_AncestralNoise`),
    inline otherwise; ``.result()`` either way."""
    if out.device.type == "cpu" and _spare_cpu_core():
        pool = ThreadPoolExecutor(max_workers=1)
        future = pool.submit(_noise, generators, out)
        pool.shutdown(wait=False)  # the draw goes on; the thread ends with it
        return future
    future = Future()
    future.set_result(_noise(generators, out))
    return future


class _RowSpaceChain:
    """The chain in the token encoders' row spaces (module docstring), for one list of step coefficients."""

    def __init__(self, denoiser, layout: TokenLayout, spaces: list[tuple[int, RowSpace]], coefficients, skips,
                 guidance_scale: float | None) -> None:  # fmt: skip
        self.denoiser, self.layout, self.spaces, self.guidance_scale = denoiser, layout, spaces, guidance_scale
        skips = skips or [0.0] * len(coefficients)
        self.alphas = [c_x - c_eps * k for (c_x, c_eps, _), k in zip(coefficients, skips)]
        self.betas = [-c_eps for _, c_eps, _ in coefficients]
        self.sigmas = [sigma for *_, sigma in coefficients]
        # x_0 = G_T·x_T + Σ_s G_s·(β_s·f_s + σ_s·z_s) with G_s = Π_{s' > s} α_s': each step's weight in x_0
        self.weights, self.noise_weights, later = [0.0] * len(coefficients), [0.0] * len(coefficients), 1.0
        for s in reversed(range(len(coefficients))):
            self.weights[s], self.noise_weights[s] = later * self.betas[s], later * self.sigmas[s]
            later *= self.alphas[s]
        self.start_weight = later
        self.tokens = [n for n, _ in spaces]
        self.sizes = [n * space.rank for n, space in spaces]

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Row-space coordinates (B, K) → per group (B, n, k)."""
        return [v.unflatten(1, (n, -1)) for v, n in zip(flat.split(self.sizes, dim=1), self.tokens)]

    def __call__(self, mods, token_bias, generators, B: int, dim: int, temperature: float) -> torch.Tensor:
        device, K = token_bias.device, sum(self.sizes)
        draws = [s for s, sigma in enumerate(self.sigmas) if sigma > 0] if temperature > 0 else []
        if temperature > 0:  # x_T's coordinates, each ancestral step's, then the null-space z: each task's stream
            zeta = _noise(generators, torch.empty(B, (1 + len(draws)) * K, device=device)).mul_(temperature)
            e, *steps = (self.split(z) for z in zeta.split(K, dim=1))
            step_noise = dict(zip(draws, steps))
            null = _draw_aside(generators, torch.empty(B, dim, device=device))
            spread = self.start_weight**2 + sum(self.noise_weights[s] ** 2 for s in draws)
        else:
            e = [torch.zeros(B, n, space.rank, device=device) for n, space in self.spaces]
            step_noise, null, spread = {}, None, 0.0
        h_sum = None
        for s, (alpha, beta, sigma) in enumerate(zip(self.alphas, self.betas, self.sigmas)):
            h = torch.cat([e_g @ space.encode + space.bias for e_g, (_, space) in zip(e, self.spaces)], dim=1)
            if self.guidance_scale is not None:
                h = torch.cat([h, h])
            h = self.denoiser.trunk(h + token_bias, [tuple(m[s] for m in block) for block in mods])
            if self.guidance_scale is not None:  # f_null + s·(f_cond − f_null) of an affine decoder
                h_cond, h_null = h.chunk(2)
                h = torch.lerp(h_null, h_cond, self.guidance_scale)
            h_sum = h * self.weights[s] if h_sum is None else h_sum.add_(h, alpha=self.weights[s])
            noise = step_noise.get(s, [None] * len(e))
            for j, (h_g, (_, space)) in enumerate(zip(h.split(self.tokens, dim=1), self.spaces)):
                update = torch.addmm(space.offset, h_g.flatten(0, 1), space.decode).view_as(e[j])
                e[j] = torch.add(update.mul_(beta), e[j], alpha=alpha)
                if noise[j] is not None:
                    e[j].add_(noise[j], alpha=sigma)
        null = None if null is None else self.denoiser.gather(null.result(), self.layout)
        null_scale, total = temperature * math.sqrt(spread), sum(self.weights)
        pieces = []
        for j, (e_g, h_g, (_, space)) in enumerate(zip(e, h_sum.split(self.tokens, dim=1), self.spaces)):
            # y = D ĥ + Σw·d + ν z and its coordinates yU from the row space's own maps; x_0 = U e + (y − yUUᵀ)
            y = space.full_decode(h_g).add_(space.decode_bias, alpha=total - 1)
            coords = torch.addmm(space.offset * total, h_g.flatten(0, 1), space.decode).view_as(e_g)
            if null is not None:
                y.add_(null[j], alpha=null_scale)
                coords.add_(space.coordinates(null[j]), alpha=null_scale)
            pieces.append(y.add_(space.expand(e_g - coords)))
        return self.denoiser.scatter(pieces, self.layout)
