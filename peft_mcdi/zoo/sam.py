"""Sharpness-aware minimisation (Foret et al., 2021) around any torch optimizer.

Each step: ascend to w + ρ·g/‖g‖ (g the gradient at w, ‖·‖ over all parameters together), take the gradient there,
return to w, and let the base optimizer step with that gradient. The flatter minima SAM finds make the trajectories
of neighbouring tasks smoother functions of the task, which is what the generator has to learn (SPEC §3.1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class SAM(torch.optim.Optimizer):
    """``SAM(params, torch.optim.Adam, rho=0.05, lr=1e-3)``; call ``step(closure)`` where the closure zeroes the
    gradients, computes the loss, calls ``backward()`` and returns the loss. It is evaluated twice per step."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        rho: float = 0.05,
        **kwargs,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho (the SAM radius) must be >= 0, got {rho}.")
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one source of truth for lr schedules

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        grads = [p.grad.norm(2) for group in self.param_groups for p in group["params"] if p.grad is not None]
        return torch.stack(grads).norm(2) if grads else torch.tensor(0.0)

    @torch.no_grad()
    def first_step(self) -> None:
        """w ← w + ρ·g/‖g‖, remembering the offset."""
        scale_denominator = self._grad_norm() + 1e-12
        for group in self.param_groups:
            scale = group["rho"] / scale_denominator
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale.to(p)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w

    @torch.no_grad()
    def second_step(self) -> None:
        """w ← w − e_w, then the base optimizer's step with the gradient taken at the perturbed point."""
        for group in self.param_groups:
            for p in group["params"]:
                if "e_w" in self.state[p]:
                    p.sub_(self.state[p].pop("e_w"))
        self.base_optimizer.step()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        if closure is None:
            raise ValueError("SAM.step needs a closure that zeroes grads, computes the loss and calls backward().")
        closure = torch.enable_grad()(closure)
        loss = closure()
        if all(group["rho"] == 0 for group in self.param_groups):
            # no ascent: the second pass would recompute the same gradient at the same point, doubling the cost
            self.base_optimizer.step()
            return loss
        self.first_step()
        closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
