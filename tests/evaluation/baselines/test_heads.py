"""The non-generative head baselines: the prototype rule is nearest centroid, Reptile meta-trains its adapter."""

import torch

from peft_mcdi.evaluation.baselines.heads import ReptileHeadConfig, ReptileHeadInit, prototype_head
from peft_mcdi.tasks.episodes import EpisodeBatch, EpisodeConfig, sample_episodes
from tests.tasks.synthetic import clustered_features


def _tasks(n=5, **kwargs):
    config = EpisodeConfig(**{"num_ways": 4, "num_shots": [1, 3], "num_queries": 5, "pool_shots": 6, **kwargs})
    return sample_episodes(clustered_features(), range(12), config, n, seed=2, prefix="h")


def test_prototype_head_is_nearest_centroid():
    batch = EpisodeBatch.stack([t for t in _tasks(6) if t.support_x.shape[0] == 12][:2])
    logits_best = prototype_head(batch)
    nearest = torch.cdist(batch.query_x, batch.prototypes).argmin(-1)
    accuracy = (nearest == batch.query_y).float().mean(-1)
    torch.testing.assert_close(batch.accuracy(logits_best), accuracy)


def test_reptile_meta_trains_the_feature_adapter():
    tasks = _tasks(12, num_shots=[3])
    reptile = ReptileHeadInit(16, ReptileHeadConfig(outer_steps=5, meta_batch_size=4, inner_steps=3))
    history = reptile.meta_train(
        lambda step: EpisodeBatch.stack(tasks[4 * (step % 3) : 4 * (step % 3) + 4], pool=True)
    )
    assert len(history) == 5 and reptile.phi["gamma"].abs().sum() > 0
    tuned = reptile.fine_tune(EpisodeBatch.stack(tasks[:4]), 10)
    assert tuned.accuracy.shape == (11, 4)
