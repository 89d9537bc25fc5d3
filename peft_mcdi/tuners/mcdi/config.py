"""``McDiConfig``: a ``LoraConfig`` whose LoRA weights come from a Mc-Di generator instead of training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from peft import LoraConfig
from peft.utils import PeftType

from peft_mcdi.generator.card import write_adapter_card
from peft_mcdi.generator.condition import DEFAULT_TEXT_ENCODER
from peft_mcdi.generator.sampling import SAMPLERS


@dataclass
class McDiConfig(LoraConfig):
    """LoRA placement options (``r``, ``target_modules``, ``lora_alpha``, …) as in ``LoraConfig``, plus where the
    weights come from. Validated at construction: options the generator cannot produce are refused here."""

    generator_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Folder or Hub id of the McDiGenerator that writes this adapter (None: attach one later)."},
    )
    generator_revision: str | None = field(default=None, metadata={"help": "Hub revision of the generator."})
    task_encoder: str = field(
        default=DEFAULT_TEXT_ENCODER,
        metadata={"help": "Sentence encoder for task prompts; must be the one the generator was trained with."},
    )
    sampler: Literal["ddpm", "ddim"] = field(
        default="ddpm", metadata={"help": f"Sampler, one of {SAMPLERS}; ddim with fewer steps is faster."}
    )
    num_sampling_steps: int | None = field(
        default=None, metadata={"help": "Denoising steps (≤ the generator's T); None takes all T."}
    )
    guidance_scale: float = field(
        default=1.0, metadata={"help": "Classifier-free guidance scale; 1 disables guidance (one forward per step)."}
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Scale of the generation noise (x_T and each ancestral step): 1 samples the generator's "
            "distribution, 0 takes the deterministic chain from x_T = 0 (the seed no longer matters)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the generation noise (same seed, same weights)."})
    num_train_timesteps: int = field(
        default=20, metadata={"help": "T of the generator this adapter expects (checked when one is attached)."}
    )
    num_segments: int = field(default=3, metadata={"help": "k of the generator (checked when one is attached)."})
    provenance: dict | None = field(
        default=None,
        metadata={
            "help": "Written by adapt(): prompt, seed, generator id/revision/sha256, package and format version."
        },
    )

    # LoRA options that change what the adapter *is*: a generator trained on plain LoRA trajectories cannot emit them.
    _UNSUPPORTED = {"use_dora": False, "lora_bias": False, "use_qalora": False, "use_bdlora": None}

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.MCDI
        for name, allowed in self._UNSUPPORTED.items():
            value = getattr(self, name, allowed)
            if value not in (allowed, None, False):
                raise ValueError(
                    f"McDiConfig does not support {name}={value!r}: the generator produces plain LoRA A/B matrices. "
                    f"Leave {name} at its default."
                )
        if self.rank_pattern or self.alpha_pattern:
            raise ValueError(
                "McDiConfig does not support rank_pattern/alpha_pattern: a generator emits one rank r for all modules."
            )
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}.")
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {self.num_train_timesteps!r}.")
        if not isinstance(self.num_segments, int) or not 1 <= self.num_segments <= self.num_train_timesteps:
            raise ValueError(
                f"num_segments must be an int in [1, num_train_timesteps={self.num_train_timesteps}], "
                f"got {self.num_segments!r}."
            )
        if self.num_sampling_steps is not None and not 1 <= self.num_sampling_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_sampling_steps must be None or in [1, num_train_timesteps={self.num_train_timesteps}], "
                f"got {self.num_sampling_steps!r}."
            )
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale!r}.")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}.")

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Save ``adapter_config.json`` and the adapter's model card. ``PeftModel.save_pretrained`` writes peft's
        generic card first and has no per-method hook; saving the config is the one step that runs in every
        adapter's own folder, so the Mc-Di section (provenance, usage) is added to the card here."""
        super().save_pretrained(save_directory, **kwargs)
        write_adapter_card(Path(save_directory), self)
