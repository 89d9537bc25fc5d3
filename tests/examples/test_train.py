"""examples/train.py as users run it: two processes equal one, and a SIGKILLed run continues where it stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from tests.launch import accelerate_launch


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train.py"


def env(tmp_path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MCDI_CACHE": str(tmp_path / "cache"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def write_config(path: Path, **sections) -> Path:
    config = {
        "taskset": "logistic",
        "taskset_kwargs": {"num_train_tasks": 12, "num_test_tasks": 4, "num_train_examples": 64},
        "recorder": {"num_epochs": 3, "lr": 0.1},
        "denoiser": {"type": "mlp", "condition_dim": 4, "hidden_dim": 32, "num_layers": 2},
        "meta": {"num_outer_steps": 6, "meta_batch_size": 4, "samples_per_task": 4, "outer_lr": 1e-2, "log_every": 2},
        "hypernetwork_steps": 0,
        "log_with": "none",
        "progress": False,
        "num_threads": 1,  # same thread count in every layout: identical kernels
    }
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(config.get(key), dict) else value
    path.write_text(yaml.safe_dump(config))
    return path


def launch(num_processes: int) -> list[str]:
    if num_processes == 1:
        return [sys.executable, str(SCRIPT)]
    return [*accelerate_launch(num_processes), str(SCRIPT)]


def run(cmd: list[str], tmp_path) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_two_processes_equal_one(tmp_path):
    # single-level here, Reptile in tests/meta/test_distributed.py: each outer update's all-reduce in the default suite
    config = write_config(tmp_path / "tiny.yaml", meta={"algorithm": "single_level"})
    outputs = {}
    for n in (1, 2):
        out, zoo = tmp_path / f"out{n}", tmp_path / f"zoo{n}"
        stdout = run([*launch(n), "--config", str(config), f"output_dir={out}", f"zoo_dir={zoo}"], tmp_path)
        assert f"on {n} process(es)" in stdout
        outputs[n] = (out, zoo)
    (one, zoo1), (two, zoo2) = outputs[1], outputs[2]

    # collection was sharded: every task collected exactly once, by one of the two processes, with the same result
    by_process = json.loads((two / "results.json").read_text())["zoo_collected_by_process"]
    ids = sorted(i for ids in by_process for i in ids)
    assert len(by_process) == 2 and all(by_process)
    assert ids == sorted(set(ids)) and len(ids) == 16
    manifests = [[json.loads(line) for line in (z / "manifest.jsonl").read_text().splitlines()] for z in (zoo1, zoo2)]
    assert [r["sha256"] for r in manifests[0]] == [r["sha256"] for r in manifests[1]]

    # meta-training: 6 outer steps spread over two processes land on the single-process weights
    a, b = load_file(one / "generator" / "model.safetensors"), load_file(two / "generator" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0, msg=name)
    for out in (one, two):  # both ran all 6 outer steps
        assert json.loads((out / "train" / "checkpoint-6" / "trainer_state.json").read_text())["step"] == 6
    # only the main process wrote the run's files
    assert json.loads((two / "results.json").read_text())["num_processes"] == 2


def _task_files(zoo: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (zoo / "tasks").glob("*.safetensors")}


def _wait_and_kill(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, "no progress on disk"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_kill_and_resume_continues_where_it_stopped(tmp_path):
    num_tasks, steps = 80, 150
    config = write_config(
        tmp_path / "resume.yaml",
        taskset_kwargs={"num_train_tasks": num_tasks - 4, "num_test_tasks": 4, "num_train_examples": 256},
        recorder={"num_epochs": 10},
        meta={"num_outer_steps": steps, "checkpoint_every": 10, "log_every": 10},
    )
    out, zoo = tmp_path / "out", tmp_path / "zoo"
    cmd = [*launch(1), "--config", str(config), f"output_dir={out}", f"zoo_dir={zoo}"]

    def start() -> subprocess.Popen:
        log = open(tmp_path / "run.log", "a")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen(cmd, cwd=ROOT, env=env(tmp_path), stdout=log, stderr=subprocess.STDOUT)

    # 1. killed during collection, as soon as a few tasks are on disk
    _wait_and_kill(start(), lambda: len(_task_files(zoo)) >= 3)
    first = _task_files(zoo)
    assert 3 <= len(first) < num_tasks

    # 2. rerun: collection continues (finished tasks untouched), killed after meta-training's first checkpoint
    latest = out / "train" / "latest"
    _wait_and_kill(start(), latest.is_file)
    second = _task_files(zoo)
    assert len(second) == num_tasks
    assert {k: second[k] for k in first} == first  # not recollected: same files, same inodes, same mtimes
    killed_at = json.loads((out / "train" / latest.read_text().strip() / "trainer_state.json").read_text())["step"]
    assert 0 < killed_at < steps

    # 3. rerun to the end: nothing recollected, meta-training resumes from the checkpoint
    stdout = run(cmd, tmp_path)
    assert "0 collected now" in stdout and f"{num_tasks} already there" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["resumed_from_step"] >= killed_at and results["history"][-1]["step"] == steps
    assert _task_files(zoo) == second

    # the interrupted run ends where an uninterrupted one does (same zoo, fresh output folder)
    reference = tmp_path / "reference"
    run([*cmd, f"output_dir={reference}"], tmp_path)
    a = load_file(out / "generator" / "model.safetensors")
    b = load_file(reference / "generator" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    reference_results = json.loads((reference / "results.json").read_text())
    assert results["heldout_metric"] == reference_results["heldout_metric"]


def test_example_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    from peft_mcdi.train import load_config

    logistic, args = load_config(ROOT / "examples" / "configs" / "logistic.yaml")
    assert logistic.taskset == "logistic" and logistic.meta.checkpoint_every > 0 and args.log_with == "auto"
    wordnet, _ = load_config(ROOT / "examples" / "configs" / "wordnet_minilm.yaml")
    assert wordnet.taskset == "wordnet-minilm"
    assert (wordnet.denoiser.type, wordnet.denoiser.condition_dim, wordnet.denoiser.hidden_dim) == ("tokens", 384, 128)
    assert (wordnet.denoiser.num_layers, wordnet.denoiser.num_heads) == (2, 4)
    assert (wordnet.recorder.num_epochs, wordnet.recorder.lr, wordnet.recorder.rho) == (10, 5e-3, 0.05)
    # the example trains the WordNet benchmark's product generator (a smaller zoo): same recipe, section by section
    from peft_mcdi.evaluation.llm import LLMBenchConfig

    benchmark = LLMBenchConfig.for_base("minilm").pipeline(0, "mcdi_functional")
    for section in ("recorder", "scheduler", "denoiser", "meta", "chain", "codec_normalization", "anchor"):
        assert getattr(wordnet, section) == getattr(benchmark, section), section
    # the accelerate configs for GPU users (documented, not run here) are valid accelerate config files
    for name, kind in (("multi_gpu", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed", "DEEPSPEED")):
        config = load_config_from_file(str(ROOT / "examples" / "configs" / f"accelerate_{name}.yaml"))
        assert config.distributed_type.value == kind


def test_a_config_error_under_two_processes_is_said_once_by_the_main_process(tmp_path):
    cmd = [*launch(2), "--config", str(write_config(tmp_path / "c.yaml")), "nonsense_key=1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    ours = [line for line in proc.stderr.splitlines() if "nonsense_key" in line]
    assert len(ours) == 1 and ours[0].startswith("train.py: error: unknown config key 'nonsense_key'"), proc.stderr
    assert "train.py train:" not in proc.stderr and "Traceback" not in proc.stderr.split("nonsense_key")[0]
