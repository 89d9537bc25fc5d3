"""Trajectory collection for head episodes, vectorised: the generic recorder trains one task at a time, which for a
linear head on cached features is all Python overhead (≈ 0.1–0.3 s per task); here a chunk of episodes trains as one
batch. Each episode keeps its own noise stream (:func:`~peft_mcdi.zoo.recorder.batch_order_generator`), SAM's ascent
is normalised per episode and Adam is element-wise, so every trajectory equals the generic recorder's for that task
(tested), and the zoo files are interchangeable: resume, manifest and corruption checks are the store's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from tqdm.auto import tqdm

from peft_mcdi.vision.episodes import EpisodeBatch, HeadTask
from peft_mcdi.vision.head_baselines import train_heads
from peft_mcdi.zoo.recorder import RecorderConfig, batch_order_generator
from peft_mcdi.zoo.store import ZooStore


def collect_heads(
    tasks: Sequence[HeadTask], store: ZooStore, config: RecorderConfig, chunk_size: int = 256, progress: bool = True
) -> list[str]:
    """Record every task not yet in ``store`` (same files as :func:`~peft_mcdi.zoo.recorder.collect`); returns the
    ids recorded by this call."""
    todo = [t for t in tasks if not store.has(t.task_id)]
    groups: dict[tuple, list[HeadTask]] = defaultdict(list)  # episodes that stack: same shapes and recipe
    for t in todo:
        groups[(t.num_ways, tuple(t.pool_x.shape), tuple(t.query_x.shape), t.config.steps_per_epoch,
                t.config.feature_noise)].append(t)  # fmt: skip
    kept_epochs = set(config.kept_epochs())
    done = []
    bar = tqdm(total=len(todo), desc="collect heads", unit="task", disable=not progress or not todo)
    for group in groups.values():
        for start in range(0, len(group), chunk_size):
            chunk = group[start : start + chunk_size]
            batch = EpisodeBatch.stack(chunk, pool=True)
            spe = batch.steps_per_epoch
            run = train_heads(
                batch, config.num_epochs * spe, config.lr, rho=config.rho, feature_noise=batch.feature_noise,
                generators=[batch_order_generator(t, config) for t in chunk], weight_decay=config.weight_decay,
                keep_every=spe,
            )  # fmt: skip
            for j, task in enumerate(chunk):
                checkpoints = {0: task.init_params()}
                for step, params in run.kept.items():
                    if step // spe in kept_epochs:
                        checkpoints[step // spe] = {k: v[j] for k, v in params.items()}
                final_loss = float(run.losses[-spe:, j].mean())
                if final_loss != final_loss:
                    raise FloatingPointError(f"task {task.task_id!r} diverged (loss NaN); lower RecorderConfig.lr.")
                store.write(task.task_id, checkpoints, task.condition,
                            {"final_loss": final_loss, "num_epochs": config.num_epochs})  # fmt: skip
                done.append(task.task_id)
            bar.update(len(chunk))
    bar.close()
    return done
