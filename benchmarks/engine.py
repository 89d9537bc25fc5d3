"""Engine benchmark: generation latency, peak memory and throughput of the Mc-Di generator, side by side with a
one-pass hypernetwork of the same architecture, plus meta-training throughput. Numbers are as measured; the ratio
to the baseline measured in the same process is the figure to compare across machines.

    python benchmarks/engine.py                    # writes benchmarks/results/engine.{json,md}
    python benchmarks/engine.py --device cuda      # on a GPU machine (memory from torch.cuda)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft_mcdi.evaluation.baselines.hypernetwork import OnePassHypernetwork  # noqa: E402
from peft_mcdi.evaluation.metrics import median_ms  # noqa: E402
from peft_mcdi.evaluation.vision import VisionBenchConfig  # noqa: E402
from peft_mcdi.generator.denoisers import DenoiserConfig  # noqa: E402
from peft_mcdi.generator.head import HeadGenerator  # noqa: E402
from peft_mcdi.generator.model import GeneratorConfig, McDiGenerator  # noqa: E402
from peft_mcdi.meta.data import ZooTensors  # noqa: E402
from peft_mcdi.meta.trainer import MetaTrainConfig, MetaTrainer  # noqa: E402
from peft_mcdi.pipeline import FUNCTIONAL  # noqa: E402


RESULTS = Path(__file__).with_name("results")
HIDDEN, LAYERS, HEADS, TEXT_DIM = 128, 2, 4, 384


def lora_shapes(num_layers: int, r: int, d_in: int, d_q: int, d_v: int) -> dict[str, list[int]]:
    """A LoRA set on q_proj/v_proj of every layer: A (r, d_in), B (d_out, r), laid out module-major (all q_proj
    blocks, then all v_proj blocks) so that the token denoiser reads each module type with one slice."""
    shapes = {}
    for module, d_out in (("q_proj", d_q), ("v_proj", d_v)):
        for i in range(num_layers):
            shapes[f"model.layers.{i}.self_attn.{module}.lora_A.weight"] = [r, d_in]
            shapes[f"model.layers.{i}.self_attn.{module}.lora_B.weight"] = [d_out, r]
    return shapes


# name → (codec config, per-token condition?, number of class rows[, lora_factor_dim override])
CASES = {
    "lora-1e3": ({"shapes": lora_shapes(4, 4, 16, 16, 16)}, False, None),
    "lora-1e4": ({"shapes": lora_shapes(8, 4, 80, 80, 80)}, False, None),
    "lora-1e5": ({"shapes": lora_shapes(16, 8, 200, 200, 200)}, False, None),
    "lora-1e6": ({"shapes": lora_shapes(32, 8, 1000, 1000, 1000)}, False, None),
    # SmolLM2-135M, r = 8 on q/v of its 30 layers (hidden 576, 3 kv heads × 64 → v out 192): the ≤ 100 ms goal
    "smollm2-qv-r8": ({"shapes": lora_shapes(30, 8, 576, 576, 192)}, False, None),
    # the same with dense (not LoRA-aware) token projections, to show what the factorisation buys
    "smollm2-qv-r8-dense": ({"shapes": lora_shapes(30, 8, 576, 576, 192)}, False, None, 0),
    # 5-way head over EfficientNet-Lite0's 1280-d features, class-row tokens: the ≤ 5 ms goal
    "head-5way-1280": ({"shapes": {"weight": [1280], "bias": []}, "row_tokens": True}, True, 5),
}
GOALS_MS = {"smollm2-qv-r8": 100.0, "smollm2-qv-r8-dense": 100.0, "head-5way-1280": 5.0}
HEAD_CODEC = CASES["head-5way-1280"][0]
HEAD_GOAL_MS, HEAD_GOAL_SPEEDUP = 5.0, 5.0  # issue 22: one 5-way head on one core, against today's raw-weight one
# a lighter functional head generator (FunctionalRecipe overrides): its accuracy cost is measured in docs/vision.md
LIGHT_HEAD = {"num_train_timesteps": 5, "denoiser": {"hidden_dim": 64, "num_layers": 1}}
ONE_CORE_CASE, ONE_CORE_GOAL_MS = "smollm2-qv-r8", 30.0  # SmolLM2-shaped adapter, all T DDPM steps, one core


def build(case: str, method: str, device: str):
    codec, per_token, _, *factor = CASES[case]
    config = GeneratorConfig(
        codec=codec,
        denoiser=DenoiserConfig(
            lora_factor_dim=factor[0] if factor else DenoiserConfig.lora_factor_dim,
            type="tokens",
            condition_dim=1280 if per_token else TEXT_DIM,
            hidden_dim=HIDDEN,
            num_layers=LAYERS,
            num_heads=HEADS,
            per_token_condition=per_token,
        ),
    )
    model = McDiGenerator(config) if method == "mcdi" else OnePassHypernetwork(config)
    return model.to(device).eval()


def conditions(case: str, batch: int, device: str) -> torch.Tensor:
    _, per_token, rows, *_ = CASES[case]
    shape = (batch, rows, 1280) if per_token else (batch, TEXT_DIM)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device)


def generate_fn(model, cond, method: str, **kwargs):
    if method == "mcdi":
        return lambda: model.generate_vectors(cond, seed=0, **kwargs)
    return lambda: model.generate(cond)


def num_params(case: str) -> int:
    codec, _, rows, *_ = CASES[case]
    per_unit = sum(int(torch.tensor(s).prod()) if s else 1 for s in codec["shapes"].values())
    return per_unit * (rows or 1)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def probe_memory(case: str, method: str, device: str) -> float:
    """MB added at peak by one (warm) generation: CUDA allocator peak, or the RSS high-water mark on CPU (Linux)."""
    model = build(case, method, device)
    cond = conditions(case, 1, device)
    generate_fn(model, cond, method)()  # warm-up: one-time allocations (kernels, thread pools, caches) excluded
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        generate_fn(model, cond, method)()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # Linux: give freed heap back to the OS, reset the RSS high-water mark (clear_refs 5), then read it after one
    # generation: the peak resident memory that generation added on top of the loaded model.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    generate_fn(model, cond, method)()
    return (_status_kb("VmHWM") - base) / 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_in_subprocess(case: str, method: str, device: str) -> float:
    """Each memory probe runs in a fresh process so that earlier cases cannot hide its peak."""
    out = subprocess.run(
        [sys.executable, __file__, "--probe", case, method, "--device", device, "--layers", str(LAYERS)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def bench_generation(device: str, repeats: int) -> list[dict]:
    rows = []
    for case in CASES:
        row = {"case": case, "params": num_params(case)}
        for method in ("mcdi", "hypernetwork"):
            model = build(case, method, device)
            one, batch = conditions(case, 1, device), conditions(case, 64, device)

            def timed(fn):
                return lambda: (fn(), sync(device))

            row[f"{method}_ms"] = median_ms(timed(generate_fn(model, one, method)), repeats=repeats)
            batch_ms = median_ms(timed(generate_fn(model, batch, method)), repeats=max(3, repeats // 5), warmup=1)
            row[f"{method}_tasks_per_s_batch64"] = 64 / (batch_ms / 1e3)
            row[f"{method}_peak_mb"] = memory_in_subprocess(case, method, device)
            if method == "mcdi":
                row["mcdi_full_chain_ms"] = median_ms(
                    timed(generate_fn(model, one, method, row_space=False)), repeats=repeats
                )
                row["mcdi_ddim5_ms"] = median_ms(
                    timed(generate_fn(model, one, method, sampler="ddim", num_inference_steps=5)), repeats=repeats
                )
                row["generator_params"] = sum(p.numel() for p in model.parameters())
        row["latency_ratio_mcdi_over_hypernetwork"] = row["mcdi_ms"] / row["hypernetwork_ms"]
        if case in GOALS_MS:
            row["goal_ms"] = GOALS_MS[case]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


@contextmanager
def one_core():
    """Pin the process to one core with one intra-op thread (no helper thread either), then restore both."""
    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {min(affinity)})
    torch.set_num_threads(1)
    try:
        yield
    finally:
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)


def bench_one_core(case: str, repeats: int) -> dict:
    """The latency record on one core (affinity and intra-op pool, so no helper thread either): the default chain
    (in the denoiser's input row space where that pays) against the full-width chain of earlier versions, timed in
    alternation so that the VM's slow and fast spells reach both alike (the ratio is the median of the pairs'), plus
    the one-time cost of the row spaces (computed at a loaded generator's first call)."""
    with one_core():
        model, one = build(case, "mcdi", "cpu"), conditions(case, 1, "cpu")
        start = time.perf_counter()
        model.generate_vectors(one, seed=0)
        first_ms = (time.perf_counter() - start) * 1e3
        pairs = [
            (median_ms(generate_fn(model, one, "mcdi"), repeats=1, warmup=0),
             median_ms(generate_fn(model, one, "mcdi", row_space=False), repeats=1, warmup=0))
            for _ in range(repeats)
        ]  # fmt: skip
    row = {"case": case, "first_call_ms": first_ms, "rounds": repeats}
    row["mcdi_ms"] = statistics.median(default for default, _ in pairs)
    row["mcdi_full_chain_ms"] = statistics.median(full for _, full in pairs)
    row["speedup"] = statistics.median(full / default for default, full in pairs)
    row["goal_ms"] = ONE_CORE_GOAL_MS
    print(json.dumps(row), flush=True)
    return row


def head_generators() -> dict[str, HeadGenerator]:
    """The vision benchmark's head generators as it builds them (untrained weights cost the same), for a 5-way head
    over EfficientNet-Lite0's 1280-d features, each with its sampling: the functional one as the benchmark's
    ``mcdi_functional`` row samples it (mean of 8 draws, guidance 2) and as ``mcdi_functional_1_sample`` (one draw),
    the lighter functional trunk of :data:`LIGHT_HEAD` (one draw), and the paper's raw-weight one as the benchmark
    samples it (the baseline, last)."""
    config, width = VisionBenchConfig(), 1280
    light = VisionBenchConfig(functional={**config.functional.to_dict(), **LIGHT_HEAD})
    built = {}
    for name, bench, variant in (("functional", config, "mcdi" + FUNCTIONAL), ("light", light, "mcdi" + FUNCTIONAL),
                                 ("raw_weight", config, "mcdi")):  # fmt: skip
        pipeline = bench.pipeline(variant, width, "engine", seed=0)
        built[name] = McDiGenerator(
            GeneratorConfig(codec=HEAD_CODEC, denoiser=pipeline.denoiser, anchor=pipeline.anchor), pipeline.scheduler
        )
    return {
        "functional, mean of 8, guidance 2": config.head_generator(built["functional"]),
        "functional, one draw": config.head_generator(built["functional"], single_sample=True),
        "functional, light trunk, one draw": config.head_generator(built["light"], single_sample=True),
        "raw-weight (paper), mean of 8, guidance 2": config.head_generator(built["raw_weight"]),
    }


def bench_head_one_core(repeats: int) -> dict:
    """The head-latency record (issue 22) on one core: one 5-way 1-shot head from each of :func:`head_generators`,
    timed in alternation like :func:`bench_one_core`; speed-up is against the raw-weight generator (the last)."""
    generators = head_generators()
    support = torch.randn(5, 1280, generator=torch.Generator().manual_seed(0)), torch.arange(5)
    with one_core():
        rounds = [
            [median_ms(lambda g=g: g.generate_heads(*support), repeats=1, warmup=int(r == 0))
             for g in generators.values()]
            for r in range(repeats)
        ]  # fmt: skip
    rows = []
    for i, (name, generator) in enumerate(generators.items()):
        rows.append({
            "generator": name,
            "steps": generator.generator.scheduler.num_train_timesteps,
            "denoiser": {k: getattr(generator.generator.config.denoiser, k) for k in ("hidden_dim", "num_layers")},
            "ms": statistics.median(r[i] for r in rounds),
            "speedup": statistics.median(r[-1] / r[i] for r in rounds),
        })  # fmt: skip
    record = {"case": "head-5way-1280", "rounds": repeats, "light": LIGHT_HEAD, "goal_ms": HEAD_GOAL_MS,
              "goal_speedup": HEAD_GOAL_SPEEDUP, "generators": rows}  # fmt: skip
    print(json.dumps(record), flush=True)
    return record


# name → (tasks in the zoo, Reptile settings): the vision head setting, and the SmolLM2 LLM benchmark's meta-training
# (40 training tasks, meta-batch 8, 8 draws per task), whose hour on one CPU core is that benchmark's main cost
META_CASES = {
    "head-5way-1280": (64, {"meta_batch_size": 8, "inner_steps": 3, "samples_per_task": 32}),
    "smollm2-qv-r8": (40, {"meta_batch_size": 8, "inner_steps": 3, "samples_per_task": 8}),
}


def bench_meta_training(device: str, steps: int) -> list[dict]:
    """Reptile outer-step time per setting, on random zoo tensors of the setting's size (k = 3 local targets)."""
    rows = []
    for case, (num_tasks, settings) in META_CASES.items():
        model = build(case, "mcdi", device).train()
        _, per_token, class_rows, *_ = CASES[case]
        g = torch.Generator().manual_seed(0)
        targets = torch.randn(num_tasks, 3, num_params(case), generator=g)
        shape = (num_tasks, class_rows, 1280) if per_token else (num_tasks, TEXT_DIM)
        data = ZooTensors([f"t{i}" for i in range(num_tasks)], targets, torch.randn(*shape, generator=g))
        trainer = MetaTrainer(model, data, MetaTrainConfig(**settings))
        trainer.outer_step()
        times = []
        for _ in range(steps):
            sync(device)
            start = time.perf_counter()
            trainer.outer_step()
            sync(device)
            times.append(time.perf_counter() - start)
        median = sorted(times)[len(times) // 2]
        row = {"setting": case, **settings, "outer_step_ms_median": median * 1e3}
        row["tasks_per_s"] = settings["meta_batch_size"] / median
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(record: dict) -> str:
    lines = [
        f"# Engine benchmark ({record['device']}, {record['threads']} threads, torch {record['torch']})",
        "",
        f"Command: `{record['command']}`. Generator: token denoiser, hidden {HIDDEN}, {LAYERS} blocks, T = 20 DDPM "
        "steps; baseline: a one-pass hypernetwork with the same network. Latency is the median for one task, "
        "task encoder excluded; memory is the peak added by one generation (fresh process).",
        "",
        "Mc-Di runs its chain in the row space of the denoiser's token encoders where that is at most half the "
        "weights (`peft_mcdi/generator/sampling.py`: the same distribution); 'full chain' is the full-width chain "
        "every version before it ran.",
        "",
        "| weights | params | Mc-Di ms (20 DDPM) | full chain ms | Mc-Di ms (5 DDIM) | hypernet ms | ratio | goal ms "
        "| Mc-Di tasks/s (64) | hypernet tasks/s (64) | Mc-Di peak MB | hypernet peak MB | generator params |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["generation"]:
        lines.append(
            f"| {r['case']} | {r['params']:,} | {r['mcdi_ms']:.2f} | {r['mcdi_full_chain_ms']:.2f} | "
            f"{r['mcdi_ddim5_ms']:.2f} | "
            f"{r['hypernetwork_ms']:.2f} | {r['latency_ratio_mcdi_over_hypernetwork']:.1f}× | "
            f"{r.get('goal_ms', '')} | "
            f"{r['mcdi_tasks_per_s_batch64']:.0f} | {r['hypernetwork_tasks_per_s_batch64']:.0f} | "
            f"{r['mcdi_peak_mb']:.1f} | {r['hypernetwork_peak_mb']:.1f} | {r['generator_params']:,} |"
        )
    o = record["one_core"]
    lines += [
        "",
        f"One core (affinity and one intra-op thread), {o['case']}, 20 DDPM steps, {o['rounds']} alternating rounds: "
        "the record is the default chain; speed-up is the median of the rounds' ratios.",
        "",
        "| weights | Mc-Di ms | full chain ms | speed-up | goal ms | first call ms (row spaces computed) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {o['case']} | {o['mcdi_ms']:.2f} | {o['mcdi_full_chain_ms']:.2f} | {o['speedup']:.1f}× "
        f"| {o['goal_ms']:.0f} | {o['first_call_ms']:.1f} |",
    ]
    h = record["head_one_core"]
    lines += [
        "",
        f"One core, {h['case']} (5-way 1-shot support set; each generator as `benchmarks/vision.py` builds and "
        f"samples it, all T DDPM steps), {h['rounds']} alternating rounds; speed-up against the raw-weight generator "
        f"is the median of the rounds' ratios; goal ≤ {h['goal_ms']:.0f} ms and ≥ {h['goal_speedup']:.0f}× "
        f"(light trunk: `{json.dumps(h['light'])}`).",
        "",
        "| head generator | T | hidden × blocks | ms | speed-up |",
        "|---|---:|---|---:|---:|",
        *(f"| {g['generator']} | {g['steps']} | {g['denoiser']['hidden_dim']} × {g['denoiser']['num_layers']} "
          f"| {g['ms']:.2f} | {g['speedup']:.1f}× |" for g in h["generators"]),
    ]  # fmt: skip
    lines += [
        "",
        "| meta-training (Reptile) | meta-batch | inner steps | draws/task | ms per outer step | tasks/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in record["meta_training"]:
        lines.append(
            f"| {m['setting']} | {m['meta_batch_size']} | {m['inner_steps']} | {m['samples_per_task']} | "
            f"{m['outer_step_ms_median']:.1f} | {m['tasks_per_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    global LAYERS  # --layers sets the depth every case is built with (build() reads it)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--meta-steps", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS / "engine"))
    parser.add_argument("--layers", type=int, default=LAYERS, help="denoiser blocks (the trunk's depth)")
    parser.add_argument("--probe", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    LAYERS = args.layers
    if args.probe:
        print(probe_memory(*args.probe, args.device))
        return
    record = {
        "command": "python benchmarks/engine.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "generation": bench_generation(args.device, args.repeats),
        "one_core": bench_one_core(ONE_CORE_CASE, args.repeats),
        "head_one_core": bench_head_one_core(args.repeats),
        "meta_training": bench_meta_training(args.device, args.meta_steps),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
