"""Where should DDPM's ancestral noise be drawn? On a helper thread one step ahead, or inline between denoiser calls.

The sampler uses the helper only when torch's intra-op pool leaves a core idle (``_spare_cpu_core`` in
``peft_mcdi/generator/sampling.py``). This measures both placements at one intra-op thread and at torch's default,
in one process, interleaved round by round so that a shared machine's drift hits both alike, and reports the
inline / helper ratio of the per-round medians (< 1: inline is faster). Same generator and weights as
``benchmarks/engine.py``.

    python benchmarks/studies/sampler_threads.py        # → benchmarks/results/sampler_threads.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import engine  # noqa: E402
from peft_mcdi.evaluation.metrics import median_ms  # noqa: E402
from peft_mcdi.generator import sampling  # noqa: E402
from peft_mcdi.utils import atomic_write_text  # noqa: E402


RESULTS = Path(__file__).with_name("results")
PLACEMENTS = {"helper thread": lambda: True, "inline": lambda: False}  # stand-ins for the sampler's own choice
SPARE_CPU_CORE = sampling._spare_cpu_core


def measure(case: str, threads: int, rounds: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    model = engine.build(case, "mcdi", "cpu")
    generate = engine.generate_fn(model, engine.conditions(case, 1, "cpu"), "mcdi")
    per_round = {name: [] for name in PLACEMENTS}
    chosen = sampling._spare_cpu_core()
    try:
        for _ in range(rounds):
            for name, placement in PLACEMENTS.items():
                sampling._spare_cpu_core = placement
                per_round[name].append(median_ms(generate, repeats=repeats, warmup=1))
    finally:
        sampling._spare_cpu_core = SPARE_CPU_CORE
    median = {name: statistics.median(ms) for name, ms in per_round.items()}
    return {
        "case": case,
        "threads": threads,
        "sampler_choice": "helper thread" if chosen else "inline",
        "ms_median": median,
        "ms_per_round": per_round,
        "inline_over_helper": median["inline"] / median["helper thread"],
    }


def markdown(record: dict) -> str:
    lines = [
        f"# Ancestral noise: helper thread or inline ({record['machine']}, {record['cores']} cores, torch "
        f"{record['torch']})",
        "",
        f"Command: `{record['command']}`. DDPM, all 20 steps, one task; median ms over {record['rounds']} interleaved "
        f"rounds, each the median of {record['repeats']} generations. The sampler's choice is what it does on this "
        "machine at that thread count.",
        "",
        "| weights | intra-op threads | helper ms | inline ms | inline / helper | sampler's choice |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in record["rows"]:
        ms = row["ms_median"]
        lines.append(
            f"| {row['case']} | {row['threads']} | {ms['helper thread']:.1f} | {ms['inline']:.1f} | "
            f"{row['inline_over_helper']:.2f} | {row['sampler_choice']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["smollm2-qv-r8", "lora-1e6"], choices=sorted(engine.CASES))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    rows = []
    for case in args.cases:
        for threads in sorted({1, default_threads}):
            rows.append(measure(case, threads, args.rounds, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    torch.set_num_threads(default_threads)
    record = {
        "command": "python benchmarks/studies/sampler_threads.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cores": sampling.usable_cpu_cores(),
        "rounds": args.rounds,
        "repeats": args.repeats,
        "rows": rows,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out_dir) / "sampler_threads"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=1))
    atomic_write_text(out.with_suffix(".md"), markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
