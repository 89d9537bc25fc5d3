"""Tables and pictures of the vision benchmarks, computed from their results JSON only (benchmarks are data).

``summarize`` turns per-seed results into mean ± std over seeds per (setting, method); ``markdown`` renders the
accuracy table, the cost table and the meta-training curves; ``write_pictures`` draws accuracy against the time to
produce a head, and the PCA of sampling chains against a fine-tuning trajectory (the paper's Figure 1).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from peft_mcdi.evaluation.harness import mean_std, percent, pooled_interval
from peft_mcdi.evaluation.plots import metric_vs_time_data, plot_metric_vs_time, plot_sampling_pca
from peft_mcdi.evaluation.vision import MATCHED


LABELS = {
    "mcdi": "Mc-Di",
    "mcdi_1_sample": "Mc-Di, 1 sample, no guidance",
    "mcdi_functional": "Mc-Di, functional (prototype anchor + task loss + chain)",
    "mcdi_functional_1_sample": "Mc-Di, functional, 1 sample, no guidance",
    "mcdi_functional_fewshot": "functional Mc-Di's head + a few Adam steps on the support set",
    "zero_fewshot": "zero head + the same Adam steps",
    "anchor": "the anchor alone (prototype rule at the fitted scale)",
    "hypernetwork_sft": "one-pass hypernetwork through the task loss (t2l_sft), anchored",
    "mvdi": "Mv-Di (k = 1)",
    "mvdi_functional": "Mv-Di (k = 1), functional",
    "twdi": "Tw-Di",
    "twdi_functional": "Tw-Di, functional",
    "single_level": "single-level diffusion (no meta-learning)",
    "hypernetwork": "one-pass hypernetwork",
    "reptile_finetune": "Reptile meta-init + fine-tuning",
    "prototype": "prototype (nearest centroid)",
    "logistic_regression": "logistic regression (gradient)",
    "per_task_reference": "per-task Adam+SAM reference",
    "nearest_training_rows": "nearest training class rows",
    "mean_of_zoo": "mean head of zoo",
}
SHORT = {"mcdi": "Mc-Di", "mcdi_functional": "functional Mc-Di"}  # column headers


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    return {**mean_std(values), "n": len(values)}


def summarize(runs: Sequence[Mapping]) -> dict:
    """Per-seed results (``run_vision_benchmark`` outputs, possibly of several suites/folds) → per setting key
    ``<suite>/<setting>``: accuracy mean ± std over seeds per method, and medians of the costs over seeds."""
    by_setting: dict[str, list[Mapping]] = {}
    for run in runs:
        for setting, result in run["settings"].items():
            by_setting.setdefault(f"{run['suite']}/{setting}", []).append(result)
    summary = {}
    for key, results in by_setting.items():
        methods = results[0]["accuracy"]
        entry = {
            "seeds": len(results),
            "episodes_per_seed": results[0]["num_episodes"],
            "accuracy": {m: _mean_std([r["accuracy"][m] for r in results]) for m in methods},
            "ms_per_episode_median": {},
            "episodes_per_s_batched": {},
            **{f"steps_to_match_{target}": {} for target in MATCHED},
            "distance_to_nearest_zoo_row": {
                m: statistics.fmean(r["distance_to_nearest_zoo_row"][m] for r in results)
                for m in results[0]["distance_to_nearest_zoo_row"]
            },
            # paired over every episode of every seed: the functional generator against the free rules
            "paired_difference": {
                pair: pooled_interval([r["paired_difference"][pair] for r in results])
                for pair in results[0].get("paired_difference", {})
            },
        }
        for method, cost in results[0]["cost"].items():
            if "ms_per_episode_median" in cost:
                entry["ms_per_episode_median"][method] = statistics.median(
                    r["cost"][method]["ms_per_episode_median"] for r in results
                )
            if "episodes_per_s_batched" in cost:
                entry["episodes_per_s_batched"][method] = statistics.median(
                    r["cost"][method]["episodes_per_s_batched"] for r in results
                )
            for target in MATCHED:
                if f"steps_to_match_{target}" in cost:
                    entry[f"steps_to_match_{target}"][method] = [
                        r["cost"][method][f"steps_to_match_{target}"] for r in results
                    ]
        summary[key] = entry
    summary.update(_fold_means(runs))
    return summary


def _fold_means(runs: Sequence[Mapping]) -> dict:
    """Leave-one-domain-out suites (``vision-dg-<domain>``): per setting, the accuracy averaged over the held-out
    domains of each seed (seeds with every fold done), then mean ± std over those seeds."""
    folds: dict[int, dict[str, Mapping]] = {}
    for run in runs:
        if run["suite"].startswith("vision-dg-"):
            folds.setdefault(run["seed"], {})[run["suite"]] = run
    domains = {suite for per_seed in folds.values() for suite in per_seed}
    complete = [per_seed for per_seed in folds.values() if len(domains) > 1 and set(per_seed) == domains]
    if not complete:
        return {}
    out = {}
    for setting in next(iter(complete[0].values()))["settings"]:
        methods = next(iter(complete[0].values()))["settings"][setting]["accuracy"]
        per_seed = {
            m: [statistics.fmean(r["settings"][setting]["accuracy"][m] for r in seed.values()) for seed in complete]
            for m in methods
        }
        out[f"vision-dg (mean of {len(domains)} held-out domains)/{setting}"] = {
            "seeds": len(complete),
            "episodes_per_seed": sum(r["settings"][setting]["num_episodes"] for r in complete[0].values()),
            "accuracy": {m: _mean_std(v) for m, v in per_seed.items()},
            "ms_per_episode_median": {},
            "episodes_per_s_batched": {},
            **{f"steps_to_match_{target}": {} for target in MATCHED},
            "distance_to_nearest_zoo_row": {},
        }
    return out


def markdown(summary: Mapping, runs: Sequence[Mapping], title: str, command: str) -> str:
    """The accuracy table (methods × settings, % mean ± std over seeds), costs, and the meta-training curves."""
    settings = list(summary)
    methods = list(next(iter(summary.values()))["accuracy"])
    sizes = ", ".join(f"{k}: {v['seeds']} seeds × {v['episodes_per_seed']} episodes" for k, v in summary.items())
    lines = [f"# {title}", "", f"Produced by `{command}`; accuracy in %, mean ± std over seeds ({sizes}).", "",
             "| method | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]  # fmt: skip
    for m in methods:
        cells = [percent(summary[s]["accuracy"][m]) if m in summary[s]["accuracy"] else "n/a" for s in settings]
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    paired = [(s, pair, v) for s in settings for pair, v in summary[s].get("paired_difference", {}).items()]
    if paired:
        lines += ["", "## Paired differences over episodes (all seeds pooled; points, 95 % interval)", "",
                  "| setting | difference | mean | 95 % interval | episodes |", "|---|---|---|---|---|"]  # fmt: skip
        for s, pair, v in paired:
            lines.append(f"| {s} | {pair} | {100 * v['mean']:+.1f} | [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}] "
                         f"| {v['episodes']} |")  # fmt: skip
    targets = [t for t in MATCHED if any(summary[s].get(f"steps_to_match_{t}") for s in settings)]
    lines += ["", "## Cost of producing one head (median over seeds)", "",
              "| setting | method | ms / episode | episodes / s batched | "
              + " | ".join(f"steps to match {SHORT[t]} (per seed)" for t in targets) + " |",
              "|---|---|---|---|" + "---|" * len(targets)]  # fmt: skip
    for s in settings:
        entry = summary[s]
        for m, ms in entry["ms_per_episode_median"].items():
            eps = entry["episodes_per_s_batched"].get(m)
            matches = [entry.get(f"steps_to_match_{t}", {}).get(m) for t in targets]
            lines.append(f"| {s} | {LABELS.get(m, m)} | {ms:.2f} | {f'{eps:.0f}' if eps else '–'} | "
                         + " | ".join(", ".join(map(str, match)) if match else "–" for match in matches)
                         + " |")  # fmt: skip
    lines += ["", "## Held-out accuracy against meta-training compute (first setting, per seed)", "",
              "| suite | seed | variant | (outer steps, seconds, accuracy %) |", "|---|---|---|---|"]  # fmt: skip
    for run in runs:
        for name, train in run["training"].items():
            if "curve" in train:
                points = "; ".join(
                    f"({p['outer_steps']}, {p['meta_train_seconds']:.0f} s, {100 * p['accuracy']:.1f})"
                    if "outer_steps" in p
                    else f"(+{p['chain_steps']} chain steps, {p['chain_seconds']:.0f} s, {100 * p['accuracy']:.1f})"
                    for p in train["curve"]
                )
                lines.append(f"| {run['suite']} | {run['seed']} | {LABELS.get(name, name)} | {points} |")
    return "\n".join(lines) + "\n"


def write_pictures(summary: Mapping, runs: Sequence[Mapping], prefix: str | Path) -> list[Path]:
    """``<prefix>_accuracy_vs_time.png`` (first setting of each suite) and ``<prefix>_pca.png`` (first run's PCA)."""
    prefix = Path(prefix)
    paths = []
    seen_suites = set()
    for key, entry in summary.items():
        suite = key.split("/", 1)[0]
        if suite in seen_suites or not entry["ms_per_episode_median"]:  # aggregates carry no timings
            continue
        seen_suites.add(suite)
        results = {
            "metric": f"accuracy ({key})",
            "higher_is_better": True,
            "heldout_metric": {LABELS.get(m, m): v["mean"] for m, v in entry["accuracy"].items()},
        }
        timed = {LABELS.get(m, m): ms for m, ms in entry["ms_per_episode_median"].items()}
        data = metric_vs_time_data(results, timed)
        data["extra"] = []
        name = f"{prefix.name}_{suite}_accuracy_vs_time.png" if len(summary) > 1 else f"{prefix.name}_accuracy.png"
        paths.append(plot_metric_vs_time(data, prefix.with_name(name)))
    pca = next((run["pca"] for run in runs if run.get("pca")), None)
    if pca:
        paths.append(plot_sampling_pca(pca, prefix.with_name(f"{prefix.name}_pca.png")))
    return paths
