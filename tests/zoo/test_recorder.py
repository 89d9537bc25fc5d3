"""Trajectory recording: shared init, kept epochs, resumable collection, corrupt and non-finite data."""

import copy
import json
from pathlib import Path

import pytest
import torch

from peft_mcdi.tasks.base import Task, get_tasksets
from peft_mcdi.zoo import recorder
from peft_mcdi.zoo.recorder import RecorderConfig, collect, train_task
from peft_mcdi.zoo.store import MANIFEST_NAME, ZooCorruptError, ZooStore


@pytest.fixture
def tasks():
    return get_tasksets("logistic", num_train_tasks=4, num_test_tasks=1, num_train_examples=32)


def test_trajectory_starts_at_shared_init_and_learns(tasks):
    config = RecorderConfig(num_epochs=6)
    checkpoints, final_loss = train_task(tasks.train[0], config)
    assert sorted(checkpoints) == list(range(7))
    for name, value in tasks.train[0].init_params().items():
        torch.testing.assert_close(checkpoints[0][name], value)  # θ₀, all-zero head
    task = tasks.train[0]
    assert task.evaluate(checkpoints[6]) < task.evaluate(checkpoints[0]) - 0.05
    assert final_loss == pytest.approx(final_loss)  # finite


def test_frozen_parameters_stay_at_theta0_and_the_rest_learns(tasks):
    """LoRA-FA-style zoos: parameters matching ``frozen`` are θ₀ at every kept epoch; the others still train."""
    task = tasks.train[0]
    checkpoints, _ = train_task(task, RecorderConfig(num_epochs=6, frozen=["b*"]))
    for epoch in checkpoints:
        torch.testing.assert_close(checkpoints[epoch]["bias"], task.init_params()["bias"], rtol=0, atol=0)
    assert not torch.equal(checkpoints[6]["weight"], task.init_params()["weight"])
    assert task.evaluate(checkpoints[6]) < task.evaluate(checkpoints[0]) - 0.05
    assert "frozen" not in RecorderConfig().to_dict()  # zoos collected before the field existed keep their key


def test_sgd_base_optimizer_learns_and_differs_from_adam(tasks):
    task = tasks.train[0]
    sgd, _ = train_task(task, RecorderConfig(num_epochs=6, optimizer="sgd", lr=0.5))
    adam, _ = train_task(task, RecorderConfig(num_epochs=6))
    assert task.evaluate(sgd[6]) < task.evaluate(sgd[0]) - 0.05
    assert not torch.allclose(sgd[6]["weight"], adam[6]["weight"])
    assert "optimizer" not in RecorderConfig().to_dict()  # Adam zoos collected before the field keep their key
    assert RecorderConfig(optimizer="sgd").to_dict()["optimizer"] == "sgd"


def test_unknown_base_optimizer_is_refused():
    with pytest.raises(ValueError, match=r"optimizer must be one of \['adam', 'sgd'\], got 'lbfgs'"):
        RecorderConfig(optimizer="lbfgs")


def test_only_local_targets_kept_when_asked(tasks):
    config = RecorderConfig(num_epochs=10, num_segments=3, keep_every_epoch=False)
    checkpoints, _ = train_task(tasks.train[0], config)
    assert sorted(checkpoints) == [0, 3, 7, 10]


def test_collect_writes_manifest_and_skips_finished_tasks(tasks, tmp_path, monkeypatch):
    store = ZooStore.open(tmp_path / "zoo", {"family": "logistic"})
    config = RecorderConfig(num_epochs=3)
    assert collect(tasks.train[:2], store, config, progress=False) == ["train-00000", "train-00001"]
    first = store.path("train-00000").read_bytes()

    calls = []
    real = recorder.train_task
    monkeypatch.setattr(recorder, "train_task", lambda task, cfg: calls.append(task.task_id) or real(task, cfg))
    assert collect(tasks.train, store, config, progress=False) == ["train-00002", "train-00003"]
    assert calls == ["train-00002", "train-00003"]  # finished tasks are not recomputed
    assert store.path("train-00000").read_bytes() == first  # nor rewritten

    store.write_manifest()
    rows = [json.loads(line) for line in (store.root / MANIFEST_NAME).read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [t.task_id for t in tasks.train]
    trajectory = store.read("train-00001")
    assert trajectory.epochs == [0, 1, 2, 3] and trajectory.params["weight"].shape == (4, 16)
    torch.testing.assert_close(trajectory.condition, tasks.train[1].condition)


def test_collect_shards_across_processes(tasks, tmp_path):
    store = ZooStore.open(tmp_path / "zoo", {})
    config = RecorderConfig(num_epochs=1)
    a = collect(tasks.train, store, config, rank=0, world_size=2, progress=False)
    b = collect(tasks.train, store, config, rank=1, world_size=2, progress=False)
    assert sorted(a + b) == [t.task_id for t in tasks.train] and not set(a) & set(b)


def test_zoo_config_mismatch_is_refused(tmp_path):
    ZooStore.open(tmp_path, {"lr": 0.1})
    with pytest.raises(ValueError, match="different configuration"):
        ZooStore.open(tmp_path, {"lr": 0.2})


def test_truncated_task_file_is_reported_not_skipped(tasks, tmp_path):
    store = ZooStore.open(tmp_path, {})
    collect(tasks.train[:1], store, RecorderConfig(num_epochs=2), progress=False)
    path = store.path("train-00000")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ZooCorruptError, match="train-00000.safetensors is corrupt or truncated"):
        store.read("train-00000")
    with pytest.raises(ZooCorruptError):
        store.write_manifest()


def test_nan_in_a_trajectory_is_refused_and_reported(tmp_path):
    store = ZooStore.open(tmp_path, {})
    bad = {0: {"w": torch.zeros(3)}, 1: {"w": torch.tensor([0.0, float("nan"), 1.0])}}
    with pytest.raises(ValueError, match="task 'x': w after epoch 1 is not finite"):
        store.write("x", bad, torch.zeros(2))
    assert not store.has("x")
    # a file that holds NaN anyway (written by another tool) is reported on read
    from safetensors.torch import save_file

    save_file(
        {"condition": torch.zeros(2), "epoch_0/w": torch.tensor([float("nan")])},
        store.path("y"),
        metadata={"mcdi": json.dumps({"task_id": "y", "epochs": [0]})},
    )
    with pytest.raises(ZooCorruptError, match="NaN"):
        store.read("y")


class ExplodingTask(Task):
    """Its loss overflows after the first step, as a too-large learning rate would make it."""

    task_id, condition = "boom", torch.zeros(1)

    def init_params(self):
        return {"w": torch.ones(2)}

    def loss(self, params, batch):
        return torch.exp(params["w"] * 100.0).sum()

    def train_batches(self, epoch, generator):
        return [None]

    def evaluate(self, params):
        return params["w"].sum(-1)


def test_diverging_training_is_reported():
    with pytest.raises(FloatingPointError, match="task 'boom' diverged at epoch"):
        train_task(ExplodingTask(), RecorderConfig(num_epochs=5, lr=10.0))


def test_bad_task_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="task_id"):
        ZooStore.open(tmp_path, {}).path("../escape")


def test_writes_are_atomic(tasks, tmp_path, monkeypatch):
    """A crash while writing leaves no task file (so the task is recollected) and no temporary litter."""
    store = ZooStore.open(tmp_path, {})
    import peft_mcdi.zoo.store as store_module

    def crash(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        collect(tasks.train[:1], store, RecorderConfig(num_epochs=1), progress=False)
    assert not store.has("train-00000")
    assert list(store.task_dir.iterdir()) == []


def test_tasks_trained_side_by_side_retrace_their_own_trajectories(tasks, tmp_path):
    """One grouped pass per step (tasks_per_pass) gives every task its single-task trajectory, kept epochs, loss and
    frozen parameters included, and collection writes each task as the one-at-a-time path does."""
    config = RecorderConfig(num_epochs=3, lr=0.05, rho=0.0, frozen=["b*"])
    group = recorder.train_task_group(list(tasks.train[:3]), config)
    for task, (checkpoints, loss) in zip(tasks.train[:3], group):
        alone, alone_loss = train_task(task, config)
        assert sorted(checkpoints) == sorted(alone) and loss == pytest.approx(alone_loss, rel=1e-5)
        for epoch in alone:
            for name in alone[epoch]:
                torch.testing.assert_close(checkpoints[epoch][name], alone[epoch][name], rtol=1e-5, atol=1e-6)
    grouped = RecorderConfig(num_epochs=3, lr=0.05, rho=0.0, tasks_per_pass=3)
    store = ZooStore.open(tmp_path / "zoo", "k")
    assert collect(tasks.train, store, grouped, progress=False) == [t.task_id for t in tasks.train]  # 3 + 1 tasks
    assert "tasks_per_pass" not in RecorderConfig().to_dict()  # zoos collected before the field existed keep their key


def test_side_by_side_training_refuses_sam_and_uneven_tasks(tasks):
    with pytest.raises(ValueError, match="tasks_per_pass must be >= 1, and 1 when rho > 0"):
        RecorderConfig(rho=0.05, tasks_per_pass=2)
    with pytest.raises(ValueError, match="rho"):
        recorder.train_task_group(list(tasks.train[:2]), RecorderConfig(rho=0.05))
    uneven = copy.copy(tasks.train[1])
    uneven.train_batches = lambda epoch, generator: [*tasks.train[1].train_batches(epoch, generator)] * 2
    with pytest.raises(ValueError, match="as many training batches per epoch"):
        recorder.train_task_group([tasks.train[0], uneven], RecorderConfig(rho=0.0))
