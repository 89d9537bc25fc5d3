"""The example scripts run end to end on tiny settings (the README's main job uses the same script)."""

import importlib.util
import json
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_runs_and_resumes(tmp_path, capsys, monkeypatch):
    quickstart = load_example("quickstart")
    argv = ["--num-train-tasks", "8", "--num-test-tasks", "3", "--outer-steps", "4", "--hypernetwork-steps", "5"]
    argv += ["--no-progress", "--output-dir", str(tmp_path)]
    results = quickstart.main(argv)
    out = capsys.readouterr().out
    assert "held-out test loss on 3 unseen tasks" in out and "generation latency" in out
    saved = json.loads((tmp_path / "results.json").read_text())
    methods = {"generated", "nearest_task", "mean_of_zoo", "init", "per_task_reference", "hypernetwork"}
    assert set(saved["heldout_metric"]) == methods
    assert saved["heldout_metric"] == results["heldout_metric"]
    assert (tmp_path / "generator" / "model.safetensors").is_file()
    # a rerun finds the cached zoo and the finished training run and does no work twice
    import peft_mcdi.zoo.recorder as recorder

    def no_recollection(*args, **kwargs):
        raise AssertionError("a finished task was collected again")

    monkeypatch.setattr(recorder, "train_task", no_recollection)
    again = quickstart.main(argv)
    assert again["history"] == results["history"]


def test_main_job_adapts_held_out_categories_with_the_shipped_generator(tmp_path, capsys):
    rows = load_example("main_job").main(["--tasks", "2", "--out", str(tmp_path / "main_job.md")])
    table = (tmp_path / "main_job.md").read_text()
    assert capsys.readouterr().out.strip() == table.strip()
    assert len(rows) == 2 and table.count("\n| ") == 2 + 2  # header, two categories, mean
    assert "| **mean** |" in table and "multi-task LoRA" in table  # taken from the committed record
    assert all(0 <= row["generated"] <= 1 and row["adapt ms"] > 0 for row in rows)
