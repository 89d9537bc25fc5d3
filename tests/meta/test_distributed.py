"""Two processes (gloo on CPU) reproduce one process: meta-batch slots are spread, deltas all-reduced."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.launch import accelerate_launch


SCRIPT = Path(__file__).with_name("distributed_reptile.py")
ROOT = Path(__file__).resolve().parents[2]


def run(cmd: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# single-level under two processes also runs end to end in the default suite (tests/examples/test_train.py)
@pytest.mark.parametrize("algorithm", ["reptile", pytest.param("single_level", marks=pytest.mark.slow)])
def test_two_processes_equal_one(tmp_path, algorithm):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    run([sys.executable, str(SCRIPT), str(one), algorithm])
    run([*accelerate_launch(2), str(SCRIPT), str(two), algorithm])
    a, b = load_file(one), load_file(two)
    assert a.keys() == b.keys()
    initial_changed = False
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0, msg=name)
        initial_changed |= bool(a[name].abs().sum() > 0)
    assert initial_changed
