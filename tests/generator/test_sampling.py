"""The sampling chain against an inline reference: every step's arithmetic and the order of the noise draws; the
row-space chain against the full one."""

import os

import pytest
import torch

from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.model import GeneratorConfig, McDiGenerator
from peft_mcdi.generator.sampling import _spare_cpu_core
from peft_mcdi.generator.schedulers import SchedulerConfig
from tests.generator.test_codec import lora_shapes
from tests.generator.test_model import conditions, make_generator


@pytest.fixture(params=["one_thread", "all_threads"])
def intra_op_threads(request):
    """One intra-op thread leaves a core for the noise helper thread (where the machine has two); all threads don't,
    and the draws stay inline. Both paths must give the same chain."""
    before = torch.get_num_threads()
    torch.set_num_threads(1 if request.param == "one_thread" else os.cpu_count() or 1)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["mlp", "lora"])
def test_ddpm_chain_equals_the_step_by_step_reference(kind, intra_op_threads):
    """x_T and each ancestral z come from the task's generator in chain order, exactly as ``torch.randn`` draws them
    inline (the sampler may draw them one step ahead on a helper thread), and every chain entry is its own
    snapshot."""
    assert _spare_cpu_core() == (intra_op_threads == "one_thread" and len(os.sched_getaffinity(0)) > 1)
    gen, c = make_generator(kind), conditions(kind, 1)
    layout = gen.codec.token_layout() if kind == "lora" else None
    x0, chain = gen.generate_vectors(c, seed=11, return_chain=True)

    rng = torch.Generator().manual_seed(11)
    x = torch.randn(gen.codec.dim(), generator=rng)[None]
    expected = [x]
    with torch.no_grad():
        for t, t_prev in gen.scheduler.timesteps_for():
            f = gen.denoiser(x, torch.tensor([t]), c, layout=layout)
            z = torch.randn(x.shape[1], generator=rng)[None] if t_prev > 0 else None
            x = gen.scheduler.step(f, t, t_prev, x, noise=z, sampler="ddpm")
            expected.append(x)
    assert len(chain) == len(expected)
    for got, want in zip(chain, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x0, chain[-1], rtol=0, atol=0)


def narrow_lora_generator() -> McDiGenerator:
    """A LoRA generator whose tokens (20 numbers) are read through a frame of 2 × (3 + 3) numbers (rank 2, width 3)
    and a hidden state of 8: a proper row space inside a proper frame."""
    torch.manual_seed(0)
    gen = McDiGenerator(
        GeneratorConfig(
            codec={"shapes": lora_shapes()},
            denoiser=DenoiserConfig(
                type="tokens", condition_dim=4, hidden_dim=8, num_layers=2, num_heads=2, lora_factor_dim=3
            ),
        ),
        SchedulerConfig(num_train_timesteps=10, num_segments=2),
    )
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return gen


@pytest.mark.parametrize("kind", ["lora", "heads", "narrow"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_row_space_chain_is_the_full_chain_without_noise(kind, prediction_type, sampler, guidance_scale):
    """At temperature 0 both chains are deterministic: the same x_0 up to float rounding, so every step's
    coefficients, the skip, the guidance and the final decode of the weighted trunk states are right."""
    gen = narrow_lora_generator() if kind == "narrow" else make_generator(kind, prediction_type)
    c = conditions("lora" if kind == "narrow" else kind, 3)
    kwargs = {"seed": 2, "sampler": sampler, "guidance_scale": guidance_scale, "temperature": 0.0}
    full = gen.generate_vectors(c, row_space=False, **kwargs)
    reduced = gen.generate_vectors(c, row_space=True, **kwargs)
    torch.testing.assert_close(reduced, full, atol=1e-5, rtol=1e-4)


def spread_in_and_out_of_the_row_space(gen: McDiGenerator, x: torch.Tensor) -> torch.Tensor:
    """Total variance of samples (n, D) inside and outside the denoiser's input row spaces, per sample."""
    layout = gen.layout(None)
    totals = torch.zeros(2)
    for piece, (_, space) in zip(gen.denoiser.gather(x, layout), gen.denoiser.input_row_space(layout, x.device)):
        inside = space.expand(space.coordinates(piece))
        for j, part in enumerate((inside, piece - inside)):
            totals[j] += (part - part.mean(0)).pow(2).sum() / x.shape[0]
    return totals


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_row_space_chain_has_the_full_chain_distribution(sampler):
    """With noise the draws differ, the distribution must not: over 1,000 samples of each chain, per-coordinate means
    agree within sampling error and so does the spread inside and outside the row space (the part drawn step by
    step and the part drawn once at the end: here they agree within 1.5 %, and a 10 % error in the scale of the
    null-space draw moves its ratio by 20 %, in the ancestral steps' scale the row space's by 6 %)."""
    gen, n = narrow_lora_generator(), 1000
    c = conditions("lora", 1).expand(n, -1)
    full = gen.generate_vectors(c, seed=list(range(n)), sampler=sampler, row_space=False)
    reduced = gen.generate_vectors(c, seed=list(range(n, 2 * n)), sampler=sampler, row_space=True)
    mean_z = (reduced.mean(0) - full.mean(0)) / (full.std(0) * (2 / n) ** 0.5)
    assert mean_z.abs().max() < 5
    ratio = spread_in_and_out_of_the_row_space(gen, reduced) / spread_in_and_out_of_the_row_space(gen, full)
    assert (ratio - 1).abs().max() < 0.04, ratio


def test_row_space_chain_is_batch_invariant_and_follows_the_weights():
    gen, c = narrow_lora_generator(), conditions("lora", 4)
    batched = gen.generate_vectors(c, seed=5, row_space=True)
    alone = torch.cat([gen.generate_vectors(c[j : j + 1], seed=5, row_space=True) for j in range(4)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the cached row spaces must not outlive the weights they were computed from
        for p in gen.denoiser.projections.parameters():
            p.mul_(1.5)
    full = gen.generate_vectors(c, seed=5, temperature=0.0, row_space=False)
    torch.testing.assert_close(
        gen.generate_vectors(c, seed=5, temperature=0.0, row_space=True), full, atol=1e-5, rtol=1e-4
    )


def test_row_space_chain_is_chosen_where_it_pays_and_refused_where_it_cannot_run():
    gen, c = narrow_lora_generator(), conditions("lora", 1)
    assert not torch.equal(gen.generate_vectors(c, seed=1), gen.generate_vectors(c, seed=1, row_space=False))
    wide = make_generator("lora")  # tokens of 20 numbers, hidden 32: nothing to gain, the full chain runs
    assert torch.equal(wide.generate_vectors(c, seed=1), wide.generate_vectors(c, seed=1, row_space=False))
    with pytest.raises(ValueError, match="row_space=True needs a token denoiser"):
        make_generator("mlp").generate_vectors(conditions("mlp", 1), row_space=True)
    with pytest.raises(ValueError, match="return_chain=False"):
        gen.generate_vectors(c, row_space=True, return_chain=True)
