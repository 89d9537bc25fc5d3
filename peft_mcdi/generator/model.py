"""``McDiGenerator``: codec + denoiser + scheduler as one saveable artefact that turns conditions into weights."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from peft_mcdi.generator.anchor import ANCHORS, AnchoredDecoding
from peft_mcdi.generator.card import generator_card
from peft_mcdi.generator.codec import TokenLayout, WeightCodec
from peft_mcdi.generator.denoisers import DenoiserConfig, build_denoiser
from peft_mcdi.generator.sampling import sample
from peft_mcdi.generator.schedulers import SCHEDULER_CONFIG_NAME, LocalConsistencyScheduler, SchedulerConfig
from peft_mcdi.meta.losses import LOSS_VARIANTS, LossNoise, diffusion_loss
from peft_mcdi.shipped import shipped_generator_folder
from peft_mcdi.utils import DictConfigMixin, atomic_write, atomic_write_text, check_local_or_hub


CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
WEIGHTS_NAME = "model.safetensors"
# 2: an optional anchor (GeneratorConfig.anchor, tensors under 'anchor.'); the condition skip's vectors renamed
# (see upgrade_state). Version-1 folders load.
FORMAT_VERSION = 2


@dataclass
class GeneratorConfig(DictConfigMixin):
    """Everything needed to rebuild a generator except its weights; JSON round-trips."""

    codec: dict = field(
        metadata={"help": "WeightCodec layout: {'shapes': {name: shape}, 'row_tokens': bool}, in vector order."}
    )
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig, metadata={"help": "Denoiser architecture."})
    loss_variant: str = field(
        default="mcdi",
        metadata={"help": f"Training loss, one of {LOSS_VARIANTS}; Mv-Di is 'mcdi' with scheduler num_segments=1."},
    )
    loss_weighting: str = field(
        default="epsilon",
        metadata={
            "help": "'epsilon' (Mc-Di loss divided by 1−ᾱ_t: same minimiser, k=1 is exactly vanilla) or 'paper'."
        },
    )
    condition_dropout: float = field(
        default=0.1, metadata={"help": "Probability of training with the null condition (enables guidance)."}
    )
    loss_tensor_weights: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": "Relative loss weight of the tensors whose name matches a glob pattern, e.g. {'classifier.*': "
            "24.0}; others weigh 1, and the weights are rescaled to mean 1 per coordinate. Raises the share of "
            "small but decisive tensors (a MiniLM adapter's head is 2 % of its coordinates and most of its accuracy).",
            "omit_default": True,
        },
    )
    min_snr_gamma: float | None = field(
        default=None,
        metadata={
            "help": "Min-SNR-γ loss weighting: each sample's ε-loss × min(SNR, γ)/SNR, so nearly clean samples "
            "(exact weights, per-task noise) stop dominating the noisy ones (where the condition matters); "
            "None: unweighted. Hang et al. (2023) use γ = 5.",
            "omit_default": True,
        },
    )
    anchor: str | None = field(
        default=None,
        metadata={
            "help": f"A rule the generated weights are a residual on, one of {sorted(ANCHORS)}, or None (the weights "
            "are the decoded sample, as in the paper). 'prototype' (heads): the nearest-centroid rule on the class "
            "prototypes the generator is conditioned on, so a zero residual is that rule (SPEC §3.7).",
            "omit_default": True,
        },
    )
    metadata: dict = field(default_factory=dict, metadata={"help": "Free-form provenance (base model, tasks, ...)."})
    format_version: int = field(default=FORMAT_VERSION, metadata={"help": "On-disk format version."})

    def __post_init__(self) -> None:
        self.nested_from_dicts()
        if self.loss_variant not in LOSS_VARIANTS:
            raise ValueError(f"loss_variant must be one of {LOSS_VARIANTS}, got {self.loss_variant!r}.")
        if self.loss_weighting not in ("epsilon", "paper"):
            raise ValueError(f"loss_weighting must be 'epsilon' or 'paper', got {self.loss_weighting!r}.")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout!r}.")
        if not isinstance(self.codec, dict) or "shapes" not in self.codec:
            raise ValueError("codec must be a dict with a 'shapes' entry (see WeightCodec.config()).")
        for pattern, weight in self.loss_tensor_weights.items():
            if not any(fnmatch(name, pattern) for name in self.codec["shapes"]):
                raise ValueError(
                    f"loss_tensor_weights pattern {pattern!r} matches no tensor of the codec "
                    f"(tensors: {list(self.codec['shapes'])[:4]}...)."
                )
            if not weight > 0:
                raise ValueError(f"loss_tensor_weights[{pattern!r}] must be > 0, got {weight!r}.")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0 or None, got {self.min_snr_gamma!r}.")
        if self.codec.get("row_tokens") and not self.denoiser.per_token_condition:
            raise ValueError("a rows-layout codec (class-row tokens) needs denoiser.per_token_condition=True.")
        if self.anchor is not None:
            if self.anchor not in ANCHORS:
                raise ValueError(f"anchor must be one of {sorted(ANCHORS)} or None, got {self.anchor!r}.")
            ANCHORS[self.anchor].check(
                self.codec["shapes"], bool(self.codec.get("row_tokens")), self.denoiser.condition_dim
            )
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"this generator has format version {self.format_version}; this peft_mcdi reads up to "
                f"{FORMAT_VERSION}: upgrade peft_mcdi to load it."
            )


def denoiser_for_codec(config: DenoiserConfig, codec: WeightCodec, num_train_timesteps: int) -> nn.Module:
    """The denoiser that fits a codec's layout: flat vectors for 'mlp', class rows or LoRA blocks for 'tokens'."""
    if config.type == "mlp":
        if codec.row_tokens:
            raise ValueError("the 'mlp' denoiser works on flat vectors; use denoiser type 'tokens' for row tokens.")
        return build_denoiser(config, num_train_timesteps, sample_dim=codec.dim())
    parts = {"row": [[codec.unit_dim]]} if codec.row_tokens else codec.token_layout().type_parts()
    return build_denoiser(config, num_train_timesteps, token_parts=parts)


def upgrade_state(state: dict[str, torch.Tensor], config: GeneratorConfig) -> dict[str, torch.Tensor]:
    """A saved state in this version's names. Version 1 called the condition skip's (3, C) vectors
    ``denoiser.condition_scale``, the name of the ``'standardize'`` statistics' scale, so a head denoiser could not
    have both; they are ``denoiser.condition_skip_scale`` now."""
    old, new = "denoiser.condition_scale", "denoiser.condition_skip_scale"
    if config.format_version < 2 and config.denoiser.condition_skip and state.get(old, torch.ones(())).dim() == 2:
        state = {(new if k == old else k): v for k, v in state.items()}
    return state


def local_generator_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> Path | None:
    """Where a generator name resolves without the Hub: an existing local path, else a shipped generator's package
    folder (unless a Hub ``revision`` is asked for); None: look it up on the Hub."""
    folder = Path(name_or_path).expanduser()
    if folder.exists():
        return folder
    return shipped_generator_folder(name_or_path) if revision is None else None


def generator_folder(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """The folder a generator name resolves to: a local folder, a shipped generator's package folder, or the Hub
    snapshot of the repo (its generator files, card and the feature extractor a head generator may carry)."""
    folder = local_generator_folder(name_or_path, revision)
    if folder is not None and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; a generator is a folder ({CONFIG_NAME}, {WEIGHTS_NAME}, …).")
    if folder is not None:
        return folder
    check_local_or_hub(name_or_path, "generator")
    from huggingface_hub import snapshot_download

    patterns = [CONFIG_NAME, SCHEDULER_CONFIG_NAME, WEIGHTS_NAME, "*.md", "feature_extractor.*", "examples.*"]
    try:
        return Path(
            snapshot_download(
                str(name_or_path), revision=revision, cache_dir=cache_dir, token=token,
                local_files_only=local_files_only, allow_patterns=patterns,
            )
        )  # fmt: skip
    except Exception as err:  # network, missing repo, bad revision: say both places were looked at
        raise FileNotFoundError(
            f"no generator folder at {str(name_or_path)!r}, and the Hub lookup of it failed "
            f"({type(err).__name__}: {' '.join(str(err).split())[:200]})"
        ) from err


class McDiGenerator(AnchoredDecoding, nn.Module):
    """A meta-trained weight generator. ``generate(condition)`` returns a parameter dict; no gradient involved."""

    def __init__(self, config: GeneratorConfig, scheduler_config: SchedulerConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.scheduler = LocalConsistencyScheduler(scheduler_config or SchedulerConfig())
        self.codec = WeightCodec.from_config(config.codec)
        self.denoiser = denoiser_for_codec(config.denoiser, self.codec, self.scheduler.num_train_timesteps)
        self.anchor = ANCHORS[config.anchor]() if config.anchor else None
        # Conditions of the training tasks: generation reports the distance to the nearest one (an OOD signal).
        self.register_buffer("train_conditions", torch.zeros(0, config.denoiser.condition_dim))
        self._coordinate_weights: dict[tuple, torch.Tensor] = {}  # see coordinate_weights

    # ------------------------------------------------------------------ shape
    @property
    def device(self) -> torch.device:
        return self.codec.mean.device

    def layout(self, num_rows: int | None = None) -> TokenLayout | None:
        if self.config.denoiser.type == "mlp":
            return None
        return self.codec.token_layout(num_rows)

    def num_rows_of(self, condition: torch.Tensor) -> int | None:
        """Class rows of a per-token condition (B, N, C) for a rows-layout codec (heads), else None (LoRA)."""
        return condition.shape[-2] if self.codec.row_tokens else None

    # --------------------------------------------------------------- training
    def forward(
        self, targets: torch.Tensor, condition: torch.Tensor, noise: LossNoise, layout: TokenLayout | None = None
    ) -> torch.Tensor:
        """Training forward: the loss of one task, targets (k, D) in codec space, condition (C,) or (N, C), and the
        pre-drawn noise. A pure function of the parameters, so trainers can ``vmap`` it over a meta-batch."""
        n = noise.timesteps.shape[0]

        def denoise(x_t, t, drop):
            return self.denoiser(x_t, t, condition.expand(n, *condition.shape), drop, layout)

        config = self.config
        weights = self.coordinate_weights(targets.shape[-1]) if config.loss_tensor_weights else None
        return diffusion_loss(
            denoise, self.scheduler, targets, noise, config.loss_variant, config.loss_weighting, weights,
            config.min_snr_gamma,
        )  # fmt: skip

    def coordinate_weights(self, dim: int) -> torch.Tensor:
        """(dim,) loss weight per coordinate from ``config.loss_tensor_weights`` (the last matching pattern wins),
        mean 1; in the rows layout the weights of one row repeat for every class. Built once per (dim, patterns):
        the training forward asks for it at every step."""
        key = (dim, tuple(self.config.loss_tensor_weights.items()))
        if key not in self._coordinate_weights:
            per_tensor = [1.0] * len(self.codec.names)
            for i, name in enumerate(self.codec.names):
                for pattern, value in self.config.loss_tensor_weights.items():
                    if fnmatch(name, pattern):
                        per_tensor[i] = float(value)
            numels = torch.tensor(self.codec.numels)
            weights = torch.tensor(per_tensor).repeat_interleave(numels).repeat(dim // self.codec.unit_dim)
            self._coordinate_weights[key] = (weights / weights.mean()).to(self.device)
        return self._coordinate_weights[key]

    # ------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate_vectors(
        self,
        condition: torch.Tensor,
        seed: int | list[int] = 0,
        sampler: str = "ddpm",
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        return_chain: bool = False,
        row_space: bool | None = None,
    ):
        """Batch of conditions (B, C) [(B, N, C) for heads] → normalised weight vectors (B, D). ``row_space``: where
        the chain runs (:func:`~peft_mcdi.generator.sampling.sample`; by default in the denoiser's input row space
        when that is at most half the weights)."""
        condition = condition.to(self.device, torch.float32)
        seeds = [seed] * condition.shape[0] if isinstance(seed, int) else list(seed)
        num_rows = self.num_rows_of(condition)
        return sample(
            self.denoiser,
            self.scheduler,
            condition,
            self.codec.dim(num_rows),
            seeds,
            sampler=sampler,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            temperature=temperature,
            layout=self.layout(num_rows),
            return_chain=return_chain,
            row_space=row_space,
        )

    def generate(self, condition: torch.Tensor, seed: int | list[int] = 0, **kwargs) -> dict[str, torch.Tensor]:
        """Conditions (B, C) [(B, N, C) for heads] → {name: (B, *shape)} in fp32 on the generator's device.

        ``seed``: one int (every task uses it: a task gets the same weights alone or in a batch) or one per task.
        Other keyword arguments go to :meth:`generate_vectors` (sampler, num_inference_steps, guidance_scale,
        temperature).
        """
        return self.decode(self.generate_vectors(condition, seed, **kwargs), condition.to(self.device, torch.float32))

    def nearest_training_distance(self, condition: torch.Tensor) -> torch.Tensor:
        """L2 distance from each condition (B, C) to the nearest training condition; NaN if none are recorded."""
        if self.train_conditions.shape[0] == 0:
            return torch.full((condition.shape[0],), float("nan"))
        flat = condition.reshape(condition.shape[0], -1, condition.shape[-1]).mean(1).to(self.train_conditions)
        return torch.cdist(flat, self.train_conditions).min(dim=1).values

    def set_training_conditions(self, conditions: torch.Tensor) -> None:
        """Record the training tasks' conditions (per-token conditions are pooled to their mean) and fit the
        denoiser's condition statistics (``DenoiserConfig.condition_normalization``) to them: call before training."""
        self.denoiser.fit_condition_statistics(conditions)
        if conditions.dim() == 3:
            conditions = conditions.mean(1)
        self.train_conditions = conditions.detach().float().to(self.device).clone()

    # --------------------------------------------------------------- save/load
    def save_pretrained(self, save_directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """config.json + scheduler_config.json + model.safetensors (denoiser, codec statistics, conditions).
        ``dtype``: store the floating-point tensors in it (``torch.float16`` halves the file, for shipping; they load
        back as float32, so only the storage is rounded)."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(save_directory / CONFIG_NAME, json.dumps(self.config.to_dict(), indent=2))
        self.scheduler.save_config(save_directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        atomic_write(save_directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        atomic_write_text(save_directory / CARD_NAME, generator_card(self))

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload Mc-Di generator",
    ) -> str:
        """Save (config, weights, codec statistics, scheduler config, card) and upload to the Hub; returns the
        commit URL. Needs network access and a token with write permission."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            (Path(folder) / CARD_NAME).write_text(generator_card(self, repo_id), encoding="utf-8")
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message
            )
        return str(commit)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        device: str | torch.device = "cpu",
    ) -> McDiGenerator:
        """Load from a local folder, a shipped generator's id (:mod:`peft_mcdi.shipped`) or a Hub repo id (usual
        Hub arguments). Weights stored in half precision load as float32."""
        folder = generator_folder(pretrained_model_name_or_path, revision, cache_dir, token, local_files_only)
        for name in (CONFIG_NAME, SCHEDULER_CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a McDiGenerator folder: {name} is missing.")
        config = GeneratorConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")))
        scheduler = LocalConsistencyScheduler.from_config_file(folder)
        model = cls(config, scheduler.config)
        try:
            state = load_file(folder / WEIGHTS_NAME)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{folder / WEIGHTS_NAME} is corrupt or truncated ({err}).") from err
        state = upgrade_state({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, config)
        model.train_conditions = torch.zeros_like(state.get("train_conditions", model.train_conditions))
        model.load_state_dict(state, strict=True)
        return model.to(device)
