"""Reptile and single-level outer updates against hand computations; checkpoint/resume; bad input."""

import copy
import json
import warnings
from dataclasses import replace

import pytest
import torch

from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.model import GeneratorConfig, McDiGenerator
from peft_mcdi.generator.schedulers import SchedulerConfig
from peft_mcdi.meta.data import ZooTensors
from peft_mcdi.meta.losses import LossNoise
from peft_mcdi.meta.trainer import MetaTrainConfig, MetaTrainer


def toy(k=2, n_tasks=6, seed=0):
    torch.manual_seed(seed)
    gen = McDiGenerator(
        GeneratorConfig(
            codec={"shapes": {"w": [5]}},
            condition_dropout=0.2,
            denoiser=DenoiserConfig(condition_dim=3, hidden_dim=16, num_layers=2),
        ),
        SchedulerConfig(num_train_timesteps=10, num_segments=k),
    )
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # leave the zero-init point so every parameter gets a gradient
    data = ZooTensors([f"t{i}" for i in range(n_tasks)], torch.randn(n_tasks, k, 5), torch.randn(n_tasks, 3))
    return gen, data


def slot_loss(model, targets, condition, noise):
    return model(targets, condition, LossNoise(*noise))


def test_reptile_update_equals_hand_computation():
    gen, data = toy()
    cfg = MetaTrainConfig(
        meta_batch_size=3, inner_steps=2, inner_lr=0.05, outer_optimizer="sgd", outer_lr=0.3, samples_per_task=4
    )
    trainer = MetaTrainer(gen, data, cfg)
    phi = {n: p.detach().clone() for n, p in gen.named_parameters()}
    targets, conditions, noise, _ = trainer._draw_slots(0)

    adapted = []
    for j in range(3):  # each slot: copy φ and take inner SGD steps on its task, written out plainly
        model = copy.deepcopy(gen)
        for s in range(2):
            loss = slot_loss(model, targets[j], conditions[j], [x[j] for x in noise[s]])
            grads = torch.autograd.grad(loss, list(model.parameters()))
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads):
                    p -= 0.05 * g
        adapted.append({n: p.detach() for n, p in model.named_parameters()})

    trainer.outer_step()
    for name, p in gen.named_parameters():
        mean_delta = torch.stack([a[name] - phi[name] for a in adapted]).mean(0)
        torch.testing.assert_close(p.detach(), phi[name] + 0.3 * mean_delta, atol=1e-6, rtol=1e-5)  # φ + ζ·mean(φᵢ−φ)
    assert any(not torch.allclose(p, phi[n]) for n, p in gen.named_parameters())


def test_single_level_update_is_the_mean_task_gradient():
    gen, data = toy()
    cfg = MetaTrainConfig(
        algorithm="single_level", meta_batch_size=4, outer_optimizer="sgd", outer_lr=0.1, samples_per_task=4
    )
    trainer = MetaTrainer(gen, data, cfg)
    targets, conditions, noise, _ = trainer._draw_slots(0)
    model = copy.deepcopy(gen)
    loss = sum(slot_loss(model, targets[j], conditions[j], [x[j] for x in noise[0]]) for j in range(4)) / 4
    grads = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss, list(model.parameters()))))
    phi = {n: p.detach().clone() for n, p in gen.named_parameters()}
    reported = trainer.outer_step()
    assert reported == pytest.approx(loss.item(), rel=1e-5)
    for name, p in gen.named_parameters():
        torch.testing.assert_close(p.detach(), phi[name] - 0.1 * grads[name], atol=1e-6, rtol=1e-5)


def test_draws_do_not_depend_on_the_process_layout():
    gen, data = toy()
    cfg = MetaTrainConfig(meta_batch_size=4, samples_per_task=3)
    single = MetaTrainer(gen, data, cfg)
    t1, c1, n1, _ = single._draw_slots(5)
    for rank in (0, 1):  # a 2-process layout takes slots rank, rank + 2
        single.rank, single.world_size = rank, 2
        t2, c2, n2, _ = single._draw_slots(5)
        torch.testing.assert_close(t2, t1[rank::2])
        torch.testing.assert_close(n2[0][2], n1[0][2][rank::2])


@pytest.mark.parametrize("algorithm", ["reptile", "single_level"])
def test_resume_continues_exactly(tmp_path, algorithm):
    gen, data = toy()
    cfg = {"algorithm": algorithm, "meta_batch_size": 2, "samples_per_task": 4, "outer_lr": 1e-2, "log_every": 1}
    straight = copy.deepcopy(gen)
    MetaTrainer(straight, data, MetaTrainConfig(num_outer_steps=6, **cfg)).train(progress=False)

    interrupted = copy.deepcopy(gen)
    first = MetaTrainer(interrupted, data, MetaTrainConfig(num_outer_steps=3, **cfg), output_dir=tmp_path)
    first.train(False)
    resumed_gen = copy.deepcopy(gen)  # a fresh process: starts from the initial weights, finds the checkpoint
    trainer = MetaTrainer(resumed_gen, data, MetaTrainConfig(num_outer_steps=6, **cfg), output_dir=tmp_path)
    history = trainer.train(progress=False)
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert trainer.train_seconds > first.train_seconds > 0  # the training time of both sessions
    finished = MetaTrainer(copy.deepcopy(gen), data, MetaTrainConfig(num_outer_steps=6, **cfg), output_dir=tmp_path)
    finished.train(False)  # nothing left to train: a re-evaluation still knows what training cost
    assert finished.train_seconds == trainer.train_seconds
    for (name, p), q in zip(straight.named_parameters(), resumed_gen.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["checkpoint-6", "latest"]


def test_a_checkpoint_of_an_older_format_resumes(tmp_path):
    """A run stopped under format version 1 continues after the upgrade: same run, older names on disk."""
    gen, data = toy()
    cfg = {"meta_batch_size": 2, "samples_per_task": 4, "outer_lr": 1e-2}
    straight = copy.deepcopy(gen)
    MetaTrainer(straight, data, MetaTrainConfig(num_outer_steps=4, **cfg)).train(progress=False)
    old = copy.deepcopy(gen)
    old.config = replace(old.config, format_version=1)
    MetaTrainer(old, data, MetaTrainConfig(num_outer_steps=2, **cfg), output_dir=tmp_path).train(False)
    assert json.loads((tmp_path / "checkpoint-2" / "config.json").read_text())["format_version"] == 1
    resumed = copy.deepcopy(gen)
    trainer = MetaTrainer(resumed, data, MetaTrainConfig(num_outer_steps=4, **cfg), output_dir=tmp_path)
    assert trainer.maybe_resume() and trainer.step == 2
    trainer.train(False)
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)


def test_resume_refuses_a_different_run(tmp_path):
    gen, data = toy()
    MetaTrainer(gen, data, MetaTrainConfig(num_outer_steps=1, meta_batch_size=2), output_dir=tmp_path).train(False)
    with pytest.raises(ValueError, match="different training run"):
        MetaTrainer(gen, data, MetaTrainConfig(num_outer_steps=2, meta_batch_size=3), output_dir=tmp_path).train(False)
    gen.scheduler = type(gen.scheduler)(SchedulerConfig(num_train_timesteps=10, num_segments=2, beta_end=0.3))
    with pytest.raises(ValueError, match="different training run"):  # same trainer config, another noise schedule
        MetaTrainer(gen, data, MetaTrainConfig(num_outer_steps=2, meta_batch_size=2), output_dir=tmp_path).train(False)


def test_zoo_with_wrong_number_of_targets_is_named():
    gen, data = toy(k=2)
    data.targets = data.targets[:, :1]
    with pytest.raises(ValueError, match="num_segments=2"):
        MetaTrainer(gen, data, MetaTrainConfig())


def test_bad_config_names_the_argument():
    with pytest.raises(ValueError, match="algorithm"):
        MetaTrainConfig(algorithm="maml")
    with pytest.raises(ValueError, match="meta_batch_size"):
        MetaTrainConfig(meta_batch_size=0)


def test_the_vmapped_outer_step_has_no_per_task_fallback():
    """Every op in the token denoiser has a vmap batching rule; one without runs a Python loop over the meta-batch
    (and torch warns on every training run)."""
    gen = McDiGenerator(
        GeneratorConfig(
            codec={"shapes": {"a": [4, 6], "b": [6, 4]}},
            denoiser=DenoiserConfig(type="tokens", condition_dim=3, hidden_dim=16, num_layers=1),
        ),
        SchedulerConfig(num_train_timesteps=10, num_segments=2),
    )
    data = ZooTensors([f"t{i}" for i in range(4)], torch.randn(4, 2, 48), torch.randn(4, 3))
    trainer = MetaTrainer(gen, data, MetaTrainConfig(meta_batch_size=2, inner_steps=1, samples_per_task=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.outer_step()
    assert not [w for w in caught if "batching rule" in str(w.message)]
