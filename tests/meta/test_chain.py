"""Fine-tuning through the sampling chain (SPEC §3.7, DRaFT-K): the differentiable chain is the sampler's chain,
gradients reach exactly the last K denoiser calls, fine-tuning lowers the training tasks' loss of generated weights,
a stopped stage resumes bit for bit, and bad settings are refused."""

import pytest
import torch

from peft_mcdi.generator.sampling import sample
from peft_mcdi.meta.chain import ChainFinetuneConfig, chain_sample, finetune_through_chain
from tests.meta.test_functional import Regression
from tests.meta.test_trainer import toy


def setup():
    gen, data = toy()
    return gen, data, [Regression(task_id, i) for i, task_id in enumerate(data.task_ids)]


def test_the_deterministic_chain_is_the_samplers():
    gen, data, _ = setup()
    with torch.no_grad():
        ours = chain_sample(gen, data.conditions, last_steps=3, temperature=0.0, rng=torch.Generator())
    theirs = sample(gen.denoiser, gen.scheduler, data.conditions, 5, [0] * len(data), temperature=0.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def grads(gen, loss) -> list[torch.Tensor]:
    return torch.autograd.grad(loss, list(gen.denoiser.parameters()), allow_unused=True, materialize_grads=True)


def test_gradients_reach_the_last_k_denoiser_calls_only():
    """K = 1: the gradient is that of the last call alone, its input x_1 a constant; K = 2 adds the call before."""
    gen, data, _ = setup()
    c = data.conditions
    one = grads(gen, chain_sample(gen, c, 1, 0.0, torch.Generator()).pow(2).sum())
    _, chain = sample(gen.denoiser, gen.scheduler, c, 5, [0] * len(data), temperature=0.0, return_chain=True)
    x_1 = chain[-2].clone()
    c_x, c_eps, _ = gen.scheduler.step_coefficients(1, 0, "ddpm")
    last = gen.denoiser(x_1, torch.ones(len(data), dtype=torch.long), c)
    by_hand = grads(gen, (c_x * x_1 - c_eps * last).pow(2).sum())
    for a, b in zip(one, by_hand):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    two = grads(gen, chain_sample(gen, c, 2, 0.0, torch.Generator()).pow(2).sum())
    assert sum(float((a - b).abs().sum()) for a, b in zip(one, two)) > 1e-4


def test_chain_finetuning_lowers_the_task_loss_of_generated_weights_and_resumes(tmp_path):
    gen, data, tasks = setup()
    config = ChainFinetuneConfig(steps=60, last_steps=2, tasks_per_step=3, lr=3e-3, temperature=0.5)

    def generated_loss(model) -> float:
        with torch.no_grad():
            x0 = chain_sample(model, data.conditions, 1, config.temperature, torch.Generator().manual_seed(1))
            weights = model.codec.decode(x0)
            return sum(float(t.evaluate({"w": weights["w"][i]})) for i, t in enumerate(tasks)) / len(tasks)

    before = generated_loss(gen)
    straight = finetune_through_chain(gen, data, tasks, config, progress=False)
    assert generated_loss(gen) < 0.7 * before
    assert straight[-10:] < straight[:10] or sum(straight[-10:]) < sum(straight[:10])

    stopped, _, _ = setup()
    shorter = ChainFinetuneConfig(**{**config.to_dict(), "steps": 50})
    finetune_through_chain(stopped, data, tasks, shorter, progress=False, checkpoint_dir=tmp_path)
    resumed, _, _ = setup()
    losses = finetune_through_chain(resumed, data, tasks, config, progress=False, checkpoint_dir=tmp_path)
    assert losses == straight
    for a, b in zip(gen.denoiser.parameters(), resumed.denoiser.parameters()):
        assert torch.equal(a, b)


def test_bad_settings_are_refused():
    gen, data, tasks = setup()
    with pytest.raises(ValueError, match="last_steps"):
        ChainFinetuneConfig(last_steps=0)
    with pytest.raises(ValueError, match="temperature"):
        ChainFinetuneConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="T = 10"):
        finetune_through_chain(gen, data, tasks, ChainFinetuneConfig(steps=1, last_steps=11), progress=False)
    with pytest.raises(ValueError, match="order of data.task_ids"):
        finetune_through_chain(gen, data, tasks[::-1], ChainFinetuneConfig(steps=1), progress=False)
