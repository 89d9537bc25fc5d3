"""Weight codec: a task's parameter dict ↔ one normalised vector, in a fixed recorded order (SPEC §3.2).

Two layouts share the class:

* **flat** — every tensor flattened and concatenated in the recorded order (logistic-regression weights, LoRA sets);
  for LoRA the vector splits into (layer, module) block tokens, see :meth:`WeightCodec.token_layout`.
* **rows** — classifier heads as a *set of class rows*: tensors share a free leading class axis (``weight`` (N, d),
  ``bias`` (N,)), and row j of every tensor is concatenated into token j. Nothing depends on N or on class order.

Each tensor is normalised by a scalar mean and std computed over the zoo; the statistics are buffers, so they travel
in the generator's safetensors file and generation de-normalises with exactly the numbers it was trained with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """How a flat (batch, D) sample splits into tokens: per token its type, width, start offset and relative depth."""

    types: tuple[str, ...]  # one entry per token
    dims: tuple[int, ...]
    offsets: tuple[int, ...]
    depths: tuple[float, ...]
    parts: tuple[tuple[tuple[int, ...], ...], ...] = ()  # per token, the shapes of the tensors it concatenates

    @property
    def num_tokens(self) -> int:
        return len(self.types)

    def type_dims(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, dim in zip(self.types, self.dims):
            if out.setdefault(name, dim) != dim:
                raise ValueError(f"tokens of type {name!r} have different widths ({out[name]} and {dim}).")
        return out

    def type_parts(self) -> dict[str, list[list[int]]]:
        """Per token type, the shapes of the tensors a token concatenates (e.g. LoRA A (r, d_in) and B (d_out, r))."""
        parts = self.parts or tuple(((d,),) for d in self.dims)
        out: dict[str, list[list[int]]] = {}
        for name, shapes in zip(self.types, parts):
            shapes = [list(s) for s in shapes]
            if out.setdefault(name, shapes) != shapes:
                raise ValueError(f"tokens of type {name!r} hold tensors of different shapes ({out[name]}, {shapes}).")
        return out

    @classmethod
    def rows(cls, num_rows: int, row_dim: int, type_name: str = "row") -> TokenLayout:
        return cls(
            (type_name,) * num_rows,
            (row_dim,) * num_rows,
            tuple(range(0, num_rows * row_dim, row_dim)),
            (0.0,) * num_rows,
        )


_LORA_SUFFIX = re.compile(r"\.lora_[AB](\.[^.]+)?$")


def lora_block_of(name: str) -> tuple[str, str, int]:
    """(block key, block type, layer index) of a tensor name.

    LoRA tensors (``model.layers.3.self_attn.q_proj.lora_A``) group by their module: type ``q_proj``, layer 3. Other
    tensors group by the module that owns them (``classifier.weight`` and ``classifier.bias`` → block ``classifier``).
    The layer is the last integer path component (−1 when there is none).
    """
    block = _LORA_SUFFIX.sub("", name)
    if block == name and "." in name:
        block = name.rsplit(".", 1)[0]
    parts = block.split(".")
    layers = [int(p) for p in parts if p.isdigit()]
    return block, parts[-1], layers[-1] if layers else -1


NORMALIZATIONS = ("tensor", "element")


class WeightCodec(nn.Module):
    """Parameter dict ↔ normalised vector (flat layout) or row tokens (rows layout); see the module docstring.

    Args:
        shapes: tensor name → shape, in the order the vector is laid out. In the rows layout the shapes omit the
            leading class axis (``{"weight": [d], "bias": []}``).
        row_tokens: use the rows layout.
        normalization: ``"tensor"`` — one mean/std per tensor over the zoo; ``"element"`` — one per coordinate
            (per feature column in the rows layout). Element-wise statistics remove what every task shares, such
            as LoRA's A matrices that all start from one seed and move little, so the generator models only what
            differs between tasks.
    """

    def __init__(
        self, shapes: Mapping[str, Iterable[int]], row_tokens: bool = False, normalization: str = "tensor"
    ) -> None:
        super().__init__()
        if not shapes:
            raise ValueError("shapes must name at least one tensor.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        self.shapes: dict[str, tuple[int, ...]] = {
            name: tuple(int(s) for s in shape) for name, shape in shapes.items()
        }
        self.row_tokens = row_tokens
        self.normalization = normalization
        self.numels = [math.prod(s) for s in self.shapes.values()]
        # Statistics per coordinate of the flat vector (of one row in the rows layout); with "tensor"
        # normalization each tensor's scalar is repeated over its coordinates. One fused affine map either way.
        self.register_buffer("mean", torch.zeros(self.unit_dim))
        self.register_buffer("std", torch.ones(self.unit_dim))

    # ----------------------------------------------------------------- sizes
    @property
    def names(self) -> list[str]:
        return list(self.shapes)

    @property
    def unit_dim(self) -> int:
        """Width of the flat vector (flat layout) or of one row token (rows layout)."""
        return sum(self.numels)

    def dim(self, num_rows: int | None = None) -> int:
        """Length of the encoded vector; the rows layout needs the number of classes."""
        if self.row_tokens:
            if num_rows is None:
                raise ValueError("a rows-layout codec needs num_rows (the number of classes) to size the vector.")
            return num_rows * self.unit_dim
        return self.unit_dim

    @classmethod
    def from_config(cls, config: Mapping) -> WeightCodec:
        """Inverse of :meth:`config` (statistics come with the state dict)."""
        return cls(config["shapes"], config.get("row_tokens", False), config.get("normalization", "tensor"))

    def config(self) -> dict:
        return {
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "row_tokens": self.row_tokens,
            "normalization": self.normalization,
        }

    # ------------------------------------------------------------ statistics
    @torch.no_grad()
    def fit(self, params: Mapping[str, torch.Tensor]) -> WeightCodec:
        """Set the statistics from a *stacked* zoo: ``params[name]`` has shape (num_checkpoints, *shape) (rows
        layout: (num_checkpoints, N, *shape)). Coordinates (or tensors) constant over the zoo keep std 1."""
        self._check_keys(params, "params")
        pieces_mean, pieces_std = [], []
        for name, numel in zip(self.names, self.numels):
            values = params[name].detach().double()
            if not torch.isfinite(values).all():
                raise ValueError(f"params[{name!r}] holds NaN or inf values; the zoo is corrupt or training diverged.")
            flat = values.reshape(-1, numel)  # (checkpoints [× rows], numel)
            if self.normalization == "element":
                mean, std = flat.mean(0), flat.std(0, unbiased=False)
            else:
                mean, std = flat.mean().expand(numel), flat.std(unbiased=False).expand(numel)
            pieces_mean.append(mean)
            pieces_std.append(torch.where(std > 1e-12, std, torch.ones_like(std)))
        self.mean.copy_(torch.cat(pieces_mean))
        self.std.copy_(torch.cat(pieces_std))
        return self

    # ----------------------------------------------------------- encode/decode
    def _check_keys(self, params: Mapping[str, torch.Tensor], arg: str) -> None:
        missing = [k for k in self.names if k not in params]
        unexpected = [k for k in params if k not in self.shapes]
        if missing or unexpected:
            raise ValueError(
                f"{arg} does not match the codec: missing keys {missing}, unexpected keys {unexpected} "
                f"(expected exactly {self.names})."
            )

    def _batch_shape(self, params: Mapping[str, torch.Tensor]) -> torch.Size:
        """Leading dims shared by all tensors (batch dims, plus the class axis in the rows layout)."""
        lead = None
        for name, shape in self.shapes.items():
            t = params[name]
            if tuple(t.shape[t.dim() - len(shape) :]) != shape or t.dim() < len(shape) + self.row_tokens:
                expect = ("(..., N, " if self.row_tokens else "(..., ") + ", ".join(map(str, shape)) + ")"
                raise ValueError(f"params[{name!r}] has shape {tuple(t.shape)}, expected {expect}.")
            this = t.shape[: t.dim() - len(shape)]
            if lead is not None and this != lead:
                raise ValueError(f"params[{name!r}] has leading dims {tuple(this)}, others have {tuple(lead)}.")
            lead = this
        return lead

    def encode(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """dict → normalised vector. Tensors may carry leading batch dims: (..., *shape) → (..., D)."""
        self._check_keys(params, "params")
        lead = self._batch_shape(params)
        # (..., [N,] unit_dim): each tensor flattened in place, concatenated in the recorded order
        flat = torch.cat([params[n].reshape(*lead, numel).float() for n, numel in zip(self.names, self.numels)], -1)
        flat = (flat.to(self.mean.device) - self.mean) / self.std  # zoo tensors are read on the CPU
        return flat.flatten(-2) if self.row_tokens else flat  # rows: (..., N·unit_dim), row-major over classes

    def decode(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised vector (..., D) → dict of (..., *shape) (rows: (..., N, *shape)), de-normalised."""
        if self.row_tokens:
            if vector.shape[-1] % self.unit_dim:
                raise ValueError(
                    f"vector has {vector.shape[-1]} entries, not a multiple of the row width {self.unit_dim}."
                )
            vector = vector.unflatten(-1, (-1, self.unit_dim))  # (..., N, unit_dim)
        elif vector.shape[-1] != self.unit_dim:
            raise ValueError(f"vector has {vector.shape[-1]} entries, the codec expects {self.unit_dim}.")
        flat = vector * self.std + self.mean
        lead = flat.shape[:-1]
        pieces = flat.split(self.numels, dim=-1)
        return {n: p.reshape(*lead, *s) for (n, s), p in zip(self.shapes.items(), pieces)}

    # ---------------------------------------------------------------- tokens
    def token_layout(self, num_rows: int | None = None) -> TokenLayout:
        """Tokens of the encoded vector: class rows (rows layout) or LoRA (layer, module) blocks (flat layout)."""
        if self.row_tokens:
            return TokenLayout.rows(num_rows if num_rows is not None else 0, self.unit_dim)
        blocks: dict[str, list] = {}  # block key → [type, layer, offset, dim, part shapes], in vector order
        offset = 0
        for (name, shape), numel in zip(self.shapes.items(), self.numels):
            key, kind, layer = lora_block_of(name)
            if key in blocks and blocks[key][2] + blocks[key][3] != offset:
                raise ValueError(f"tensors of block {key!r} are not contiguous in the codec order.")
            block = blocks.setdefault(key, [kind, layer, offset, 0, ()])
            block[3] += numel
            block[4] += (shape,)
            offset += numel
        top = max(max(b[1] for b in blocks.values()), 1)
        types, layers, offsets, dims, parts = zip(*blocks.values())
        depths = tuple(max(layer, 0) / top for layer in layers)
        return TokenLayout(tuple(types), tuple(dims), tuple(offsets), depths, tuple(parts))
