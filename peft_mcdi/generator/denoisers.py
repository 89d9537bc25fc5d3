"""Denoisers: networks that map (noisy weights x_t, step t, task condition) → ε-prediction, nothing more.

They never see an alpha table (the scheduler owns those). Two families:

* :class:`ResidualMLPDenoiser` — for flat weight vectors: residual MLP blocks modulated by adaLN-Zero from the step
  and the condition (DiT-style FiLM).
* :class:`TokenSetDenoiser` — for structured weights: a transformer over tokens without positional order, so it is
  permutation-equivariant in class-row tokens (any number of classes), and addresses LoRA (layer, module) blocks with a
  module-type embedding plus a relative-depth encoding. Its size depends on the block widths and the number of module
  types, never on the number of layers (SPEC §3.2).

Both take ``drop_condition`` (batch,) bool: those samples see a learned null condition instead of theirs. Training
with random drops is what makes classifier-free guidance possible at sampling time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import nn

from peft_mcdi.generator.codec import TokenLayout
from peft_mcdi.generator.embeddings import RelativeDepthEncoding, TimestepEmbedding
from peft_mcdi.utils import DictConfigMixin


DENOISER_TYPES = ("mlp", "tokens")
CONDITION_NORMALIZATIONS = ("none", "standardize")


@dataclass
class DenoiserConfig(DictConfigMixin):
    """Architecture of the denoiser; JSON round-trips. The paper does not specify one (SPEC §5)."""

    type: Literal["mlp", "tokens"] = field(
        default="mlp", metadata={"help": f"Denoiser family, one of {DENOISER_TYPES}."}
    )
    condition_dim: int = field(default=384, metadata={"help": "Width of the task condition (384 for MiniLM-L6)."})
    hidden_dim: int = field(default=256, metadata={"help": "Width of the residual stream."})
    num_layers: int = field(default=4, metadata={"help": "Number of residual (MLP) or transformer blocks."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads (tokens only)."})
    mlp_ratio: float = field(default=2.0, metadata={"help": "Hidden width of each block's MLP, as a multiple."})
    lora_factor_dim: int = field(
        default=32,
        metadata={
            "help": "tokens only: width per rank component in the LoRA-aware projections of [A (r, d_in), "
            "B (d_out, r)] blocks (cost and size ∝ r·(d_in + d_out)·width instead of ·hidden_dim); 0 = dense."
        },
    )
    per_token_condition: bool = field(
        default=False,
        metadata={
            "help": "tokens only: the condition is one vector per token (class prototypes tied to head rows), "
            "shape (batch, N, condition_dim), instead of one per task."
        },
    )
    condition_normalization: Literal["none", "standardize"] = field(
        default="none",
        metadata={
            "help": "'standardize': subtract the training tasks' mean condition and divide by their RMS spread (one "
            "scalar), statistics fitted with the training conditions and saved with the weights. Sentence "
            "embeddings of templated descriptions are unit-norm and alike, so raw, what tells two tasks apart "
            "reaches the adaLN modulation far below the step embedding's scale. 'none': conditions as given.",
            "omit_default": True,
        },
    )
    condition_skip: bool = field(
        default=False,
        metadata={
            "help": "per-token conditions only: add to each token's ε-prediction learned, step-gated, per-coordinate "
            "functions of its own condition c, the mean condition c̄ and tanh(u ⊙ RMS-normalised (c − c̄)), in "
            "weight space: a head row trained by Adam is close to such a function of the class prototypes, and a "
            "hidden_dim-wide trunk cannot pass a condition_dim-wide signal through."
        },
    )

    def __post_init__(self) -> None:
        if self.type not in DENOISER_TYPES:
            raise ValueError(f"denoiser type must be one of {DENOISER_TYPES}, got {self.type!r}.")
        if self.condition_normalization not in CONDITION_NORMALIZATIONS:
            raise ValueError(
                f"condition_normalization must be one of {CONDITION_NORMALIZATIONS}, got "
                f"{self.condition_normalization!r}."
            )
        if not isinstance(self.lora_factor_dim, int) or self.lora_factor_dim < 0:
            raise ValueError(f"lora_factor_dim must be an int >= 0, got {self.lora_factor_dim!r}.")
        for name in ("condition_dim", "hidden_dim", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"denoiser {name} must be a positive int, got {value!r}.")
        if self.type == "tokens" and self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads}).")
        if self.per_token_condition and self.type != "tokens":
            raise ValueError("per_token_condition=True needs type='tokens'.")
        if self.condition_skip and not self.per_token_condition:
            raise ValueError("condition_skip=True needs per_token_condition=True (one condition per token).")


class AdaLNBlock(nn.Module):
    """x + gate·MLP(LN(x)·(1+scale) + shift) (preceded by the same around self-attention when ``num_heads`` > 0).

    The modulation (shift, 1+scale, gate) comes from the step + condition embedding through a zero-initialised linear
    map, so every block starts as the identity (adaLN-Zero). It is computed by :meth:`modulation` apart from the
    block, because along a sampling chain it depends only on t: samplers compute it for all steps in one matmul.
    """

    def __init__(self, hidden_dim: int, mlp_ratio: float, num_heads: int = 0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_mods = 6 if num_heads else 3
        self.norm = nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)
        self.modulation_proj = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, self.num_mods * hidden_dim))
        nn.init.zeros_(self.modulation_proj[1].weight)
        nn.init.zeros_(self.modulation_proj[1].bias)
        inner = int(hidden_dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_dim, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden_dim)
        )
        if num_heads:
            self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
            self.proj = nn.Linear(hidden_dim, hidden_dim)

    def modulation(self, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """emb (..., H) → (shift, 1 + scale, gate) × (1 or 2 sub-blocks), each (..., H)."""
        mods = list(self.modulation_proj(emb).chunk(self.num_mods, dim=-1))
        mods[1::3] = [m + 1 for m in mods[1::3]]
        return tuple(mods)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, N, H = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, H // self.num_heads).permute(2, 0, 3, 1, 4)  # (B,h,N,d)
        # Written out rather than F.scaled_dot_product_attention: vmap (Reptile's batched inner loop) has a batching
        # rule for these ops, not for the fused CPU kernel. No mask, no order: equivariant in the tokens.
        att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        out = att.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, N, H))

    def forward(self, x: torch.Tensor, mods: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if x.dim() == 3:  # tokens: (B, H) modulations broadcast over the token axis
            mods = tuple(m.unsqueeze(-2) for m in mods)
        if self.num_heads:
            shift, scale, gate = mods[:3]
            x = torch.addcmul(x, gate, self.attention(torch.addcmul(shift, self.norm(x), scale)))
        shift, scale, gate = mods[-3:]
        return torch.addcmul(x, gate, self.mlp(torch.addcmul(shift, self.norm(x), scale)))


class _Denoiser(nn.Module):
    """What both families share: step embedding, condition projection with a learned null condition, output head."""

    def __init__(self, config: DenoiserConfig, num_train_timesteps: int) -> None:
        super().__init__()
        self.config = config
        H = config.hidden_dim
        self.time_embed = TimestepEmbedding(num_train_timesteps, H)
        self.cond_proj = nn.Sequential(nn.Linear(config.condition_dim, H), nn.SiLU(), nn.Linear(H, H))
        self.null_condition = nn.Parameter(torch.zeros(H))
        if config.condition_normalization == "standardize":
            self.register_buffer("condition_shift", torch.zeros(config.condition_dim))
            self.register_buffer("condition_scale", torch.ones(()))

    @torch.no_grad()
    def fit_condition_statistics(self, conditions: torch.Tensor) -> None:
        """Set the ``'standardize'`` statistics from the training conditions (..., C); a no-op otherwise."""
        if self.config.condition_normalization != "standardize":
            return
        flat = conditions.reshape(-1, conditions.shape[-1]).float().to(self.condition_shift.device)
        self.condition_shift.copy_(flat.mean(0))
        self.condition_scale.copy_((flat - self.condition_shift).pow(2).mean().sqrt().clamp_min(1e-8))

    def embed_condition(self, condition: torch.Tensor, drop_condition: torch.Tensor | None = None) -> torch.Tensor:
        """Condition (B, C) or (B, N, C) → (B, H) / (B, N, H); dropped samples get the null embedding.

        Constant along a sampling chain, so samplers call it once and pass the result to :meth:`denoise`.
        """
        expect = 3 if self.config.per_token_condition else 2
        if condition.dim() != expect or condition.shape[-1] != self.config.condition_dim:
            want = "(batch, N, condition_dim)" if expect == 3 else "(batch, condition_dim)"
            raise ValueError(
                f"condition has shape {tuple(condition.shape)}, expected {want} with condition_dim="
                f"{self.config.condition_dim}."
            )
        condition = condition.float()
        if self.config.condition_normalization == "standardize":
            condition = (condition - self.condition_shift) / self.condition_scale
        emb = self.cond_proj(condition)
        if drop_condition is not None:
            mask = drop_condition.view(-1, *([1] * (emb.dim() - 1)))
            emb = torch.where(mask, self.null_condition.to(emb.dtype), emb)
        return emb

    def modulations(self, timesteps: torch.Tensor, cond_emb: torch.Tensor | None) -> list[tuple[torch.Tensor, ...]]:
        """Per block, the adaLN modulation for steps ``timesteps`` (..., B); a per-task condition (B, H) joins the
        step embedding here, a per-token one goes into :meth:`token_bias` instead (pass ``None``)."""
        emb = self.time_embed.table()[timesteps]  # (..., B, H)
        if not self.config.per_token_condition:
            emb = emb + cond_emb
        return [block.modulation(emb) for block in self.blocks]

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor,
        drop_condition: torch.Tensor | None = None,
        layout: TokenLayout | None = None,
    ) -> torch.Tensor:
        """sample (B, D), timesteps (B,) long, condition (B, C) [or (B, N, C)] → ε-prediction (B, D)."""
        cond_emb = self.embed_condition(condition, drop_condition)
        mods = self.modulations(timesteps, None if self.config.per_token_condition else cond_emb)
        bias, skip = self.token_bias(cond_emb, layout), self.skip_scale(timesteps)
        return self.denoise(sample, mods, bias, layout, skip, self.condition_rows(condition, drop_condition, layout))

    def condition_rows(
        self, condition: torch.Tensor, drop_condition: torch.Tensor | None = None, layout: TokenLayout | None = None
    ) -> torch.Tensor | None:
        """What the condition skip adds before its gates (token denoisers with ``condition_skip`` only, else None):
        per token in sequence order, the features of its condition scaled per weight coordinate (B, N, 3, C), zero
        for dropped samples. Constant along a chain, so a sampler computes it once."""
        return None

    def skip_scale(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Per-step coefficient of the input added to the output (token denoisers only), shape like ``timesteps``."""
        return None

    def token_bias(self, cond_emb: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor | None:
        """Per-token additive embedding (token denoisers only); see :meth:`TokenSetDenoiser.token_bias`."""
        return None

    def input_row_space(self, layout: TokenLayout | None, device: torch.device) -> list[tuple[int, RowSpace]] | None:
        """Token denoisers only, see :meth:`TokenSetDenoiser.input_row_space`."""
        return None


class ResidualMLPDenoiser(_Denoiser):
    def __init__(self, config: DenoiserConfig, num_train_timesteps: int, sample_dim: int) -> None:
        super().__init__(config, num_train_timesteps)
        H = config.hidden_dim
        self.sample_dim = sample_dim
        self.proj_in = nn.Linear(sample_dim, H)
        self.blocks = nn.ModuleList(AdaLNBlock(H, config.mlp_ratio) for _ in range(config.num_layers))
        self.norm_out = nn.LayerNorm(H)
        self.proj_out = nn.Linear(H, sample_dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def denoise(self, sample, mods, token_bias=None, layout=None, skip=None, condition_rows=None) -> torch.Tensor:
        """sample (B, D) → ε-prediction (B, D), given :meth:`modulations` (the condition enters through them)."""
        if sample.shape[-1] != self.sample_dim:
            raise ValueError(f"sample has width {sample.shape[-1]}, this denoiser expects {self.sample_dim}.")
        h = self.proj_in(sample)
        for block, block_mods in zip(self.blocks, mods):
            h = block(h, block_mods)
        return self.proj_out(self.norm_out(h))


class DenseProjection(nn.Module):
    """Token ↔ hidden state by one linear map each way (output zero-initialised)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.encode = nn.Linear(dim, hidden_dim)
        self.decode = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(self.decode.weight)
        nn.init.zeros_(self.decode.bias)

    def frame(self) -> Frame:
        """The token's own coordinates (see :class:`Frame`): a dense encoder may read every number."""
        return Frame(nn.Identity(), nn.Identity(), self.encode.in_features)


class Frame(NamedTuple):
    """An orthonormal frame P (d × m) that holds the row space of a token encoder: ``to_frame`` x ↦ xP and
    ``from_frame`` c ↦ cPᵀ, for row vectors. Row spaces are found and applied inside it, which costs less than in
    the d coordinates when the encoder has structure (LoRA rank components)."""

    to_frame: Callable[[torch.Tensor], torch.Tensor]
    from_frame: Callable[[torch.Tensor], torch.Tensor]
    width: int  # m


class LoRAPairProjection(nn.Module):
    """A LoRA block [A (r, d_in), B (d_out, r)] read as r rank components (a_j, b_j).

    Each side of a component is projected to ``width`` features by weights shared over the r components, and the
    r·2·width features are mixed into one token (and back). Versus a dense map of the r·(d_in + d_out) numbers this
    cuts cost and size by about hidden_dim/width, which is what keeps a 30-layer LoRA set in the latency budget.
    Components keep their positions: the zoo's A starts from one fixed seed, so component j is the same in every task.
    """

    def __init__(self, rank: int, d_in: int, d_out: int, hidden_dim: int, width: int) -> None:
        super().__init__()
        self.rank, self.d_in, self.d_out, self.width = rank, d_in, d_out, width
        self.in_a, self.in_b = nn.Linear(d_in, width), nn.Linear(d_out, width)
        self.mix_in = nn.Linear(rank * 2 * width, hidden_dim)
        self.mix_out = nn.Linear(hidden_dim, rank * 2 * width)
        self.out_a, self.out_b = nn.Linear(width, d_in), nn.Linear(width, d_out)
        for lin in (self.out_a, self.out_b):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @torch.no_grad()
    def frame(self) -> Frame:
        """Per rank component, orthonormal bases of ``in_a``'s and ``in_b``'s row spaces (d_in × width, d_out ×
        width): the encoder reads a token only through them, r·2·width numbers instead of r·(d_in + d_out)."""
        q_a, _ = torch.linalg.qr(self.in_a.weight.T)
        q_b, _ = torch.linalg.qr(self.in_b.weight.T)
        r, d_in, d_out, w_a = self.rank, self.d_in, self.d_out, q_a.shape[1]

        def to_frame(x: torch.Tensor) -> torch.Tensor:
            a = x[..., : r * d_in].unflatten(-1, (r, d_in)) @ q_a  # (..., r, w_a)
            b = x[..., r * d_in :].unflatten(-1, (d_out, r)).transpose(-1, -2) @ q_b  # (..., r, w_b)
            return torch.cat([a, b], dim=-1).flatten(-2)

        def from_frame(c: torch.Tensor) -> torch.Tensor:
            c = c.unflatten(-1, (r, -1))
            a = c[..., :w_a] @ q_a.T  # (..., r, d_in)
            b = (c[..., w_a:] @ q_b.T).transpose(-1, -2)  # (..., d_out, r)
            return torch.cat([a.flatten(-2), b.flatten(-2)], dim=-1)

        return Frame(to_frame, from_frame, r * (w_a + q_b.shape[1]))

    @staticmethod
    def matches(parts: list[list[int]]) -> bool:
        return len(parts) == 2 and len(parts[0]) == 2 and len(parts[1]) == 2 and parts[0][0] == parts[1][1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        r, d_in, d_out = self.rank, self.d_in, self.d_out
        a = x[..., : r * d_in].unflatten(-1, (r, d_in))  # (..., r, d_in): rows of A
        b = x[..., r * d_in :].unflatten(-1, (d_out, r)).transpose(-1, -2)  # (..., r, d_out): columns of B
        z = torch.cat([self.in_a(a), self.in_b(b)], dim=-1)  # (..., r, 2·width)
        return self.mix_in(z.flatten(-2))  # (..., hidden)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        z = self.mix_out(h).unflatten(-1, (self.rank, 2 * self.width))  # (..., r, 2·width)
        a = self.out_a(z[..., : self.width])  # (..., r, d_in)
        b = self.out_b(z[..., self.width :]).transpose(-1, -2)  # (..., d_out, r)
        return torch.cat([a.flatten(-2), b.flatten(-2)], dim=-1)


def token_projection(parts: list[list[int]], hidden_dim: int, lora_factor_dim: int) -> nn.Module:
    """LoRA-aware projection for [A (r, d_in), B (d_out, r)] tokens when enabled, a dense one otherwise."""
    if lora_factor_dim and LoRAPairProjection.matches(parts):
        (r, d_in), (d_out, _) = parts
        return LoRAPairProjection(r, d_in, d_out, hidden_dim, lora_factor_dim)
    return DenseProjection(sum(math.prod(p) for p in parts), hidden_dim)


@dataclass(frozen=True)
class _TypeGroup:
    """The tokens of one type: where they sit in the flat sample and in the token sequence."""

    name: str
    type_id: int
    dim: int
    start: int | None  # first flat position when the group's tokens are back to back, else None
    flat: torch.Tensor  # (n, dim) flat positions, for the general gather/scatter
    tokens: torch.Tensor  # (n,) token indices in layout order


class TokenSetDenoiser(_Denoiser):
    """Transformer over weight tokens; one input/output projection per token type (module name, or "row").

    The sequence is the tokens grouped by type (attention has no order, so grouping changes nothing but cost): each
    type is read with one slice (or one gather when its tokens are interleaved with others) and written back the same
    way. Codecs that lay LoRA out module-major (all q_proj blocks, then all v_proj blocks) get slices only.
    """

    def __init__(
        self, config: DenoiserConfig, num_train_timesteps: int, token_parts: dict[str, list[list[int]]]
    ) -> None:
        super().__init__(config, num_train_timesteps)
        H = config.hidden_dim
        token_parts = dict(sorted(token_parts.items()))
        self.token_dims = {t: sum(math.prod(p) for p in parts) for t, parts in token_parts.items()}
        self.projections = nn.ModuleDict(
            {t: token_projection(parts, H, config.lora_factor_dim) for t, parts in token_parts.items()}
        )
        self.type_embed = nn.Parameter(torch.zeros(len(self.token_dims), H))
        self.depth_embed = RelativeDepthEncoding(H)
        self.blocks = nn.ModuleList(
            AdaLNBlock(H, config.mlp_ratio, num_heads=config.num_heads) for _ in range(config.num_layers)
        )
        self.norm_out = nn.LayerNorm(H)
        # A learned per-step skip, ε̂ = trunk(x_t) + s_t·x_t (zero at init). A token squeezes thousands of weights
        # into hidden_dim features, so the trunk alone cannot pass x_t through; yet most of what an ε-prediction
        # needs is a per-step rescaling of x_t (for unit-variance data the optimum is exactly √(1−ᾱ_t)·x_t). The
        # skip carries that; the trunk models the task-dependent structure.
        self.skip = nn.Parameter(torch.zeros(num_train_timesteps + 1))
        if config.condition_skip:
            narrow = {t: d for t, d in self.token_dims.items() if d < config.condition_dim}
            if narrow:
                raise ValueError(
                    f"condition_skip writes the condition into each token's first condition_dim="
                    f"{config.condition_dim} entries, but tokens {narrow} are narrower."
                )
            # ε̂ᵢ += Σ_k g_k,i · φ_k(c)ᵢ ⊙ v_k for the features φ = (cᵢ, c̄, tanh(u ⊙ (cᵢ − c̄)/rms)): gates g per token
            # and step from its hidden state; v per weight coordinate (codec statistics differ per coordinate). The
            # tanh feature is there because Adam's first steps move every coordinate by ±lr (a sign pattern of the
            # class's difference from the others), which no linear map of the prototypes gives. v starts at zero,
            # so the skip starts switched off.
            self.condition_gate = nn.Linear(H, 3)
            self.condition_skip_scale = nn.Parameter(torch.zeros(3, config.condition_dim))
            self.condition_sharpness = nn.Parameter(torch.ones(config.condition_dim))
        self._plans: dict = {}
        self._row_space_key, self._row_spaces = None, {}

    def _plan(self, layout: TokenLayout, device: torch.device) -> tuple[list[_TypeGroup], torch.Tensor, bool]:
        """(groups, sequence order as layout token indices, whether every group is a slice). Cached per layout."""
        key = (layout, device)
        if key not in self._plans:
            unknown = sorted(set(layout.types) - set(self.token_dims))
            if unknown:
                raise ValueError(
                    f"layout has token types {unknown} this denoiser has no projection for; "
                    f"known types: {list(self.token_dims)}."
                )
            groups = []
            for type_id, (name, dim) in enumerate(self.token_dims.items()):
                tok = [j for j, t in enumerate(layout.types) if t == name]
                if not tok:
                    continue
                if any(layout.dims[j] != dim for j in tok):
                    raise ValueError(f"tokens of type {name!r} must have width {dim}.")
                starts = [layout.offsets[j] for j in tok]
                back_to_back = starts == list(range(starts[0], starts[0] + dim * len(tok), dim))
                flat = torch.tensor(starts, device=device)[:, None] + torch.arange(dim, device=device)
                groups.append(_TypeGroup(name, type_id, dim, starts[0] if back_to_back else None, flat,
                                         torch.tensor(tok, device=device)))  # fmt: skip
            order = torch.cat([g.tokens for g in groups])
            self._plans[key] = (groups, order, all(g.start is not None for g in groups))
        return self._plans[key]

    def token_bias(self, cond_emb: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        """What is added to every token before the blocks, in sequence order: its type embedding, its relative-depth
        encoding and, for per-token conditions, its condition. (B or 1, N, H); constant along a sampling chain."""
        if layout is None:
            raise ValueError("TokenSetDenoiser needs the token layout of the sample (codec.token_layout(...)).")
        groups, order, _ = self._plan(layout, cond_emb.device)
        type_ids = torch.cat([torch.full_like(g.tokens, g.type_id) for g in groups])
        depths = torch.tensor(layout.depths, device=cond_emb.device)[order]
        bias = (self.type_embed[type_ids] + self.depth_embed(depths))[None]  # (1, N, H)
        if self.config.per_token_condition:
            if cond_emb.shape[1] != layout.num_tokens:
                raise ValueError(f"condition has {cond_emb.shape[1]} tokens, the sample has {layout.num_tokens}.")
            bias = bias + cond_emb[:, order]
        return bias

    def skip_scale(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.skip[timesteps]

    def condition_rows(self, condition, drop_condition=None, layout=None):
        if not self.config.condition_skip:
            return None
        if layout is None:
            raise ValueError("TokenSetDenoiser needs the token layout of the sample (codec.token_layout(...)).")
        _, order, _ = self._plan(layout, condition.device)
        c = condition.float()[:, order]  # (B, N, C), sequence order
        mean = c.mean(1, keepdim=True).expand_as(c)
        diff = c - mean
        diff = diff / diff.pow(2).mean(-1, keepdim=True).add(1e-12).sqrt()  # unit RMS per token
        rows = torch.stack([c, mean, torch.tanh(self.condition_sharpness * diff)], dim=2)  # (B, N, 3, C)
        if drop_condition is not None:
            rows = rows.masked_fill(drop_condition.view(-1, 1, 1, 1), 0.0)
        return rows * self.condition_skip_scale

    def gather(self, sample: torch.Tensor, layout: TokenLayout) -> list[torch.Tensor]:
        """sample (B, D) → per type group, its tokens (B, n_type, d_type): one slice or gather per type, never one
        per token."""
        groups, _, _ = self._plan(layout, sample.device)
        B = sample.shape[0]
        return [
            sample[:, g.start : g.start + g.tokens.shape[0] * g.dim].view(B, -1, g.dim)
            if g.start is not None
            else sample[:, g.flat]
            for g in groups
        ]

    def scatter(self, pieces: list[torch.Tensor], layout: TokenLayout) -> torch.Tensor:
        """The inverse of :meth:`gather`: per type group (B, n_type, d_type) → (B, D)."""
        groups, _, all_slices = self._plan(layout, pieces[0].device)
        B = pieces[0].shape[0]
        if all_slices:  # groups cover consecutive ranges: concatenating them in flat order is the output
            ordered = sorted(zip(groups, pieces), key=lambda pair: pair[0].start)
            return torch.cat([o.reshape(B, -1) for _, o in ordered], dim=1)
        out = pieces[0].new_empty(B, sum(layout.dims))
        for g, o in zip(groups, pieces):
            out[:, g.flat] = o
        return out

    def trunk(self, h: torch.Tensor, mods) -> torch.Tensor:
        """Token states (B, N, H), biases included, through the blocks and the output norm, in sequence order."""
        for block, block_mods in zip(self.blocks, mods):
            h = block(h, block_mods)
        return self.norm_out(h)

    def denoise(self, sample, mods, token_bias, layout=None, skip=None, condition_rows=None) -> torch.Tensor:
        """sample (B, D) → ε-prediction (B, D), given :meth:`modulations`, :meth:`token_bias`,
        :meth:`skip_scale` (whose term ``skip·sample`` is added to the output) and :meth:`condition_rows`."""
        if layout is None:
            raise ValueError("TokenSetDenoiser needs the token layout of the sample (codec.token_layout(...)).")
        if sample.shape[-1] != sum(layout.dims):
            raise ValueError(f"sample has width {sample.shape[-1]}, the token layout covers {sum(layout.dims)}.")
        groups, _, _ = self._plan(layout, sample.device)
        pieces = [self.projections[g.name].encode(x) for g, x in zip(groups, self.gather(sample, layout))]
        h = self.trunk(torch.cat(pieces, dim=1) + token_bias, mods)  # (B, N, H), sequence order
        outs, offset = [], 0
        for g in groups:
            n = g.tokens.shape[0]
            hg = h[:, offset : offset + n]
            o = self.projections[g.name].decode(hg)  # (B, n_type, d_type)
            if condition_rows is not None:
                gate = self.condition_gate(hg)  # (B, n_type, 3)
                # (B, n_type, C): the gated features, one small matmul per token
                add = (gate[..., None, :] @ condition_rows[:, offset : offset + n]).squeeze(-2)
                C = add.shape[-1]
                o = torch.cat([o[..., :C] + add, o[..., C:]], dim=-1)
            outs.append(o)
            offset += n
        out = self.scatter(outs, layout)
        # out of place: under the meta-trainer's vmap an in-place addcmul_ has no batching rule (a per-task loop)
        return out if skip is None else torch.addcmul(out, skip[:, None], sample)

    def input_row_space(self, layout: TokenLayout, device: torch.device) -> list[tuple[int, RowSpace]] | None:
        """Per type group of ``layout`` (sequence order), its number of tokens and the row space of its (affine)
        token encoder, for chains that run there (:func:`~peft_mcdi.generator.sampling.sample`); None with
        ``condition_skip``, whose output also depends on the condition. Cached until a projection's parameter
        changes (an optimiser step, a load): the row spaces depend on nothing else."""
        if self.config.condition_skip:
            return None
        key = (str(device), tuple((p.data_ptr(), p._version) for p in self.projections.parameters()))
        if self._row_space_key != key:
            self._row_spaces = {name: RowSpace.of(proj, device) for name, proj in self.projections.items()}
            self._row_space_key = key
        groups, _, _ = self._plan(layout, device)
        return [(g.tokens.shape[0], self._row_spaces[g.name]) for g in groups]


@dataclass(frozen=True)
class RowSpace:
    """A token type's encoder encode(x) = W x + b and decoder decode(h) = D h + d in an orthonormal basis U = P V of
    W's row space, P the projection's :class:`Frame`: the encoder sees x only through Uᵀx. Tokens are row vectors:
    for coordinates e = xU, encode = e @ ``encode`` + ``bias``, and Uᵀdecode(h) = h @ ``decode`` + ``offset``."""

    frame: Frame
    basis: torch.Tensor  # V (m, k), k = min(m, hidden)
    encode: torch.Tensor  # (k, H): (W U)ᵀ
    bias: torch.Tensor  # (H,): b
    decode: torch.Tensor  # (H, k): (Uᵀ D)ᵀ
    offset: torch.Tensor  # (k,): Uᵀ d
    decode_bias: torch.Tensor  # (d,): d
    full_decode: Callable[[torch.Tensor], torch.Tensor]  # h (..., H) → decode(h) (..., d)

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d) → xU (..., k)."""
        return self.frame.to_frame(x) @ self.basis

    def expand(self, e: torch.Tensor) -> torch.Tensor:
        """Coordinates e (..., k) → eUᵀ (..., d)."""
        return self.frame.from_frame(e @ self.basis.T)

    @classmethod
    def of(cls, projection: nn.Module, device: torch.device) -> RowSpace:
        # W P by reverse mode (hidden_dim backward passes, cheaper than encoding m unit vectors), outside the
        # sampler's inference mode; the parameters are ordinary tensors, so autograd can run through them.
        with torch.inference_mode(False), torch.enable_grad():
            frame = projection.frame()  # no_grad inside; its bases must be ordinary tensors too
            zero = torch.zeros(frame.width, device=device)
            W = torch.func.jacrev(lambda c: projection.encode(frame.from_frame(c)))(zero).detach()  # (H, m)
            b = projection.encode(frame.from_frame(zero)).detach()
        with torch.no_grad():
            V, _ = torch.linalg.qr(W.T)  # (m, k): orthonormal, spans W P's row space (more when it is deficient)
            H = W.shape[0]
            d = projection.decode(torch.zeros(1, H, device=device))[0]
            D = frame.to_frame(projection.decode(torch.eye(H, device=device)) - d)  # (H, m): row i = PᵀD e_i
            return cls(frame, V, (W @ V).T.contiguous(), b, (D @ V).contiguous(), frame.to_frame(d) @ V, d,
                       projection.decode)  # fmt: skip


def build_denoiser(
    config: DenoiserConfig, num_train_timesteps: int, sample_dim: int | None = None, token_parts=None
) -> _Denoiser:
    """Factory: ``mlp`` needs ``sample_dim``; ``tokens`` needs ``token_parts`` (type → shapes of a token's tensors)."""
    if config.type == "mlp":
        if sample_dim is None:
            raise ValueError("the 'mlp' denoiser needs sample_dim.")
        return ResidualMLPDenoiser(config, num_train_timesteps, sample_dim)
    if not token_parts:
        raise ValueError("the 'tokens' denoiser needs token_parts (type → shapes of a token's tensors).")
    return TokenSetDenoiser(config, num_train_timesteps, token_parts)
