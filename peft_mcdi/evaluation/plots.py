"""Pictures of a trained run (``mcdi bench --run-dir``): held-out metric against generation time for every method,
fine-tuning learning curves with the generated weights as a line, and a PCA of sampling chains against the zoo's
trajectory checkpoints (the paper's Figure 1), plus the ``results.md`` that shows them.

The ``*_data`` / ``finetune_curve`` functions compute what a picture shows and return plain dicts and lists (JSON
friendly); the ``plot_*`` functions only draw such dicts and write a small PNG. Drawing uses matplotlib's Agg canvas
directly (no pyplot, no global backend switch), so it works headless and leaves an interactive session alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch


# How methods of a results.json are named in the pictures; methods not listed keep their key.
LABELS = {
    "generated": "Mc-Di (generated)",
    "hypernetwork": "one-pass hypernetwork",
    "nearest_task": "nearest training task",
    "mean_of_zoo": "mean of zoo",
    "init": "θ₀ (shared init)",
    "per_task_reference": "per-task fine-tuning",
}
COLORS = {
    "generated": "tab:red",
    "hypernetwork": "tab:orange",
    "nearest_task": "tab:blue",
    "mean_of_zoo": "tab:purple",
    "init": "tab:gray",
    "per_task_reference": "tab:green",
}
FIGSIZE = (5.6, 3.8)
DPI = 100  # 560 × 380 pixels: small PNGs (tens of kB)


def new_figure(ncols: int = 1, size: tuple[float, float] = FIGSIZE):
    """A matplotlib Figure on the Agg canvas, and its axes."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # an ImportError is a one-line user error in the CLI
        raise ImportError("the pictures need matplotlib: pip install matplotlib (or peft_mcdi[assets])") from err
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a small PNG at ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _label(name: str) -> str:
    return LABELS.get(name, name)


def _direction(results: Mapping) -> str:
    return "higher is better" if results.get("higher_is_better") else "lower is better"


# ------------------------------------------------------------------------------------ (a) metric vs generation time
def metric_vs_time_data(results: Mapping, extra_ms: Mapping[str, float] | None = None) -> dict:
    """Split a results.json's methods into timed points (method → (ms, metric)) and untimed reference levels.

    Timed: ``generated`` (``generation_ms_median``), ``hypernetwork`` (``hypernetwork_ms_median``) and whatever
    ``extra_ms`` adds (``mcdi bench`` adds ``per_task_reference``: the measured time of the per-task fine-tuning).
    The others (θ₀, mean of zoo, nearest training task) take no generation step of their own: they are levels."""
    times = {"generated": results.get("generation_ms_median"), "hypernetwork": results.get("hypernetwork_ms_median")}
    times.update(extra_ms or {})
    points, levels = {}, {}
    for name, value in results["heldout_metric"].items():
        ms = times.get(name)
        if ms is not None and ms > 0:
            points[name] = (float(ms), float(value))
        else:
            levels[name] = float(value)
    return {"metric": results["metric"], "higher_is_better": bool(results["higher_is_better"]), "points": points,
            "levels": levels, "extra": sorted(extra_ms or {})}  # fmt: skip


def plot_metric_vs_time(data: Mapping, path: str | Path) -> Path:
    """Held-out metric (y) against the time to produce one task's weights (x, log scale); untimed baselines are
    dashed horizontal lines. ``data`` is :func:`metric_vs_time_data`'s."""
    fig, (ax,) = new_figure()
    for name, (ms, value) in sorted(data["points"].items(), key=lambda kv: kv[1][0]):
        label = f"{_label(name)}: {ms:.3g} ms" + (" (timed by bench)" if name in data.get("extra", ()) else "")
        ax.scatter([ms], [value], s=50, color=COLORS.get(name), zorder=3, label=label)
    for name, value in data["levels"].items():
        ax.axhline(value, ls="--", lw=1.2, color=COLORS.get(name, "black"), label=f"{_label(name)} (no generation)")
    ax.set_xscale("log")
    if data["points"]:
        lo, hi = min(ms for ms, _ in data["points"].values()), max(ms for ms, _ in data["points"].values())
        ax.set_xlim(lo / 3, hi * 3)
    ax.set_xlabel("time to weights for one task (ms, log scale)")
    ax.set_ylabel(f"held-out {data['metric']}")
    ax.set_title(f"held-out {data['metric']} vs time ({'higher' if data['higher_is_better'] else 'lower'} is better)",
                 fontsize=10)  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------- (b) fine-tuning curves
def finetune_curve(task, start: Mapping[str, torch.Tensor], recorder, max_points: int = 40) -> dict:
    """Fine-tune ``start`` on ``task`` the way the zoo's trajectories were trained (Adam + SAM with the recorder's
    lr, ρ, weight decay, epochs and batch-order seed) and record the held-out metric along the way.

    From θ₀ this reproduces the task's zoo trajectory, so its last point is the ``per_task_reference``. Returns
    ``steps`` and ``metric`` (about ``max_points`` evaluations, step 0 and the last step included), ``seconds`` (the
    optimisation time up to each of those steps), ``steps_per_epoch`` and ``train_seconds`` (the optimisation steps
    only, evaluations excluded)."""
    from peft_mcdi.zoo.recorder import adam_sam_train, batch_order_generator

    params = {k: v.detach().clone().float().requires_grad_(True) for k, v in start.items()}
    # batches are drawn lazily (as the recorder does): count them with a throw-away generator of the same seed
    per_epoch = [sum(1 for _ in task.train_batches(e, batch_order_generator(task, recorder)))
                 for e in range(1, recorder.num_epochs + 1)]  # fmt: skip
    total = sum(per_epoch)
    every = max(1, math.ceil(total / max(max_points - 1, 1)))

    def evaluate() -> float:
        with torch.no_grad():
            return float(task.evaluate({k: v.detach() for k, v in params.items()}))

    steps, metric, seconds = [0], [evaluate()], [0.0]
    state = {"step": 0, "seconds": 0.0, "since": time.perf_counter()}  # seconds: optimisation only, not evaluation

    def after_step(epoch: int, loss: float) -> None:
        state["seconds"] += time.perf_counter() - state["since"]
        state["step"] += 1
        if state["step"] % every == 0 or state["step"] == total:
            steps.append(state["step"])
            metric.append(evaluate())
            seconds.append(state["seconds"])
        state["since"] = time.perf_counter()

    adam_sam_train(task, recorder, params, on_step=after_step)
    return {"steps": steps, "metric": metric, "seconds": seconds, "steps_per_epoch": per_epoch[0] if per_epoch else 0,
            "train_seconds": state["seconds"]}  # fmt: skip


def finetune_curves_data(
    tasks: Sequence, generated: Sequence[Mapping[str, torch.Tensor]], recorder, max_points: int = 40
) -> dict:
    """Learning curves from θ₀ and from the generated weights for each task (``generated[j]`` belongs to
    ``tasks[j]``), averaged over the tasks. Curves of one task share their steps, so averaging is point-wise."""
    from_init = [finetune_curve(t, t.init_params(), recorder, max_points) for t in tasks]
    from_generated = [finetune_curve(t, g, recorder, max_points) for t, g in zip(tasks, generated)]

    def mean(curves: list[dict]) -> list[float]:
        return [sum(c["metric"][i] for c in curves) / len(curves) for i in range(len(curves[0]["metric"]))]

    first = tasks[0]
    return {
        "metric": first.metric,
        "higher_is_better": bool(first.higher_is_better),
        "task_ids": [t.task_id for t in tasks],
        "steps": from_init[0]["steps"],
        "steps_per_epoch": from_init[0]["steps_per_epoch"],
        "from_init": mean(from_init),
        "from_generated": mean(from_generated),
        "per_task_from_init": [c["metric"] for c in from_init],
        "per_task_from_generated": [c["metric"] for c in from_generated],
        "finetune_ms_median": 1e3 * sorted(c["train_seconds"] for c in from_init)[len(from_init) // 2],
        "recorder": {"num_epochs": recorder.num_epochs, "lr": recorder.lr, "rho": recorder.rho},
    }


def plot_finetune_curves(data: Mapping, path: str | Path, levels: Mapping[str, float] | None = None) -> Path:
    """Mean held-out metric while fine-tuning from θ₀ and from the generated weights, with the generated weights'
    metric (no gradient step) as a horizontal line; ``levels`` adds other methods' lines (same tasks)."""
    fig, (ax,) = new_figure()
    steps = data["steps"]
    for curves, color in ((data["per_task_from_init"], COLORS["per_task_reference"]),
                          (data["per_task_from_generated"], COLORS["generated"])):  # fmt: skip
        for curve in curves:
            ax.plot(steps, curve, color=color, alpha=0.15, lw=0.8)
    ax.plot(steps, data["from_init"], color=COLORS["per_task_reference"], lw=2, label="fine-tuning from θ₀")
    ax.plot(steps, data["from_generated"], color=COLORS["generated"], lw=2, ls="-.",
            label="fine-tuning from the generated weights")  # fmt: skip
    ax.axhline(data["from_generated"][0], color=COLORS["generated"], lw=1.5, ls="--",
               label=f"generated, no gradient step: {data['from_generated'][0]:.3g}")  # fmt: skip
    for name, value in (levels or {}).items():
        ax.axhline(value, color=COLORS.get(name, "black"), lw=1, ls=":", label=f"{_label(name)}: {value:.3g}")
    rec = data["recorder"]
    ax.set_xlabel(f"fine-tuning steps (Adam+SAM, lr {rec['lr']:g}, {data['steps_per_epoch']} per epoch)")
    ax.set_ylabel(f"held-out {data['metric']}")
    n = len(data["task_ids"])
    ax.set_title(f"fine-tuning on {n} held-out task{'s' * (n != 1)} (mean; thin: per task)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------- (c) PCA of sampling chains
def sampling_chains(generator, conditions: torch.Tensor, seed: int = 0, **sampling) -> torch.Tensor:
    """x_T, …, x_0 of the generator's reverse chain for each condition, in codec space: (steps + 1, B, D)."""
    _, chain = generator.generate_vectors(conditions, seed=seed, return_chain=True, **sampling)
    return torch.stack([x.detach().float().cpu() for x in chain])


def pca_basis(points: torch.Tensor, num_components: int = 2) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Mean (D,), principal directions (D, q) and explained-variance ratios of ``points`` (n, D), by an SVD."""
    mean = points.mean(0)
    _, s, vh = torch.linalg.svd(points - mean, full_matrices=False)
    var = s**2
    ratio = (var / var.sum().clamp_min(1e-30))[:num_components].tolist()
    return mean, vh[:num_components].T, ratio


def sampling_pca_data(
    chains: torch.Tensor,
    heldout_trajectories: torch.Tensor,
    train_trajectories: torch.Tensor,
    chain_timesteps: Sequence[int],
    boundaries: Sequence[int] = (),
    target_epochs: Sequence[int] = (),
) -> dict:
    """Project sampling chains (S, B, D) and trajectory checkpoints ((B, E, D) for the held-out tasks themselves,
    (n, E, D) for training tasks of the zoo) onto the first two principal components of the checkpoints.

    The basis is fitted on the checkpoints only, so the plane is the one the trajectories span; the chains are
    projected onto it (their noisy start lies far from it in the other directions). ``chain_timesteps[s]`` is the
    diffusion step of chain state s; ``boundaries`` (Mc-Di's b_i) and ``target_epochs`` (the epochs of the local
    targets θ⁽ⁱ⁾) mark where the chain should meet the trajectory."""
    checkpoints = torch.cat([heldout_trajectories.flatten(0, 1), train_trajectories.flatten(0, 1)])
    mean, basis, ratio = pca_basis(checkpoints.float())

    def project(x: torch.Tensor) -> list:
        return ((x.float() - mean) @ basis).tolist()

    return {
        "explained_variance": ratio,
        "chains": project(chains.transpose(0, 1)),  # (B, S, 2)
        "heldout": project(heldout_trajectories),  # (B, E, 2)
        "train": project(train_trajectories),  # (n, E, 2)
        "chain_timesteps": [int(t) for t in chain_timesteps],
        "boundaries": [int(b) for b in boundaries],
        "target_epochs": [int(e) for e in target_epochs],
    }


def plot_sampling_pca(data: Mapping, path: str | Path) -> Path:
    """Two panels: the whole chains from noise, and a zoom on the trajectories. Gray: training tasks' trajectories
    (zoo); colour, solid: each held-out task's own fine-tuning trajectory (never seen by the generator); colour,
    dashed: its sampling chain; ◆ chain states at the Mc-Di boundaries b_i, ○ trajectory checkpoints at the local
    target epochs; ★ the generated weights (x_0)."""
    fig, axes = new_figure(2, (9.6, 4.2))
    palette = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    steps = data["chain_timesteps"]
    # chain state s sits at diffusion step steps[s]; x_0 (the last state) is drawn as the star instead of a ◆
    at_boundary = [s for s, t in enumerate(steps) if t in set(data["boundaries"]) and t != 0]
    for panel, ax in enumerate(axes):
        for traj in data["train"]:
            xs, ys = zip(*traj)
            ax.plot(xs, ys, color="0.7", lw=0.7, zorder=1)
        for j, (chain, traj) in enumerate(zip(data["chains"], data["heldout"])):
            color = palette[j % len(palette)]
            xs, ys = zip(*traj)
            ax.plot(xs, ys, color=color, lw=1.8, zorder=2, label="held-out task's own trajectory" if j == 0 else None)
            for e in data["target_epochs"]:  # positions in the trajectory (kept epochs)
                if e < len(traj):
                    ax.scatter([traj[e][0]], [traj[e][1]], s=28, facecolors="none", edgecolors=color, zorder=4)
            cx, cy = zip(*chain)
            ax.plot(cx, cy, color=color, lw=1, ls="--", marker=".", ms=3, zorder=3,
                    label="sampling chain x_T → x_0" if j == 0 else None)  # fmt: skip
            for s in at_boundary:
                ax.scatter([chain[s][0]], [chain[s][1]], marker="D", s=22, color=color, zorder=5)
            ax.scatter([chain[-1][0]], [chain[-1][1]], marker="*", s=110, color=color, edgecolors="black",
                       linewidths=0.5, zorder=6, label="generated weights x_0" if j == 0 else None)  # fmt: skip
        if panel == 1:  # zoom: the trajectories and the generated weights, not the noise
            pts = [p for traj in data["train"] + data["heldout"] for p in traj] + [c[-1] for c in data["chains"]]
            xs, ys = zip(*pts)
            pad_x, pad_y = 0.1 * (max(xs) - min(xs) or 1.0), 0.1 * (max(ys) - min(ys) or 1.0)
            ax.set_xlim(min(xs) - pad_x, max(xs) + pad_x)
            ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
        ev = data["explained_variance"]
        ax.set_xlabel(f"PC 1 ({100 * ev[0]:.0f}% of checkpoint variance)")
        ax.set_ylabel(f"PC 2 ({100 * ev[1]:.0f}%)" if len(ev) > 1 else "PC 2")
        ax.set_title("whole chains (from noise)" if panel == 0 else "zoom on the trajectories", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].plot([], [], color="0.7", lw=0.7, label="training tasks' trajectories (zoo)")
    axes[0].legend(fontsize=7, loc="best")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------- results.md
def results_markdown(
    results: Mapping,
    pictures: Mapping[str, str],
    timing: Mapping | None = None,
    curves: Mapping | None = None,
    pca: Mapping | None = None,
    title: str = "Results",
) -> str:
    """The Markdown page of a run: held-out metric by method, latency, and the pictures (relative file names)."""
    better = results["higher_is_better"]
    ranked = sorted(results["heldout_metric"].items(), key=lambda kv: kv[1], reverse=better)
    lines = [
        f"# {title}",
        "",
        f"Held-out {results['metric']} ({_direction(results)}) on {results.get('num_test_tasks', '?')} tasks that "
        "never fed the generator's training; generation latency is the median for one task, task encoder "
        "excluded. See docs/results.md for how each number is measured.",
        "",
        f"| method | held-out {results['metric']} |",
        "|---|---:|",
        *[f"| {_label(name)} | {value:.4f} |" for name, value in ranked],
        "",
        f"- generation: {results['generation_ms_median']:.2f} ms (median, 1 task)",
    ]
    if results.get("hypernetwork_ms_median") is not None:
        lines.append(f"- one-pass hypernetwork: {results['hypernetwork_ms_median']:.2f} ms (median, 1 task)")
    if curves:
        lines.append(
            f"- per-task fine-tuning (Adam+SAM, {curves['recorder']['num_epochs']} epochs): "
            f"{curves['finetune_ms_median']:.1f} ms (median over {len(curves['task_ids'])} tasks, measured by "
            "`mcdi bench`)"
        )
    if results.get("nearest_checkpoint_distance") is not None:
        lines.append(
            f"- distance of generated weights to the nearest zoo checkpoint (codec space): "
            f"{results['nearest_checkpoint_distance']:.3f}"
        )
    if timing and timing.get("rows"):
        lines += [
            "",
            f"Generation throughput ({timing['device']}, torch threads: {timing['torch_threads']}, "
            f"{timing['sampler']}, {timing['num_steps']} steps):",
            "",
            "| batch | median ms | ms / task | tasks / s |",
            "|---:|---:|---:|---:|",
            *[
                f"| {r['batch_size']} | {r['median_ms']:.2f} | {r['ms_per_task']:.3f} | {r['tasks_per_s']:.1f} |"
                for r in timing["rows"]
            ],
        ]
    captions = {
        "metric_vs_time": "Held-out metric against the time to produce one task's weights. Methods without a "
        "generation step of their own (θ₀, mean of zoo, nearest training task) are dashed lines.",
        "finetune_curves": "Fine-tuning held-out tasks from θ₀ and from the generated weights, with the generated "
        "weights' metric (no gradient step) as a dashed line.",
        "sampling_pca": "Sampling chains of held-out tasks projected on the first two principal components of the "
        "zoo's trajectory checkpoints (Figure 1 of the paper). ◆: chain at the Mc-Di boundaries b_i; ○: "
        "checkpoints at the local-target epochs; ★: generated weights.",
    }
    for key, filename in pictures.items():
        lines += ["", f"![{key}]({filename})", "", captions.get(key, "")]
        if key == "sampling_pca" and pca:
            ev = pca["explained_variance"]
            lines[-1] += f" The two components hold {100 * sum(ev):.0f}% of the checkpoints' variance."
    return "\n".join(lines).rstrip() + "\n"


__all__ = [
    "finetune_curve",
    "finetune_curves_data",
    "metric_vs_time_data",
    "pca_basis",
    "plot_finetune_curves",
    "plot_metric_vs_time",
    "plot_sampling_pca",
    "results_markdown",
    "sampling_chains",
    "sampling_pca_data",
]
