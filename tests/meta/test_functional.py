"""The functional term (SPEC §3.7): the trainer's update equals the hand computation of diffusion loss + λ·task loss
of the decoded clean estimate, for Reptile and single-level; λ = 0 is the paper's Mc-Di exactly; bad input."""

import copy

import pytest
import torch

from peft_mcdi.generator.schedulers import LocalConsistencyScheduler, SchedulerConfig
from peft_mcdi.meta.trainer import MetaTrainConfig, MetaTrainer
from peft_mcdi.tasks.base import Task
from tests.meta.test_trainer import slot_loss, toy


class Regression(Task):
    """w (5,) fits y = x·w* on 32 examples; the zoo's targets need not be its optimum."""

    def __init__(self, task_id: str, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.task_id, self.condition = task_id, torch.randn(3, generator=g)
        self.x = torch.randn(32, 5, generator=g)
        self.y = self.x @ torch.randn(5, generator=g)

    def init_params(self):
        return {"w": torch.zeros(5)}

    def loss(self, params, batch):
        x, y = batch
        return (x @ params["w"] - y).pow(2).mean()

    def train_batches(self, epoch, generator):
        order = torch.randperm(32, generator=generator)
        yield self.x[order[:8]], self.y[order[:8]]

    def evaluate(self, params):
        return self.loss(params, (self.x, self.y))


def setup(algorithm: str, weight: float, **kwargs):
    gen, data = toy()
    tasks = [Regression(task_id, i) for i, task_id in enumerate(data.task_ids)]
    cfg = MetaTrainConfig(
        algorithm=algorithm, meta_batch_size=3, inner_steps=2, inner_lr=0.05, outer_optimizer="sgd", outer_lr=0.3,
        samples_per_task=4, functional_weight=weight, functional_samples=3, **kwargs,
    )  # fmt: skip
    return gen, data, tasks, MetaTrainer(gen, data, cfg, tasks=tasks)


def hand_loss(model, trainer, tasks, j, s, targets, conditions, noise, functional):
    """Slot j's loss at inner step s, written out: the Mc-Di loss plus λ·(task loss of the decoded x̂₀)."""
    loss = slot_loss(model, targets[j], conditions[j], [x[j] for x in noise[s]])
    index, draw = functional[s][j]
    scheduler, n = model.scheduler, draw.timesteps.shape[0]
    if trainer.config.functional_input == "pure_noise":  # the sampler's first step: ε itself at t = T
        assert (draw.timesteps == scheduler.num_train_timesteps).all()
        x_t = draw.noise
    else:
        x_t = scheduler.add_noise(targets[j, -1].expand(n, -1), draw.noise, draw.timesteps)
    no_drop = torch.zeros(n, dtype=torch.bool)
    f = model.denoiser(x_t, draw.timesteps, conditions[j].expand(n, -1), no_drop, trainer.layout)
    weights = model.codec.decode(scheduler.clean_estimate(x_t, f, draw.timesteps))
    term = sum(tasks[index].loss({k: v[i] for k, v in weights.items()}, draw.batch) for i in range(n)) / n
    return loss + trainer.config.functional_weight * term


def test_reptile_with_the_functional_term_equals_hand_computation():
    gen, data, tasks, trainer = setup("reptile", 0.5)
    phi = {n: p.detach().clone() for n, p in gen.named_parameters()}
    targets, conditions, noise, functional = trainer._draw_slots(0)
    assert len(functional) == 2 and [len(f) for f in functional] == [3, 3]
    adapted = []
    for j in range(3):
        model = copy.deepcopy(gen)
        for s in range(2):
            loss = hand_loss(model, trainer, tasks, j, s, targets, conditions, noise, functional)
            grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads):
                    if g is not None:
                        p -= 0.05 * g
        adapted.append({n: p.detach() for n, p in model.named_parameters()})
    trainer.outer_step()
    for name, p in gen.named_parameters():
        mean_delta = torch.stack([a[name] - phi[name] for a in adapted]).mean(0)
        torch.testing.assert_close(p.detach(), phi[name] + 0.3 * mean_delta, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("functional_input", ["noised_target", "pure_noise"])
def test_single_level_with_the_functional_term_is_the_mean_gradient(functional_input):
    gen, data, tasks, trainer = setup("single_level", 2.0, functional_input=functional_input)
    targets, conditions, noise, functional = trainer._draw_slots(0)
    model = copy.deepcopy(gen)
    loss = sum(hand_loss(model, trainer, tasks, j, 0, targets, conditions, noise, functional) for j in range(3)) / 3
    names = [n for n, _ in model.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)))
    phi = {n: p.detach().clone() for n, p in gen.named_parameters()}
    assert trainer.outer_step() == pytest.approx(loss.item(), rel=1e-5)
    for name, p in gen.named_parameters():
        step = 0 if grads[name] is None else 0.3 * grads[name]
        torch.testing.assert_close(p.detach(), phi[name] - step, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("algorithm", ["reptile", "single_level"])
def test_zero_weight_is_the_papers_mcdi_exactly(algorithm):
    """λ = 0 draws nothing more and adds nothing: the same parameters, bit for bit, as training without tasks."""
    gen, data, tasks, trainer = setup(algorithm, 0.0, num_outer_steps=3)
    plain = copy.deepcopy(gen)
    MetaTrainer(plain, data, MetaTrainConfig(**{**trainer.config.to_dict()})).train(progress=False)
    trainer.train(progress=False)
    for (name, a), b in zip(gen.named_parameters(), plain.parameters()):
        assert torch.equal(a, b), name
    assert "functional_weight" not in trainer.config.to_dict()  # cache keys of earlier runs stay valid
    _, _, _, functional = setup(algorithm, 1.0, num_outer_steps=3)
    functional.train(progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(functional.generator.parameters(), plain.parameters()))


def test_the_clean_estimate_inverts_the_noising():
    for prediction_type in ("epsilon", "sample"):
        scheduler = LocalConsistencyScheduler(SchedulerConfig(num_train_timesteps=10, prediction_type=prediction_type))
        x0, eps, t = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([1, 4, 7, 10])
        x_t = scheduler.add_noise(x0, eps, t)
        exact = eps if prediction_type == "epsilon" else x0  # what a perfect denoiser outputs
        torch.testing.assert_close(scheduler.clean_estimate(x_t, exact, t), x0, atol=1e-5, rtol=1e-5)


def test_bad_functional_settings_are_named():
    gen, data = toy()
    with pytest.raises(ValueError, match="functional_weight must be >= 0"):
        MetaTrainConfig(functional_weight=-1.0)
    with pytest.raises(ValueError, match="functional_input must be one of"):
        MetaTrainConfig(functional_input="target")
    with pytest.raises(ValueError, match="pass tasks="):
        MetaTrainer(gen, data, MetaTrainConfig(functional_weight=1.0))
    tasks = [Regression(f"other{i}", i) for i in range(len(data))]
    with pytest.raises(ValueError, match="in the order of data.task_ids"):
        MetaTrainer(gen, data, MetaTrainConfig(functional_weight=1.0), tasks=tasks)
