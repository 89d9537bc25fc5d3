"""What the LLM and vision benchmarks do alike: statistics over seeds, the first fine-tuning step that matches a
generated adapter (SPEC §4 "steps to match"), and the results record (JSON with the command and versions that made
it, beside its Markdown table) written after every seed so that a stopped run keeps what it finished."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import platform
import signal
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from peft_mcdi.tasks.base import Task
from peft_mcdi.utils import atomic_write_text


# Accuracies computed in another summation order (another CPU's kernels, a batched vs. a per-task pass) differ in the
# last bits; a curve that reaches a target within this tolerance has reached it. Real accuracy differences are at
# least one example in a few thousand, far above it.
MATCH_TOLERANCE = 1e-6


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value) of per-seed numbers."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean, sample std and count of the per-episode differences a − b of two methods scored on the same episodes
    (:func:`pooled_interval` combines them over seeds into a paired confidence interval)."""
    difference = (a.double() - b.double()).flatten()
    return {"mean": float(difference.mean()), "std": float(difference.std()), "episodes": difference.numel()}


def pooled_interval(parts: Sequence[Mapping[str, float]], z: float = 1.96) -> dict[str, float]:
    """The paired differences of several seeds (:func:`paired_difference` each) pooled over all their episodes:
    mean and the normal-approximation interval mean ± z·s/√n (z = 1.96: 95 %)."""
    n = sum(p["episodes"] for p in parts)
    mean = sum(p["mean"] * p["episodes"] for p in parts) / n
    squares = sum((p["episodes"] - 1) * p["std"] ** 2 + p["episodes"] * (p["mean"] - mean) ** 2 for p in parts)
    half = z * (squares / (n - 1) / n) ** 0.5
    return {"mean": mean, "low": mean - half, "high": mean + half, "episodes": n}


def percent(stat: Mapping[str, float]) -> str:
    """A ``mean_std`` of fractions as "mean ± std" in percent, one decimal."""
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def first_reaching(curve: Sequence[float], target: float) -> int | None:
    """Index of the first point of ``curve`` that reaches ``target`` (within :data:`MATCH_TOLERANCE`); None when no
    point does within the budget."""
    for index, value in enumerate(curve):
        if value >= target - MATCH_TOLERANCE:
            return index
    return None


def refined(task: Task, params: Mapping[str, torch.Tensor], steps: int, lr: float, seed: int = 0) -> dict:
    """``params`` after ``steps`` Adam steps on ``task``'s own training batches (epochs reshuffled from ``seed``):
    the few-shot rows of SPEC §4 start this from a generated adapter (``*_fewshot``) or from θ₀ (``zero_fewshot``),
    so the two differ only in where they start."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    batches = (batch for epoch in itertools.count() for batch in task.train_batches(epoch, g))
    with torch.enable_grad():
        for batch in itertools.islice(batches, steps):
            optimizer.zero_grad()
            task.loss(params, batch).backward()
            optimizer.step()
    return {k: v.detach() for k, v in params.items()}


def seeds_to_run(seeds: list[int] | None, quick: bool) -> list[int]:
    """The seeds a benchmark runs: those asked for; by default one seed for a ``--quick`` look and three otherwise."""
    if seeds is not None:
        return seeds
    return [0] if quick else [0, 1, 2]


def run_jobs(jobs: Sequence[Callable[[], object]], workers: int, start_method: str = "fork") -> None:
    """Run ``jobs`` (picklable callables, e.g. ``functools.partial`` of module functions) in ``workers`` processes
    of one thread each, handed out in order as processes free up; the first failure is raised here and stops the rest.

    Why: a benchmark seed's stages (zoo shards, generator variants, baselines) are independent jobs over small models,
    and on a small CPU one thread per job uses the cores far better than several threads on one small model. The
    children are forked, so a task family or benchmark base registered in this process is theirs too, and keep to
    one thread, which a forked child can always start. They ignore Ctrl-C: the parent stops them, and each stage's
    cache keeps what finished. ``start_method="spawn"`` starts fresh interpreters instead, for jobs on an
    accelerator the parent has opened (a forked child cannot use it); they see only what their modules register."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    context = multiprocessing.get_context(start_method)
    with context.Pool(workers, initializer=_one_thread_child, maxtasksperchild=1) as pool:
        for _ in pool.imap_unordered(_call, jobs):
            pass


def _one_thread_child() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _call(job: Callable[[], object]) -> None:
    job()


def run_script(main: Callable[[], object], name: str) -> None:
    """A benchmark script's entry point: Ctrl-C ends it with one line, as ``mcdi`` does, and status 130. Every stage
    is cached as it finishes, so the same command resumes."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"{name}: interrupted; finished stages are cached, the same command resumes", file=sys.stderr)
        sys.exit(130)


def recorded_runs(stem: Path, config_key: str) -> list[dict]:
    """The runs of ``<stem>.json`` (one per seed, or per seed and fold) made under the configuration ``config_key``.

    The results file is the durable record of finished seeds: the stage caches live outside the repository and may
    be gone on the next machine, so a run recorded here is read back rather than rerun, and seeds run on different
    days add up to one table. Runs made under another configuration are not returned (the next write replaces
    them); a corrupt file is an error naming it."""
    path = stem.with_suffix(".json")
    if not path.is_file():
        return []
    try:
        runs = json.loads(path.read_text())["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a results record ({err!r}); move it away to start a new one.") from err
    return [run for run in runs if run.get("config_key") == config_key]


def write_record(stem: Path, command: str, summary: Mapping, runs: Sequence[Mapping], markdown: str) -> Path:
    """``<stem>.json`` (command, torch version, machine, threads, summary, per-seed runs) and ``<stem>.md``, each
    written atomically; returns the JSON path."""
    record = {
        "command": command,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "summary": summary,
        "runs": list(runs),
    }
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=1, default=str))
    atomic_write_text(stem.with_suffix(".md"), markdown)
    return stem.with_suffix(".json")
