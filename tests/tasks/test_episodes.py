"""Episodes as engine tasks: shapes, determinism, disjoint support/query, prototypes, batched evaluation."""

import pytest
import torch

from peft_mcdi.tasks.episodes import EpisodeBatch, EpisodeConfig, HeadTask, prototypes, sample_episodes
from tests.tasks.synthetic import clustered_features


@pytest.fixture(scope="module")
def features():
    return clustered_features()


def test_episodes_are_deterministic_and_well_formed(features):
    config = EpisodeConfig(num_ways=5, num_shots=[1, 5], num_queries=4, pool_shots=8)
    a = sample_episodes(features, range(12), config, 6, seed=3, prefix="t")
    b = sample_episodes(features, range(12), config, 6, seed=3, prefix="t")
    c = sample_episodes(features, range(12), config, 6, seed=4, prefix="t")
    assert [t.task_id for t in a] == [f"t-{i:05d}" for i in range(6)]
    assert all(torch.equal(x.pool_x, y.pool_x) and x.classes == y.classes for x, y in zip(a, b))
    assert any(x.classes != y.classes for x, y in zip(a, c))
    for task in a:
        shots = task.support_x.shape[0] // 5
        assert shots in (1, 5) and task.query_x.shape == (20, 16) and task.pool_x.shape == (40, 16)
        assert task.condition.shape == (5, 16) and len(set(task.classes)) == 5
        # support images are the first rows of the pool; queries are other images
        assert torch.equal(task.pool_x[: task.support_x.shape[0]], task.support_x)
        assert torch.cdist(task.query_x, task.pool_x).min() > 1e-6


def test_domain_and_class_restriction():
    features = clustered_features(num_classes=6, per_class=20)
    features.domains = torch.arange(len(features.labels)) % 2
    tasks = sample_episodes(features, [0, 1, 2, 3, 4], EpisodeConfig(num_ways=5, num_shots=[1], num_queries=3), 3,
                            seed=0, prefix="d", domain=1)  # fmt: skip
    members = {tuple(f.tolist()) for f in features.features[features.domains == 1]}
    for task in tasks:
        assert set(task.classes) <= {0, 1, 2, 3, 4}
        assert all(tuple(f.tolist()) in members for f in torch.cat([task.support_x, task.query_x]))


def test_too_few_images_is_a_clear_error(features):
    with pytest.raises(ValueError, match="class .* has 30 images, an episode needs"):
        sample_episodes(features, range(12), EpisodeConfig(num_shots=[20], num_queries=15), 1, seed=0, prefix="x")
    with pytest.raises(ValueError, match="pool_shots"):
        EpisodeConfig(num_shots=[5], pool_shots=3)


def test_prototypes_and_batched_accuracy(features):
    tasks = sample_episodes(features, range(12), EpisodeConfig(num_shots=[5], num_queries=6), 4, seed=1, prefix="b")
    batch = EpisodeBatch.stack(tasks)
    protos = batch.prototypes
    assert protos.shape == (4, 5, 16)
    expected = torch.stack([batch.support_x[0][batch.support_y[0] == c].mean(0) for c in range(5)])
    torch.testing.assert_close(protos[0], expected)
    heads = {"weight": 2 * protos, "bias": -protos.pow(2).sum(-1)}
    per_task = torch.stack([t.evaluate({k: v[i] for k, v in heads.items()}) for i, t in enumerate(tasks)])
    torch.testing.assert_close(batch.accuracy(heads), per_task)
    assert batch.accuracy(heads).mean() > 0.8  # well-separated clusters: nearest centroid is accurate
    torch.testing.assert_close(prototypes(batch.support_x, batch.support_y, 5), protos)


def test_grouped_loss_is_each_episodes_own_loss_batched_or_not():
    features = clustered_features()
    config = EpisodeConfig(num_ways=4, num_shots=[2], num_queries=3, pool_shots=5)
    tasks = sample_episodes(features, range(12), config, 3, seed=5, prefix="g")
    g = torch.Generator().manual_seed(0)
    params = {
        "weight": torch.randn(3, 4, features.features.shape[1], generator=g),
        "bias": torch.randn(3, 4, generator=g),
    }
    batches = [next(iter(t.train_batches(0, g))) for t in tasks]
    own = torch.stack(
        [t.loss({k: v[i] for k, v in params.items()}, b) for i, (t, b) in enumerate(zip(tasks, batches))]
    )
    torch.testing.assert_close(HeadTask.grouped_loss(tasks, params, batches), own)
    uneven = [batches[0], (batches[1][0][:-1], batches[1][1][:-1]), batches[2]]  # another shape: one pass each
    own[1] = tasks[1].loss({k: v[1] for k, v in params.items()}, uneven[1])
    torch.testing.assert_close(HeadTask.grouped_loss(tasks, params, uneven), own)
