"""The harness both benchmarks share: statistics over seeds, steps to match, and the results record."""

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from peft_mcdi.evaluation.harness import (
    MATCH_TOLERANCE,
    first_reaching,
    mean_std,
    percent,
    recorded_runs,
    refined,
    run_jobs,
    run_script,
    seeds_to_run,
    write_record,
)
from tests.meta.test_functional import Regression


def test_mean_std_over_seeds():
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0}
    stat = mean_std([0.6, 0.8])
    assert stat["mean"] == pytest.approx(0.7) and stat["std"] == pytest.approx(0.1414213, rel=1e-6)
    assert percent(stat) == "70.0 ± 14.1"


def test_refined_takes_exactly_its_steps_across_epochs_from_where_it_starts():
    """The few-shot rows: K Adam steps on the task's own batches (one batch per epoch here, so K epochs), from any
    start; the start is not modified; the same start and seed give the same result."""
    task = Regression("t", 0)
    start = {"w": torch.full((5,), 0.5)}
    one, five = refined(task, start, 1, 0.1), refined(task, start, 5, 0.1)
    assert torch.equal(start["w"], torch.full((5,), 0.5))
    assert task.evaluate(five) < task.evaluate(one) < task.evaluate(start)
    torch.testing.assert_close(five["w"], refined(task, start, 5, 0.1)["w"], rtol=0, atol=0)
    assert not torch.equal(five["w"], refined(task, task.init_params(), 5, 0.1)["w"])


def test_first_reaching_is_the_first_point_at_the_target():
    assert first_reaching([0.5, 0.7, 0.9], 0.7) == 1
    assert first_reaching([0.5, 0.7, 0.9], 0.95) is None
    assert first_reaching([], 0.1) is None


def test_a_target_computed_in_another_summation_order_still_ties():
    # 0.1 + 0.2 != 0.3 in floating point: the same accuracy summed another way must still match itself
    target = sum([0.1, 0.2])
    assert target > 0.3 and first_reaching([0.0, 0.3], target) == 1
    assert first_reaching([0.0, 0.3 - 10 * MATCH_TOLERANCE], 0.3) is None


def test_the_record_keeps_command_versions_summary_and_runs(tmp_path):
    command = "python benchmarks/x.py --seeds 0"
    path = write_record(tmp_path / "out" / "bench", command, {"a": 1}, [{"seed": 0}], "# t\n")
    record = json.loads(path.read_text())
    assert record["command"] == command and record["runs"] == [{"seed": 0}]
    assert {"torch", "machine", "threads", "summary"} <= set(record)
    assert (tmp_path / "out" / "bench.md").read_text() == "# t\n"


def test_recorded_runs_are_the_runs_finished_under_the_same_configuration(tmp_path):
    stem = tmp_path / "llm_x"
    assert recorded_runs(stem, "k1") == []
    runs = [
        {"seed": 0, "config_key": "k1"},
        {"seed": 1, "config_key": "k2"},
        {"seed": 2},
        {"seed": 3, "config_key": "k1"},
    ]
    write_record(stem, "cmd", {}, runs, "table")
    assert recorded_runs(stem, "k1") == [runs[0], runs[3]]
    assert recorded_runs(stem, "k2") == [runs[1]]
    stem.with_suffix(".json").write_text('{"runs": [')
    with pytest.raises(ValueError, match="llm_x.json is not a results record"):
        recorded_runs(stem, "k1")


def _job(folder: Path, name: str) -> None:
    if name == "bad":
        raise ValueError("job 'bad' failed")
    (folder / name).write_text(json.dumps({"pid": os.getpid(), "threads": torch.get_num_threads()}))


def test_run_jobs_runs_every_job_in_one_thread_processes_and_raises_a_failure(tmp_path):
    run_jobs([partial(_job, tmp_path, str(i)) for i in range(5)], workers=2)
    done = [json.loads((tmp_path / str(i)).read_text()) for i in range(5)]
    assert all(d["threads"] == 1 and d["pid"] != os.getpid() for d in done)
    with pytest.raises(ValueError, match="job 'bad' failed"):
        run_jobs([partial(_job, tmp_path, "bad")], workers=2)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_jobs([], workers=0)
    run_jobs([partial(_job, tmp_path, "spawned")], workers=1, start_method="spawn")  # the accelerator's way
    assert json.loads((tmp_path / "spawned").read_text())["threads"] == 1


def test_quick_runs_one_seed_unless_asked():
    assert seeds_to_run(None, quick=True) == [0] and seeds_to_run(None, quick=False) == [0, 1, 2]
    assert seeds_to_run([3, 4], quick=True) == [3, 4]


def test_an_interrupted_script_says_one_line_and_exits_130(capsys):
    def main():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        run_script(main, "benchmarks/x.py")
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("benchmarks/x.py: interrupted;"), err


def test_ctrl_c_during_the_vision_benchmark_is_one_line(tmp_path):
    """The real script, interrupted once it has said what it runs (its imports are not its code to guard)."""
    env = {**os.environ, "MCDI_CACHE": str(tmp_path / "cache")}
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "vision.py"
    args = [sys.executable, str(script), "--suite", "dg", "--quick", "--out-dir", str(tmp_path / "out")]
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()
    assert first.startswith("vision benchmark: suites ['dg'], seeds [0]"), (first, process.communicate())
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    # Libraries may log at import (bitsandbytes looks for a Hub kernel on CPUs with AVX512-BF16); ours is the last
    # line and there is no traceback.
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "benchmarks/vision.py: interrupted; finished stages are cached, the same command resumes"
    ), err
