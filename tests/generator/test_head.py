"""HeadGenerator: shapes for any N, permutation equivariance in classes, the nn.Linear it returns, bad input."""

import pytest
import torch
import torch.nn.functional as F

from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.head import GeneratedHead, HeadGenerator
from peft_mcdi.generator.model import GeneratorConfig, McDiGenerator
from peft_mcdi.generator.schedulers import SchedulerConfig


DIM = 8


def head_generator(condition_skip: bool = True, **kwargs) -> HeadGenerator:
    denoiser = DenoiserConfig(
        type="tokens", condition_dim=DIM, hidden_dim=32, num_layers=2, per_token_condition=True,
        condition_skip=condition_skip,
    )  # fmt: skip
    config = GeneratorConfig(codec={"shapes": {"weight": [DIM], "bias": []}, "row_tokens": True}, denoiser=denoiser)
    gen = McDiGenerator(config, SchedulerConfig(num_train_timesteps=10, num_segments=2))
    with torch.no_grad():  # untrained generators predict zeros; give the test something to see
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return HeadGenerator(gen, **kwargs)


def support(num_ways: int, shots: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_ways * shots, DIM, generator=g), torch.arange(num_ways).repeat_interleave(shots)


@pytest.mark.parametrize("num_ways", [2, 5, 20])
def test_any_number_of_ways(num_ways):
    gen = head_generator()
    x, y = support(num_ways, 3)
    heads = gen.generate_heads(x, y)
    assert heads["weight"].shape == (1, num_ways, DIM) and heads["bias"].shape == (1, num_ways)
    assert torch.isfinite(heads["weight"]).all() and gen.last_generation_ms > 0
    batched = gen.generate_heads(torch.stack([x, x.flip(0)]), torch.stack([y, y.flip(0)]), seed=[0, 1])
    torch.testing.assert_close(batched["weight"][0], heads["weight"][0])  # a batch gives each episode its own seed


@pytest.mark.parametrize("condition_skip", [False, True])
def test_denoiser_is_permutation_equivariant_in_classes(condition_skip):
    gen = head_generator(condition_skip).generator
    N, width = 6, DIM + 1
    sample, condition = torch.randn(2, N * width), torch.randn(2, N, DIM)
    t = torch.tensor([3, 7])
    perm = torch.randperm(N)
    layout = gen.layout(N)
    out = gen.denoiser(sample, t, condition, layout=layout).view(2, N, width)
    permuted = gen.denoiser(sample.view(2, N, width)[:, perm].flatten(1), t, condition[:, perm], layout=layout)
    torch.testing.assert_close(permuted.view(2, N, width), out[:, perm], rtol=1e-4, atol=1e-5)


def test_generate_head_is_a_linear_layer_on_raw_features():
    gen = head_generator()
    x, y = support(4, 2)
    head = gen.generate_head(x, y, seed=5)
    assert isinstance(head, GeneratedHead) and isinstance(head, torch.nn.Linear)
    assert head.weight.shape == (4, DIM) and not head.weight.requires_grad
    heads = gen.generate_heads(x, y, seed=5)
    expected = F.normalize(x, dim=-1) @ heads["weight"][0].T + heads["bias"][0]
    torch.testing.assert_close(head(x), expected)
    torch.testing.assert_close(head(3 * x), expected)  # scale-free: features are L2-normalised first


def test_bad_support_sets_are_clear_errors():
    gen = head_generator()
    x, y = support(3, 2)
    with pytest.raises(ValueError, match=r"support features must be \(n, 8\)"):
        gen.generate_heads(x[:, :5], y)
    with pytest.raises(ValueError, match="support labels have shape"):
        gen.generate_heads(x, y[:-1])
    with pytest.raises(ValueError, match="at least one support example"):
        gen.generate_heads(x, y, num_ways=4)
    lora = McDiGenerator(GeneratorConfig(codec={"shapes": {"w": [4]}}, denoiser=DenoiserConfig(condition_dim=4)))
    with pytest.raises(ValueError, match="rows-layout codec"):
        HeadGenerator(lora)


def test_from_pretrained_round_trip(tmp_path):
    gen = head_generator()
    gen.generator.save_pretrained(tmp_path / "gen")
    loaded = HeadGenerator.from_pretrained(tmp_path / "gen", sampler="ddim", num_inference_steps=4)
    x, y = support(3, 2)
    assert loaded.sample_kwargs["sampler"] == "ddim"
    expected = HeadGenerator(gen.generator, sampler="ddim", num_inference_steps=4).generate_heads(x, y)
    torch.testing.assert_close(loaded.generate_heads(x, y)["weight"], expected["weight"])


def test_condition_skip_uses_the_condition_and_drops_with_it():
    gen = head_generator().generator
    N, sample, t = 3, torch.zeros(1, 3 * (DIM + 1)), torch.tensor([4])
    condition = torch.randn(1, N, DIM)
    layout = gen.layout(N)
    base = gen.denoiser(sample, t, condition, layout=layout)
    with torch.no_grad():
        gen.denoiser.condition_skip_scale.zero_()
    without = gen.denoiser(sample, t, condition, layout=layout)
    assert not torch.allclose(base, without)
    with torch.no_grad():
        gen.denoiser.condition_skip_scale.normal_()
    dropped = torch.tensor([True])
    rows = gen.denoiser.condition_rows(condition, dropped, layout)
    assert rows.shape == (1, N, 3, DIM) and (rows == 0).all()
    with pytest.raises(ValueError, match="condition_skip=True needs per_token_condition"):
        DenoiserConfig(type="tokens", condition_skip=True)


def test_averaging_samples_is_the_mean_of_single_draws():
    gen = head_generator()
    x, y = support(3, 2)
    mean = HeadGenerator(gen.generator, num_samples=4).generate_heads(x, y, seed=[2])
    draws = [gen.generate_heads(x, y, seed=2 * 4 + j) for j in range(4)]
    torch.testing.assert_close(mean["weight"][0], torch.stack([d["weight"][0] for d in draws]).mean(0))
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        HeadGenerator(gen.generator, num_samples=0)


def test_support_sets_far_from_every_training_set_get_the_prototype_rule():
    from peft_mcdi.generator.head import HeadGenerator, nearest_other_distances, prototype_rule

    generator = head_generator().generator
    near_x, near_y = support(3, 2, seed=1)
    training = torch.stack([HeadGenerator(generator).conditions(*support(3, 2, seed=s))[0] for s in range(1, 9)])
    generator.set_training_conditions(training)  # (8, 3, DIM): support set 1 is among them
    gen = HeadGenerator(generator, fallback_quantile=0.5)
    assert gen.fallback_threshold == pytest.approx(float(nearest_other_distances(generator.train_conditions).median()))
    far_x = near_x + 5.0  # the same classes, shifted far from every training prototype
    x, y = torch.stack([near_x, far_x]), torch.stack([near_y, near_y])
    heads = gen.generate_heads(x, y, seed=[0, 1])
    assert gen.last_fallback.tolist() == [False, True]
    rule = prototype_rule(gen.last_condition, None)
    torch.testing.assert_close(heads["weight"][1], rule["weight"][1])  # the rule exactly where it fell back
    alone = HeadGenerator(generator).generate_heads(x, y, seed=[0, 1])
    torch.testing.assert_close(heads["weight"][0], alone["weight"][0])  # the generated head elsewhere
    with pytest.raises(ValueError, match="fallback_quantile must be None or in"):
        HeadGenerator(generator, fallback_quantile=1.5)
    with pytest.raises(ValueError, match="needs the training conditions the generator recorded"):
        HeadGenerator(head_generator().generator, fallback_quantile=0.9)
