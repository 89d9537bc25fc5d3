"""The one-pass hypernetwork baselines: regression onto the zoo, and Text-to-LoRA's SFT through the task loss."""

import pytest
import torch

from peft_mcdi.evaluation.baselines.hypernetwork import OnePassHypernetwork
from tests.meta.test_functional import Regression
from tests.meta.test_trainer import toy


def mean_task_loss(net, data, tasks) -> float:
    weights = net.generate(data.conditions)
    return sum(float(t.evaluate({"w": weights["w"][i]})) for i, t in enumerate(tasks)) / len(tasks)


def test_training_through_the_task_loss_fits_the_tasks_not_the_zoo():
    """The zoo's targets are random here, unrelated to the tasks: regression onto them leaves the task loss where
    it is, training through the task loss lowers it."""
    gen, data = toy(n_tasks=6)
    tasks = [Regression(task_id, i) for i, task_id in enumerate(data.task_ids)]
    regression, functional = OnePassHypernetwork(gen.config), OnePassHypernetwork(gen.config)
    functional.load_state_dict(regression.state_dict())
    start = mean_task_loss(functional, data, tasks)
    regression.fit(data, num_steps=150, batch_size=4, lr=1e-2, progress=False)
    losses = functional.fit_functional(data, tasks, num_steps=150, batch_size=4, lr=1e-2, progress=False)
    assert len(losses) == 150
    assert mean_task_loss(functional, data, tasks) < 0.5 * min(start, mean_task_loss(regression, data, tasks))


def test_functional_training_needs_the_zoos_tasks_in_order():
    gen, data = toy(n_tasks=3)
    tasks = [Regression(task_id, i) for i, task_id in enumerate(data.task_ids)]
    with pytest.raises(ValueError, match="in the order of data.task_ids"):
        OnePassHypernetwork(gen.config).fit_functional(data, tasks[::-1], num_steps=1, progress=False)


def test_functional_training_resumes_from_its_checkpoint_bit_for_bit(tmp_path):
    """A run stopped after its step-100 checkpoint and rerun to the end equals the run that never stopped."""
    gen, data = toy(n_tasks=6)
    tasks = [Regression(task_id, i) for i, task_id in enumerate(data.task_ids)]

    def net():
        torch.manual_seed(0)
        return OnePassHypernetwork(gen.config)

    straight = net()
    expected = straight.fit_functional(data, tasks, num_steps=120, batch_size=4, lr=1e-2, progress=False)
    stopped = net()
    stopped.fit_functional(data, tasks, num_steps=110, batch_size=4, lr=1e-2, progress=False, checkpoint_dir=tmp_path)
    resumed = net()
    losses = resumed.fit_functional(
        data, tasks, num_steps=120, batch_size=4, lr=1e-2, progress=False, checkpoint_dir=tmp_path
    )
    assert losses == expected
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="checkpoint of another training run"):
        net().fit_functional(data, tasks, num_steps=1, lr=2e-2, progress=False, checkpoint_dir=tmp_path)
