"""Batched head training equals per-task training (Adam + SAM as the recorder does it), and it learns."""

import torch

from peft_mcdi.evaluation.harness import first_reaching
from peft_mcdi.tasks.episodes import EpisodeBatch, EpisodeConfig, sample_episodes
from peft_mcdi.zoo.heads import collect_heads, train_heads
from peft_mcdi.zoo.recorder import RecorderConfig, collect
from peft_mcdi.zoo.store import ZooStore
from tests.tasks.synthetic import clustered_features


def _tasks(n=5, **kwargs):
    config = EpisodeConfig(**{"num_ways": 4, "num_shots": [1, 3], "num_queries": 5, "pool_shots": 6, **kwargs})
    return sample_episodes(clustered_features(), range(12), config, n, seed=2, prefix="h")


def test_batched_collection_retraces_the_generic_recorder(tmp_path):
    tasks = _tasks()
    config = RecorderConfig(num_epochs=4, lr=0.05, rho=0.05)
    generic = ZooStore.open(tmp_path / "generic", {"k": 1})
    batched = ZooStore.open(tmp_path / "batched", {"k": 1})
    collect(tasks, generic, config, progress=False)
    assert collect_heads(tasks, batched, config, chunk_size=2, progress=False) == [t.task_id for t in tasks]
    for task in tasks:
        a, b = generic.read(task.task_id), batched.read(task.task_id)
        assert a.epochs == b.epochs == list(range(5))
        for name in ("weight", "bias"):
            torch.testing.assert_close(a.params[name], b.params[name], rtol=1e-5, atol=1e-6)
        assert abs(a.metadata["final_loss"] - b.metadata["final_loss"]) < 1e-5
    assert collect_heads(tasks, batched, config, progress=False) == []  # a rerun records nothing


def test_training_learns_and_sam_changes_the_path():
    batch = EpisodeBatch.stack([t for t in _tasks(8) if t.support_x.shape[0] == 12][:3])
    plain = train_heads(batch, 30, 0.05)
    sam = train_heads(batch, 30, 0.05, rho=0.5)
    assert plain.accuracy.shape == (31, 3) and plain.losses.shape == (30, 3)
    assert (plain.accuracy[0] == 0.25).all()  # zero head: all 4 classes tie on every query, 1/4 each
    assert plain.accuracy[-1].mean() > 0.7 and plain.losses[-1].mean() < plain.losses[0].mean()
    assert not torch.allclose(plain.params["weight"], sam.params["weight"])
    curve = plain.accuracy.mean(-1).tolist()
    assert first_reaching(curve, 0.5) is not None and first_reaching(curve, 1.01) is None
