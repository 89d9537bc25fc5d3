"""The functional term of SPEC §3.7 on the logistic family with a zoo of noisy fits: held-out loss of the generated
weights against λ, for x̂₀- and ε-prediction, over seeds — the evidence for the margin of the functional test in
``tests/test_pipeline.py``, which runs exactly :func:`tests.test_pipeline.functional_config`.

    python benchmarks/studies/functional_logistic.py --seeds 0 1 2 3 4
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.pipeline import run_pipeline  # noqa: E402
from tests.test_pipeline import functional_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 3.0, 10.0])
    parser.add_argument("--prediction-types", nargs="+", default=["sample", "epsilon"])
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "functional_logistic.json"))
    args = parser.parse_args()
    rows = []
    for prediction_type in args.prediction_types:
        for seed in args.seeds:
            for weight in args.weights:
                start = time.perf_counter()
                results = run_pipeline(functional_config(seed, weight, prediction_type), progress=False, log=print)
                rows.append({"prediction_type": prediction_type, "seed": seed, "functional_weight": weight,
                             **results["heldout_metric"], "seconds": time.perf_counter() - start})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for prediction_type in args.prediction_types:
        for weight in args.weights:
            mine = [r for r in rows if r["prediction_type"] == prediction_type and r["functional_weight"] == weight]
            paper = {r["seed"]: r["generated"] for r in rows
                     if r["prediction_type"] == prediction_type and r["functional_weight"] == 0}  # fmt: skip
            summary[f"{prediction_type}/λ={weight:g}"] = {
                "generated_mean": statistics.fmean(r["generated"] for r in mine),
                "min_gain_over_lambda_0": min(paper[r["seed"]] - r["generated"] for r in mine),
                "min_gap_to_mean_of_zoo": min(r["mean_of_zoo"] - r["generated"] for r in mine),
                "seconds_median": statistics.median(r["seconds"] for r in mine),
            }
    record = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__, "machine": platform.machine(),
              "rows": rows, "summary": summary}  # fmt: skip
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
