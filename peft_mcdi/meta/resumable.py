"""A resumable Adam loop over random rows of the training tasks, for the stages trained through the task loss (the
one-pass baselines, fine-tuning through the sampling chain). On a real base model each of those stages is an hour
of CPU, and sessions end hard: every ``CHECKPOINT_EVERY`` steps the module, Adam's state, the RNG and the loss curve
and at the end are written atomically (safetensors, weights-only optimizer state, JSON): a rerun continues bit for bit,
and a rerun of a finished stage only reads it back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from peft_mcdi.utils import atomic_write, atomic_write_text


CHECKPOINT_EVERY = 100  # steps between checkpoints


def train_resumable(
    module: torch.nn.Module,
    loss_of_rows: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    num_rows: int,
    num_steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    identity: str,
    desc: str,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
) -> list[float]:
    """Adam on ``module``'s parameters for ``num_steps`` steps, each on ``batch_size`` rows drawn uniformly from
    ``range(num_rows)``; returns the loss curve. ``identity`` names the run (a checkpoint of another run in
    ``checkpoint_dir`` is an error, not silently continued)."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    losses = _resume(folder, identity, module, optimizer, g) if folder is not None else []
    bar = tqdm(range(len(losses), num_steps), desc=desc, disable=not progress, initial=len(losses))
    for step in bar:
        loss = loss_of_rows(torch.randint(num_rows, (batch_size,), generator=g), g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.4f}")
        if folder is not None and ((step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == num_steps):
            _save(folder, identity, module, optimizer, g, losses)
    return losses


def _save(folder: Path, identity: str, module, optimizer, g: torch.Generator, losses: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {**{f"module.{k}": v.contiguous() for k, v in module.state_dict().items()}, "rng": g.get_state()}
    atomic_write(folder / "state.safetensors", lambda tmp: save_file(tensors, tmp))
    atomic_write(folder / "optimizer.pt", lambda tmp: torch.save(optimizer.state_dict(), tmp))
    atomic_write_text(folder / "state.json", json.dumps({"identity": identity, "losses": losses}))


def _resume(folder: Path, identity: str, module, optimizer, g: torch.Generator) -> list[float]:
    """The losses so far, after loading the module, optimizer and RNG of ``folder``'s checkpoint (none: [])."""
    if not (folder / "state.json").is_file():
        return []
    meta = json.loads((folder / "state.json").read_text())
    if meta["identity"] != identity:
        raise ValueError(f"{folder} holds a checkpoint of another training run; use another folder or delete it.")
    tensors = load_file(folder / "state.safetensors")
    module.load_state_dict({k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")})
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    g.set_state(tensors["rng"])
    return meta["losses"]
