"""Pictures of a run (peft_mcdi.evaluation.plots, ``mcdi bench --run-dir``): the data behind each picture is right,
the PNGs are small real images, and results.md shows them."""

import json
import re

import pytest
import torch
import yaml

from peft_mcdi.cli import main
from peft_mcdi.evaluation import plots
from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.model import GeneratorConfig, McDiGenerator
from peft_mcdi.generator.schedulers import SchedulerConfig
from peft_mcdi.tasks.base import get_tasksets
from peft_mcdi.zoo.recorder import RecorderConfig, train_task
from tests.tiny_config import TINY_RUN


PNG = b"\x89PNG\r\n\x1a\n"
TINY = {**TINY_RUN, "log_with": "none"}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and other work on the machine cannot oversubscribe it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_small_png(path, max_kb=150):
    data = path.read_bytes()
    assert data[:8] == PNG, path
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 300 <= width <= 1200 and 200 <= height <= 600, (width, height)
    assert len(data) < max_kb * 1024, len(data)


def test_sampling_returns_the_whole_chain():
    generator = McDiGenerator(
        GeneratorConfig(
            codec={"shapes": {"weight": [16], "bias": []}}, denoiser=DenoiserConfig(condition_dim=4, hidden_dim=16)
        ),
        SchedulerConfig(num_train_timesteps=10, num_segments=2),
    )
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    condition = torch.randn(3, 4)
    final = generator.generate_vectors(condition, seed=1)
    x0, chain = generator.generate_vectors(condition, seed=1, return_chain=True)
    assert len(chain) == 11 and all(x.shape == (3, 17) for x in chain)
    torch.testing.assert_close(chain[-1], final, rtol=0, atol=0)  # the hook does not change the samples
    torch.testing.assert_close(x0, final, rtol=0, atol=0)
    torch.testing.assert_close(chain[0][0], torch.randn(17, generator=torch.Generator().manual_seed(1)))  # x_T
    stacked = plots.sampling_chains(generator, condition, seed=1, sampler="ddim", num_inference_steps=4)
    assert stacked.shape == (5, 3, 17)


def test_finetune_curve_from_theta0_retraces_the_zoo_trajectory():
    tasks = get_tasksets("logistic", num_train_tasks=2, num_test_tasks=2, num_train_examples=128).test
    recorder = RecorderConfig(num_epochs=3, lr=0.1)
    task = tasks[0]
    checkpoints, _ = train_task(task, recorder)
    curve = plots.finetune_curve(task, task.init_params(), recorder, max_points=5)
    assert curve["steps_per_epoch"] == 2 and curve["steps"] == [0, 2, 4, 6]  # 6 steps, evaluated every 2
    assert curve["metric"][0] == pytest.approx(float(task.evaluate(task.init_params())))
    # same optimiser, same batch order as the recorder: the last point is the zoo's per-task reference
    assert curve["metric"][-1] == pytest.approx(float(task.evaluate(checkpoints[3])), abs=1e-6)
    assert curve["metric"][-1] < curve["metric"][0] and curve["train_seconds"] > 0

    data = plots.finetune_curves_data(list(tasks), [checkpoints[3], tasks[1].init_params()], recorder)
    assert data["from_generated"][0] == pytest.approx(
        (float(task.evaluate(checkpoints[3])) + float(tasks[1].evaluate(tasks[1].init_params()))) / 2
    )
    assert len(data["from_init"]) == len(data["steps"]) == 7


def test_pictures_from_synthetic_data(tmp_path):
    results = {
        "metric": "accuracy",
        "higher_is_better": True,
        "heldout_metric": {"generated": 0.7, "hypernetwork": 0.6, "nearest_task": 0.65, "init": 0.5},
        "generation_ms_median": 20.0,
        "hypernetwork_ms_median": 2.0,
        "num_test_tasks": 8,
    }
    data = plots.metric_vs_time_data(results, {"per_task_reference": 900.0})
    assert data["points"] == {"generated": (20.0, 0.7), "hypernetwork": (2.0, 0.6)}  # no reference metric: no point
    assert data["levels"] == {"nearest_task": 0.65, "init": 0.5}  # no generation time: reference lines
    assert_small_png(plots.plot_metric_vs_time(data, tmp_path / "a.png"))

    # PCA: the basis is the checkpoints' own; a chain that ends on a checkpoint projects onto that checkpoint
    g = torch.Generator().manual_seed(0)
    heldout, train = torch.randn(2, 4, 30, generator=g), torch.randn(5, 4, 30, generator=g)
    chains = torch.randn(11, 2, 30, generator=g)
    chains[-1] = heldout[:, -1]
    pca = plots.sampling_pca_data(chains, heldout, train, list(range(10, -1, -1)), [5, 0], [2])
    assert len(pca["chains"]) == 2 and len(pca["chains"][0]) == 11 and len(pca["train"]) == 5
    assert pca["chains"][1][-1] == pytest.approx(pca["heldout"][1][-1], abs=1e-5)
    assert 0 < sum(pca["explained_variance"]) <= 1
    points = torch.cat([heldout.flatten(0, 1), train.flatten(0, 1)])
    _, s, _ = torch.linalg.svd(points - points.mean(0))
    assert pca["explained_variance"][0] == pytest.approx(float(s[0] ** 2 / (s**2).sum()), rel=1e-4)
    assert_small_png(plots.plot_sampling_pca(pca, tmp_path / "c.png"))


def test_bench_run_dir_writes_pictures_and_results_md(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), f"output_dir={run}", f"zoo_dir={tmp_path / 'zoo'}"]) == 0
    argv = ["bench", "--run-dir", str(run), "--batch-sizes", "1", "2", "--repeats", "2", "--curve-tasks", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    names = ["metric_vs_time.png", "finetune_curves.png", "sampling_pca.png"]
    for name in names:
        assert_small_png(run / name)
        assert f"picture: {run / name}" in out
    markdown = (run / "results.md").read_text()
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown) == names  # every picture shown, by a relative link
    assert "| Mc-Di (generated) |" in markdown and "| 2 |" in markdown  # metric table and throughput table

    results = json.loads((run / "results.json").read_text())
    bench = json.loads((run / "bench.json").read_text())
    curves = bench["curves"]
    # the curves start from exactly the weights the run scored, and fine-tuning from θ₀ ends on the reference
    for key, method in (("per_task_from_generated", "generated"), ("per_task_from_init", "init")):
        assert [c[0] for c in curves[key]] == pytest.approx(results["per_task"][method][:2], abs=1e-5)
    ends = [c[-1] for c in curves["per_task_from_init"]]
    assert ends == pytest.approx(results["per_task"]["per_task_reference"][:2], abs=1e-5)
    pca = bench["pca"]
    assert len(pca["chains"]) == 3 and len(pca["chains"][0]) == 21  # 3 held-out tasks, x_T … x_0 of T = 20
    assert pca["boundaries"] == [13, 7, 0] and pca["target_epochs"] == [1, 2, 3]  # M = 3, k = 3
    assert [r["batch_size"] for r in bench["timing"]["rows"]] == [1, 2]

    # without the zoo: one line that says what to do; the pictures that need no zoo still work
    zoo = tmp_path / "zoo"
    zoo.rename(tmp_path / "moved")
    assert main(["bench", "--run-dir", str(run), "--repeats", "1", "--batch-sizes", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--curve-tasks 0 --pca-tasks 0" in err
    argv = ["bench", "--run-dir", str(run), "--repeats", "1", "--batch-sizes", "1", "--curve-tasks", "0"]
    assert main([*argv, "--pca-tasks", "0"]) == 0
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (run / "results.md").read_text()) == ["metric_vs_time.png"]
    assert main(["bench", "--run-dir", str(tmp_path / "nowhere")]) == 1
    assert "--run-dir takes the output_dir of `mcdi train`" in capsys.readouterr().err
