"""Evidence for the margins of tests/test_pipeline.py: run its exact configuration over several seeds.

python benchmarks/studies/e2e_margins.py --seeds 0 1 2 3 4
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.pipeline import run_pipeline  # noqa: E402
from tests.test_pipeline import e2e_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "e2e_margins.json"))
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        results = run_pipeline(e2e_config(seed), progress=False, log=lambda *_: None)
        rows.append(
            {
                "seed": seed,
                **results["heldout_metric"],
                "seconds": time.perf_counter() - start,
                "nearest_checkpoint_distance": results["nearest_checkpoint_distance"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    summary = {
        "min_gap_to_nearest_task": min(r["nearest_task"] - r["generated"] for r in rows),
        "min_gap_to_mean_of_zoo": min(r["mean_of_zoo"] - r["generated"] for r in rows),
    }
    record = {
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "rows": rows,
        "summary": summary,
    }
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
