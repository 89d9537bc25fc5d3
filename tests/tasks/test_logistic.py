import torch

from peft_mcdi.tasks.base import Task, get_tasksets
from peft_mcdi.tasks.logistic import LogisticFamilyConfig, true_parameters


def test_split_is_deterministic_and_disjoint():
    a = get_tasksets("logistic", num_train_tasks=6, num_test_tasks=3, seed=4)
    b = get_tasksets("logistic", num_train_tasks=6, num_test_tasks=3, seed=4)
    torch.testing.assert_close(a.train.conditions(), b.train.conditions())
    torch.testing.assert_close(a.test[0].train_x, b.test[0].train_x)
    assert not {t.task_id for t in a.train} & {t.task_id for t in a.test}
    other = get_tasksets("logistic", num_train_tasks=6, num_test_tasks=3, seed=5)
    assert not torch.allclose(a.train.conditions(), other.train.conditions())


def test_optimum_depends_nonlinearly_on_the_descriptor():
    config = LogisticFamilyConfig()
    z = torch.rand(3, 4) * 2 - 1
    w = true_parameters(torch.stack([z[0], z[1], (z[0] + z[1]) / 2]), config)
    assert not torch.allclose(w[2], (w[0] + w[1]) / 2, atol=1e-3)  # not affine in z


def test_true_parameters_beat_zero_weights_and_evaluate_batches():
    tasks = get_tasksets("logistic", num_train_tasks=1, num_test_tasks=1)
    task = tasks.train[0]
    truth = true_parameters(task.condition[None], task.config)[0]
    batch = {"weight": torch.stack([truth[:-1], torch.zeros(16)]), "bias": torch.stack([truth[-1], torch.zeros(())])}
    losses = task.evaluate(batch)
    assert losses.shape == (2,) and losses[0] < losses[1] - 0.2


def test_grouped_loss_is_each_tasks_own_loss():
    tasks = list(get_tasksets("logistic", num_train_tasks=3, num_test_tasks=1, dim=4).train)
    g = torch.Generator().manual_seed(0)
    params = {"weight": torch.randn(3, 4, generator=g), "bias": torch.randn(3, generator=g)}
    batches = [next(iter(t.train_batches(0, g))) for t in tasks]
    alone = Task.grouped_loss(tasks, params, batches)  # the default: one loss call per group
    torch.testing.assert_close(type(tasks[0]).grouped_loss(tasks, params, batches), alone)
