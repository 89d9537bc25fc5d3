"""``McDiHeadConfig``: how a frozen vision backbone gets classifier heads generated from labelled support sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft_mcdi.generator.sampling import SAMPLERS
from peft_mcdi.utils import DictConfigMixin


CONFIG_NAME = "head_config.json"
FALLBACK_QUANTILE = 0.99  # a conventional tail; benchmarks/studies/vision_ood_fallback.py scores 0.9 to 1


@dataclass
class McDiHeadConfig(DictConfigMixin):
    """The vision counterpart of ``McDiConfig``: where heads come from and how the backbone yields features.
    Validated at construction."""

    generator_name_or_path: str | None = field(
        default=None, metadata={"help": "Folder or Hub id of the head generator (None: pass one to the model)."}
    )
    generator_revision: str | None = field(default=None, metadata={"help": "Hub revision of the generator."})
    feature_method: str = field(
        default="features",
        metadata={
            "help": "Backbone method that maps a batch of (preprocessed) images to (B, d) features; 'forward' calls "
            "the module itself."
        },
    )
    sampler: Literal["ddpm", "ddim"] = field(default="ddpm", metadata={"help": f"Sampler, one of {SAMPLERS}."})
    num_sampling_steps: int | None = field(
        default=None, metadata={"help": "Denoising steps (≤ the generator's T); None takes all T."}
    )
    guidance_scale: float = field(default=2.0, metadata={"help": "Classifier-free guidance scale (1: off)."})
    num_samples: int = field(
        default=8, metadata={"help": "Heads drawn per support set and averaged (an estimate of E[head | support])."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the generation noise (same seed, same head)."})
    fallback_quantile: float | None = field(
        default=FALLBACK_QUANTILE,
        metadata={
            "help": "Write the nearest-centroid rule instead of the generated head when the support set is farther "
            "from the generator's training sets than this quantile of their own nearest-neighbour distances "
            "(HeadGenerator.fallback_quantile; None: always the generated head)."
        },
    )

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}.")
        if self.num_sampling_steps is not None and self.num_sampling_steps < 1:
            raise ValueError(f"num_sampling_steps must be None or >= 1, got {self.num_sampling_steps}.")
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {self.num_samples!r}.")
        if self.fallback_quantile is not None and not 0 < self.fallback_quantile <= 1:
            raise ValueError(f"fallback_quantile must be None or in (0, 1], got {self.fallback_quantile!r}.")
        if not isinstance(self.feature_method, str) or not self.feature_method:
            raise ValueError(f"feature_method must name a backbone method, got {self.feature_method!r}.")
