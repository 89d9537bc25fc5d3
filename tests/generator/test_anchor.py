"""The prototype anchor: the nearest-centroid rule at any scale, its fitted scale, and generators that write rule +
residual, save it, train on residuals and still load version-1 folders."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from peft_mcdi.generator.anchor import PrototypeAnchor
from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.model import CONFIG_NAME, WEIGHTS_NAME, GeneratorConfig, McDiGenerator
from peft_mcdi.generator.schedulers import SchedulerConfig
from peft_mcdi.meta.trainer import MetaTrainConfig
from peft_mcdi.pipeline import PipelineConfig, build_generator
from peft_mcdi.tasks.base import TaskSet, TaskSets
from peft_mcdi.tasks.episodes import EpisodeConfig, head_logits, prototypes, sample_episodes
from peft_mcdi.zoo.heads import collect_heads
from peft_mcdi.zoo.recorder import RecorderConfig
from peft_mcdi.zoo.store import ZooStore
from tests.tasks.synthetic import clustered_features


DIM = 16
HEAD_CODEC = {"shapes": {"weight": [DIM], "bias": []}, "row_tokens": True}
DENOISER = DenoiserConfig(type="tokens", condition_dim=DIM, hidden_dim=16, num_layers=1, per_token_condition=True)


def anchored_generator(scale: float = 2.0) -> McDiGenerator:
    generator = McDiGenerator(GeneratorConfig(codec=HEAD_CODEC, denoiser=DENOISER, anchor="prototype"),
                              SchedulerConfig(num_train_timesteps=10, num_segments=2))  # fmt: skip
    with torch.no_grad():  # untrained generators predict zeros; give the test something to see
        for p in generator.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        generator.anchor.scale.fill_(scale)
    return generator


def episode(num_ways: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(num_ways * 4, DIM, generator=g), dim=-1)
    y = torch.arange(num_ways).repeat(4)
    return x, y, prototypes(x, y, num_ways)


@pytest.mark.parametrize("scale", [0.3, 5.0])
def test_the_anchor_classifies_by_the_nearest_prototype_at_any_scale(scale):
    x, _, p = episode()
    anchor = PrototypeAnchor()
    anchor.scale.fill_(scale)
    queries = F.normalize(torch.randn(200, DIM, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert torch.equal(head_logits(anchor(p), queries).argmax(-1), torch.cdist(queries, p).argmin(-1))


def test_fit_recovers_the_scale_of_heads_built_on_the_rule_and_refuses_heads_that_point_away():
    _, _, p = episode()
    anchor = PrototypeAnchor()
    heads = {k: v + 0.01 * torch.randn_like(v) for k, v in anchor.rule(p, 2.5).items()}
    assert float(anchor.fit(heads, p).scale) == pytest.approx(2.5, rel=0.02)
    with pytest.raises(ValueError, match="do not point towards their class prototypes"):
        anchor.fit({k: -v for k, v in heads.items()}, p)


def test_an_anchored_generator_writes_rule_plus_residual_and_saves_its_scale(tmp_path):
    generator = anchored_generator()
    _, _, p = episode()
    condition = p[None]
    vectors = generator.generate_vectors(condition, seed=3)
    rule = generator.anchor(condition)
    residual = generator.codec.decode(vectors)
    heads = generator.generate(condition, seed=3)
    for name in ("weight", "bias"):
        torch.testing.assert_close(heads[name], residual[name] + rule[name])
    torch.testing.assert_close(generator.encode(heads, condition), vectors, rtol=1e-4, atol=1e-4)
    generator.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["anchor"] == "prototype"
    assert float(load_file(tmp_path / WEIGHTS_NAME)["anchor.scale"]) == 2.0
    loaded = McDiGenerator.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.generate(condition, seed=3)["weight"], heads["weight"])


def test_version_1_folders_load_and_newer_ones_say_to_upgrade(tmp_path):
    plain = McDiGenerator(GeneratorConfig(codec=HEAD_CODEC, denoiser=DENOISER))
    plain.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert "anchor" not in config  # omitted when None: the file is what version 1 wrote but for its number
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "format_version": 1}))
    assert McDiGenerator.from_pretrained(tmp_path).anchor is None
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99.*upgrade peft_mcdi"):
        McDiGenerator.from_pretrained(tmp_path)


def test_an_anchor_on_weights_that_are_not_prototype_heads_is_refused():
    lora = {"shapes": {"a": [4, DIM], "b": [DIM, 4]}}
    with pytest.raises(ValueError, match="anchor='prototype' needs a classifier-head generator"):
        GeneratorConfig(codec=lora, denoiser=DenoiserConfig(type="mlp", condition_dim=DIM), anchor="prototype")
    with pytest.raises(ValueError, match="anchor must be one of"):
        GeneratorConfig(codec=HEAD_CODEC, denoiser=DENOISER, anchor="centroid")


def test_an_anchored_generator_trains_on_the_zoo_heads_minus_the_rule(tmp_path):
    config = EpisodeConfig(num_ways=4, num_shots=[3], num_queries=5, pool_shots=6)
    tasks = sample_episodes(clustered_features(dim=DIM), range(12), config, 6, seed=2, prefix="a")
    store = ZooStore.open(tmp_path / "zoo", {"k": 1})
    collect_heads(tasks, store, RecorderConfig(num_epochs=4, lr=0.05, rho=0.0), progress=False)
    pipeline = PipelineConfig(
        taskset="synthetic", denoiser=DENOISER, anchor="prototype", scheduler=SchedulerConfig(num_segments=2),
        meta=MetaTrainConfig(num_outer_steps=1),
    )  # fmt: skip
    generator, data = build_generator(pipeline, store, TaskSets(TaskSet(tasks[:5]), TaskSet(tasks[5:])))
    assert generator.config.anchor == "prototype" and float(generator.anchor.scale) > 0
    decoded = generator.decode(data.targets[:, -1], data.conditions)
    for name in ("weight", "bias"):
        final = torch.stack([store.read(t.task_id).params[name][-1] for t in tasks[:5]])
        torch.testing.assert_close(decoded[name], final, rtol=1e-4, atol=1e-5)


def test_a_version_1_head_generator_with_the_condition_skip_loads_under_the_new_name(tmp_path):
    """Version 1 saved the skip's vectors as 'denoiser.condition_scale' (the name the 'standardize' statistics use)."""
    skip = DenoiserConfig(**{**DENOISER.to_dict(), "condition_skip": True})
    generator = McDiGenerator(GeneratorConfig(codec=HEAD_CODEC, denoiser=skip))
    with torch.no_grad():
        generator.denoiser.condition_skip_scale.normal_()
    generator.save_pretrained(tmp_path)
    state = load_file(tmp_path / WEIGHTS_NAME)
    state["denoiser.condition_scale"] = state.pop("denoiser.condition_skip_scale")
    save_file(state, tmp_path / WEIGHTS_NAME)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "format_version": 1}))
    loaded = McDiGenerator.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.denoiser.condition_skip_scale, generator.denoiser.condition_skip_scale)
    _, _, p = episode()
    torch.testing.assert_close(
        loaded.generate(p[None], seed=1)["weight"], generator.generate(p[None], seed=1)["weight"]
    )


def test_standardised_conditions_and_the_condition_skip_live_side_by_side():
    both = DenoiserConfig(**{**DENOISER.to_dict(), "condition_skip": True, "condition_normalization": "standardize"})
    generator = McDiGenerator(GeneratorConfig(codec=HEAD_CODEC, denoiser=both, anchor="prototype"))
    _, _, p = episode()
    generator.set_training_conditions(p[None].expand(3, -1, -1) + torch.randn(3, 5, DIM))
    assert generator.denoiser.condition_scale.dim() == 0 and generator.denoiser.condition_skip_scale.shape == (3, DIM)
    assert generator.generate(p[None], seed=0)["weight"].shape == (1, 5, DIM)
