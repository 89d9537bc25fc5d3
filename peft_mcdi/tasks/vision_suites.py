"""The three vision benchmark settings as task families (``get_tasksets``), on real offline data:

* ``glyphs-fewshot`` — Omniglot's protocol on the Noto glyphs: a Conv-4 trained on the *background* scripts only,
  meta-training episodes from background classes, test episodes from the *evaluation* scripts (disjoint alphabets,
  homoglyphs removed): 5/20-way, 1/5-shot.
* ``vision-transfer`` — EfficientNet-Lite0 (ImageNet weights, 64 px) features; meta-training episodes from glyphs and
  animal silhouettes; test episodes from Fashion-MNIST and sklearn digits, never seen in meta-training.
* ``vision-dg`` — domain generalisation: Fashion-MNIST in four domains (original, rotated 90°, negative, degraded:
  blurred + noise), each from its own disjoint images; leave one domain out: meta-train on episodes of the other
  three, test on episodes of the unseen one.

A suite's ``seed`` reruns everything downstream of the installed assets: the glyph split and renders, the Conv-4,
the image subsets and every episode. Features are cached (``cache_root()/features``) by backbone and image content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from peft_mcdi.models.conv4 import Conv4TrainConfig, conv4_features, images_fingerprint, pretrained_conv4
from peft_mcdi.models.feature_extractor import FeatureExtractor, FeatureExtractorConfig
from peft_mcdi.tasks.base import TaskSet, TaskSets, register_tasksets
from peft_mcdi.tasks.episodes import EpisodeConfig, FeatureSet, HeadTask, sample_episodes
from peft_mcdi.utils import DictConfigMixin, atomic_write, cache_root, stable_hash


# ------------------------------------------------------------------------------------------------ feature cache
def cached_features(backbone_key: str, images: np.ndarray, compute: Callable[[np.ndarray], torch.Tensor]):
    """``compute(images)`` (n, d), cached as safetensors keyed by the backbone and the images' content."""
    from safetensors.torch import load_file, save_file

    path = cache_root() / "features" / f"{stable_hash([backbone_key, images_fingerprint(images)])}.safetensors"
    if path.is_file():
        try:
            return load_file(path)["features"]
        except Exception as err:
            raise ValueError(f"cached features {path} cannot be read ({err}); delete the file to recompute.") from err
    features = compute(images).float().contiguous()
    atomic_write(path, lambda tmp: save_file({"features": features}, tmp))
    return features


def efficientnet_features(images: np.ndarray, size: int) -> torch.Tensor:
    """EfficientNet-Lite0 pooled features (n, 1280) of grayscale images at ``size`` px, cached."""
    from peft_mcdi.models.efficientnet_lite import extract_features, load_efficientnet_lite0

    def compute(x: np.ndarray) -> torch.Tensor:
        return extract_features(load_efficientnet_lite0(), torch.from_numpy(x), size=size)

    return cached_features(f"efficientnet-lite0@{size}", images, compute)


class SourcePCA:
    """A fixed linear projection of backbone features onto their top principal components, fitted on meta-training
    (source) images only: part of the frozen feature extractor, shared by every method. Heads on 128 components
    instead of 1,280 raw EfficientNet features make every generator ~10× cheaper to train and run; no target or
    held-out-domain image influences it."""

    def __init__(self, source_features: torch.Tensor, num_components: int) -> None:
        if not 1 <= num_components <= min(source_features.shape):
            raise ValueError(f"feature_pca must be in [1, {min(source_features.shape)}], got {num_components}.")
        self.mean = source_features.mean(0)
        _, _, vh = torch.linalg.svd(source_features - self.mean, full_matrices=False)
        self.basis = vh[:num_components].T  # (d, q)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) @ self.basis


# --------------------------------------------------------------------------------------------------- configs
def _episodes(**kwargs) -> Callable[[], EpisodeConfig]:
    return lambda: EpisodeConfig(**kwargs)


# Test settings: name → (ways, shots).
FEWSHOT_SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}
TRANSFER_SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5)}
DG_DOMAINS = ("original", "rotated", "negative", "degraded")


@dataclass
class SuiteConfig(DictConfigMixin):
    """What every suite shares: sizes, episode shapes, seed."""

    seed: int = field(default=0, metadata={"help": "Reruns everything: data splits, backbone, episodes."})
    num_train_tasks: int = field(default=2000, metadata={"help": "Meta-training episodes (zoo trajectories)."})
    num_test_tasks: int = field(default=500, metadata={"help": "Test episodes per setting."})
    train_episodes: EpisodeConfig = field(
        default_factory=_episodes(num_ways=5, num_shots=[1, 5], num_queries=5, pool_shots=10),
        metadata={"help": "Shape of meta-training episodes (K mixed; trajectories train on pool_shots per class)."},
    )
    num_queries: int = field(default=15, metadata={"help": "Query images per class in test episodes."})
    settings: list[str] | None = field(default=None, metadata={"help": "Test settings to build (default: all)."})

    def __post_init__(self) -> None:
        self.nested_from_dicts()
        if self.num_train_tasks < 1 or self.num_test_tasks < 1:
            raise ValueError(
                f"num_train_tasks and num_test_tasks must be >= 1, got {self.num_train_tasks}, {self.num_test_tasks}."
            )

    def test_episode_config(self, ways: int, shots: int) -> EpisodeConfig:
        noise = self.train_episodes.feature_noise
        steps = self.train_episodes.steps_per_epoch
        return EpisodeConfig(ways, [shots], self.num_queries, 0, steps, noise)


@dataclass
class VisionSuite:
    """Meta-training episodes and, per test setting, test episodes; ``info`` records split facts for tests."""

    name: str
    train: list[HeadTask]
    tests: dict[str, list[HeadTask]]
    feature_dim: int
    info: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # the full suite config (set by build_suite)
    # images → the features of every episode (backbone, input size, projection), saved beside the suite's generators
    feature_extractor: FeatureExtractor | None = None

    def tasksets(self, setting: str) -> TaskSets:
        if setting not in self.tests:
            raise ValueError(f"suite {self.name!r} has test settings {sorted(self.tests)}, not {setting!r}.")
        return TaskSets(
            TaskSet(self.train, f"{self.name}/train"), TaskSet(self.tests[setting], f"{self.name}/{setting}")
        )


def _test_episodes(config: SuiteConfig, settings: dict, features: FeatureSet, classes, prefix: str, domain=None):
    chosen = config.settings or list(settings)
    unknown = sorted(set(chosen) - set(settings))
    if unknown:
        raise ValueError(f"unknown test settings {unknown}; this suite has {sorted(settings)}.")
    out = {}
    for i, name in enumerate(chosen):
        ways, shots = settings[name]
        out[name] = sample_episodes(
            features, classes, config.test_episode_config(ways, shots), config.num_test_tasks,
            seed=config.seed * 7919 + 101 * (i + 1), prefix=f"{prefix}-{name}", domain=domain,
        )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------- few-shot
@dataclass
class FewShotSuiteConfig(SuiteConfig):
    glyphs: dict = field(default_factory=dict, metadata={"help": "GlyphConfig overrides (its seed = the suite's)."})
    backbone: dict = field(default_factory=dict, metadata={"help": "Conv4TrainConfig overrides."})
    test_glyphs: dict = field(
        default_factory=dict,
        metadata={
            "help": "GlyphConfig overrides for the evaluation scripts' renders only, e.g. stronger distortions: "
            "test episodes then see images unlike any the backbone and the meta-training episodes had (a harder "
            "suite by changing the data, issue 22). Rendering options only: the classes must stay the same. "
            "{}: the same renders as the background scripts."
        },
    )


def glyph_distortion(level: int) -> dict:
    """GlyphConfig render options at distortion ``level`` (0: the default renders), for
    ``FewShotSuiteConfig.test_glyphs``: each level adds the same step to rotation, shear, elastic displacement,
    stroke width and shift, within the renderer's limits. ``benchmarks/studies/fewshot_difficulty.py`` measures the
    prototype rule against it (seed 0, 5w1s: 99.2 / 78.4 / 44.9 % at levels 0 / 1 / 2)."""
    if level == 0:
        return {}
    return {
        "rotation_deg": min(10.0 + 10.0 * level, 45.0),
        "shear_deg": min(8.0 + 6.0 * level, 30.0),
        "elastic_alpha": min(0.8 + 1.2 * level, 5.0),
        "stroke_px": min(0.5 + 0.5 * level, 2.0),
        "translate_px": 1.5 + 1.0 * level,
    }


def build_fewshot_suite(config: FewShotSuiteConfig, progress: bool = False) -> VisionSuite:
    from peft_mcdi.tasks.glyphs import GlyphConfig, load_glyphs

    glyphs = load_glyphs(GlyphConfig(**{"seed": config.seed, **config.glyphs}), progress=progress)
    background = glyphs.split("background")
    conv4 = pretrained_conv4(
        background.images, background.labels, Conv4TrainConfig(**{"seed": config.seed, **config.backbone}), progress
    )
    splits = np.array([c["split"] for c in glyphs.classes])
    images = glyphs.images
    if config.test_glyphs:
        shifted = load_glyphs(GlyphConfig(**{"seed": config.seed, **config.glyphs, **config.test_glyphs}), progress)
        if shifted.classes != glyphs.classes or not np.array_equal(shifted.labels, glyphs.labels):
            raise ValueError(
                f"test_glyphs={config.test_glyphs} changes the glyph classes or their number of images; it may only "
                "change how they are rendered (augmentation: rotation_deg, shear_deg, elastic_alpha, stroke_px, ...)."
            )
        evaluation = (splits[glyphs.labels] == "evaluation")[:, None, None]
        images = np.where(evaluation, shifted.images, glyphs.images)
    cached = cached_features(conv4.cache_key, images, lambda x: conv4_features(conv4, x))
    features = FeatureSet("glyphs", cached, torch.from_numpy(glyphs.labels))
    train_classes = np.flatnonzero(splits == "background").tolist()
    test_classes = np.flatnonzero(splits == "evaluation").tolist()
    train = sample_episodes(
        features, train_classes, config.train_episodes, config.num_train_tasks, seed=config.seed * 7919, prefix="train"
    )
    tests = _test_episodes(config, FEWSHOT_SETTINGS, features, test_classes, "test")
    info = {"train_classes": train_classes, "test_classes": test_classes, "glyph_classes": glyphs.classes,
            "backbone": "Conv-4 trained on the background glyph scripts"}  # fmt: skip
    extractor = FeatureExtractor(FeatureExtractorConfig("conv4", images.shape[-1], conv4.feature_dim), conv4)
    return VisionSuite("glyphs-fewshot", train, tests, features.dim, info, feature_extractor=extractor)


# ------------------------------------------------------------------------------------------------- transfer
@dataclass
class TransferSuiteConfig(SuiteConfig):
    glyphs: dict = field(default_factory=dict, metadata={"help": "GlyphConfig overrides (its seed = the suite's)."})
    image_size: int = field(default=64, metadata={"help": "EfficientNet-Lite0 input size (px)."})
    max_glyph_classes: int = field(default=400, metadata={"help": "Glyph classes used (feature cost)."})
    images_per_class: int = field(default=200, metadata={"help": "Animal / Fashion-MNIST images per class."})
    glyph_episode_fraction: float = field(default=0.7, metadata={"help": "Share of glyph (vs animal) episodes."})
    feature_pca: int = field(
        default=128, metadata={"help": "Project features on this many source principal components (0: raw 1280)."}
    )


def _subsample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` images of every class (all of a class that has fewer)."""
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def build_transfer_suite(config: TransferSuiteConfig, progress: bool = False) -> VisionSuite:
    from peft_mcdi.tasks.glyphs import GlyphConfig, load_glyphs
    from peft_mcdi.tasks.images import load_animal_silhouettes, load_digits, load_fashion_mnist

    rng = np.random.default_rng(config.seed)
    glyphs = load_glyphs(GlyphConfig(**{"seed": config.seed, **config.glyphs}), progress=progress)
    keep = np.sort(rng.permutation(len(glyphs.classes))[: config.max_glyph_classes])
    glyph_idx = np.flatnonzero(np.isin(glyphs.labels, keep))
    animals, fashion, digits = load_animal_silhouettes(), load_fashion_mnist("test"), load_digits()
    animal_idx = _subsample(animals.labels, config.images_per_class, rng)
    fashion_idx = _subsample(fashion.labels, config.images_per_class, rng)
    digits_idx = _subsample(digits.labels, config.images_per_class, rng)

    raw = {
        "glyphs": (efficientnet_features(glyphs.images[glyph_idx], config.image_size), glyphs.labels[glyph_idx]),
        "animals": (efficientnet_features(animals.images[animal_idx], config.image_size), animals.labels[animal_idx]),
    }
    project = _projection(torch.cat([f for f, _ in raw.values()]), config.feature_pca)  # sources only

    def feature_set(name: str, features: torch.Tensor, labels: np.ndarray) -> FeatureSet:
        return FeatureSet(name, _projected(features, project), torch.from_numpy(labels))

    sources = {name: feature_set(name, *value) for name, value in raw.items()}
    n_glyph = round(config.num_train_tasks * config.glyph_episode_fraction)
    episodes = config.train_episodes
    train = sample_episodes(sources["glyphs"], keep.tolist(), episodes, n_glyph, config.seed * 7919, "train-glyphs")
    train += sample_episodes(
        sources["animals"],
        list(range(10)),
        episodes,
        config.num_train_tasks - n_glyph,
        config.seed * 7919 + 1,
        "train-animals",
    )
    tests = {}
    for name, data, idx in (("fashion", fashion, fashion_idx), ("digits", digits, digits_idx)):
        target = feature_set(name, efficientnet_features(data.images[idx], config.image_size), data.labels[idx])
        for setting, episodes in _test_episodes(config, TRANSFER_SETTINGS, target, list(range(10)), name).items():
            tests[f"{name}-{setting}"] = episodes
    info = {"train_sources": ["glyphs", "animal-silhouettes"], "test_targets": ["fashion-mnist", "digits"],
            "backbone": f"EfficientNet-Lite0 (ImageNet) at {config.image_size} px"}  # fmt: skip
    extractor = efficientnet_extractor(config.image_size, project)
    return VisionSuite("vision-transfer", train, tests, sources["glyphs"].dim, info, feature_extractor=extractor)


# ------------------------------------------------------------------------------------------ domain generalisation
@dataclass
class DGSuiteConfig(SuiteConfig):
    heldout_domain: str = field(default="rotated", metadata={"help": f"The unseen domain, one of {DG_DOMAINS}."})
    image_size: int = field(default=64, metadata={"help": "EfficientNet-Lite0 input size (px)."})
    images_per_class: int = field(default=100, metadata={"help": "Images per class and domain (disjoint per domain)."})
    feature_pca: int = field(
        default=128, metadata={"help": "Project features on this many source principal components (0: raw 1280)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heldout_domain not in DG_DOMAINS:
            raise ValueError(f"heldout_domain must be one of {DG_DOMAINS}, got {self.heldout_domain!r}.")


def domain_transform(name: str, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the four Fashion-MNIST domains; uint8 (n, 28, 28) in and out."""
    if name == "original":
        return images
    if name == "rotated":
        return np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2)))
    if name == "negative":
        return 255 - images
    if name == "degraded":
        from scipy.ndimage import gaussian_filter

        blurred = gaussian_filter(images.astype(np.float32), sigma=(0, 1.2, 1.2))
        noisy = blurred + rng.normal(0, 40, images.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)
    raise ValueError(f"unknown domain {name!r}; domains are {DG_DOMAINS}.")


def _projection(source_features: torch.Tensor, num_components: int) -> SourcePCA | None:
    return SourcePCA(source_features, num_components) if num_components else None


def _projected(features: torch.Tensor, projection: SourcePCA | None) -> torch.Tensor:
    return projection(features) if projection is not None else features


def efficientnet_extractor(image_size: int, projection: SourcePCA | None) -> FeatureExtractor:
    """EfficientNet-Lite0 at ``image_size`` px, then the suite's source PCA if it has one."""
    from peft_mcdi.models.efficientnet_lite import load_efficientnet_lite0

    width = projection.basis.shape[1] if projection is not None else 0
    config = FeatureExtractorConfig("efficientnet_lite0", image_size, projection_dim=width)
    pca = (projection.mean, projection.basis) if projection is not None else None
    return FeatureExtractor(config, load_efficientnet_lite0(), pca)


def build_dg_suite(config: DGSuiteConfig, progress: bool = False) -> VisionSuite:
    from peft_mcdi.tasks.images import load_fashion_mnist

    rng = np.random.default_rng(config.seed)
    fashion = load_fashion_mnist("all")
    order = rng.permutation(len(fashion))
    images, labels, domains = [], [], []
    for d, name in enumerate(DG_DOMAINS):  # disjoint underlying images per domain
        part = order[d :: len(DG_DOMAINS)]
        idx = part[_subsample(fashion.labels[part], config.images_per_class, rng)]
        images.append(domain_transform(name, fashion.images[idx], rng))
        labels.append(fashion.labels[idx])
        domains.append(np.full(len(idx), d))
    raw, domains = efficientnet_features(np.concatenate(images), config.image_size), np.concatenate(domains)
    held = DG_DOMAINS.index(config.heldout_domain)
    sources = [d for d in range(len(DG_DOMAINS)) if d != held]
    project = _projection(raw[torch.from_numpy(domains != held)], config.feature_pca)  # source domains only
    labels = torch.from_numpy(np.concatenate(labels))
    features = FeatureSet("fashion-domains", _projected(raw, project), labels, torch.from_numpy(domains))
    classes = list(range(10))
    train = []
    for i, d in enumerate(sources):
        n = config.num_train_tasks // len(sources) + (i < config.num_train_tasks % len(sources))
        train += sample_episodes(features, classes, config.train_episodes, n, seed=config.seed * 7919 + d,
                                 prefix=f"train-{DG_DOMAINS[d]}", domain=d)  # fmt: skip
    tests = _test_episodes(config, TRANSFER_SETTINGS, features, classes, f"test-{config.heldout_domain}", domain=held)
    info = {"source_domains": [DG_DOMAINS[d] for d in sources], "heldout_domain": config.heldout_domain,
            "backbone": f"EfficientNet-Lite0 (ImageNet) at {config.image_size} px"}  # fmt: skip
    extractor = efficientnet_extractor(config.image_size, project)
    return VisionSuite(
        f"vision-dg-{config.heldout_domain}", train, tests, features.dim, info, feature_extractor=extractor
    )


SUITES = {
    "glyphs-fewshot": (FewShotSuiteConfig, build_fewshot_suite),
    "vision-transfer": (TransferSuiteConfig, build_transfer_suite),
    "vision-dg": (DGSuiteConfig, build_dg_suite),
}


def build_suite(name: str, **kwargs) -> VisionSuite:
    """Build a suite by name with config overrides (a ValueError names unknown suites and keys)."""
    if name not in SUITES:
        raise ValueError(f"unknown vision suite {name!r}; valid names: {sorted(SUITES)}.")
    cls, build = SUITES[name]
    progress = kwargs.pop("progress", False)
    config = cls.from_dict(kwargs)
    suite = build(config, progress)
    suite.config = {"name": name, **config.to_dict()}  # every field, defaults included: what caches are keyed by
    return suite


def _register(name: str) -> None:
    @register_tasksets(name)
    def tasksets(setting: str | None = None, **kwargs) -> TaskSets:
        suite = build_suite(name, **kwargs)
        return suite.tasksets(setting or next(iter(suite.tests)))

    tasksets.__doc__ = f"The {name!r} suite as a train/test split for one test setting (default: the first)."


for _name in SUITES:
    _register(_name)
