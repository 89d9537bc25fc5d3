"""The PEFT method end to end on an accelerator, beside the same run on the CPU (the tests have no GPU).

A tiny random Llama gets an MCDI adapter and a (perturbed) untrained generator on the CPU, then the model is moved
to the device, as users do. Checked there: ``adapt()`` generates on the device (the generator follows the model),
one task and a batch of tasks, peft's mixed-adapter forward, save; a seed reproduces its adapter on the device and
different seeds differ. Reported beside the CPU run: the adapter and logit differences (nonzero by design: CPU and
CUDA draw different noise streams for one seed) and the noise device seen by the sampler. Both denoiser outputs
(ε- and x̂₀-prediction) run, and so does temperature 0, which draws no noise: its adapter must match the CPU's to
float precision, the one way to get the same adapter on both devices.

    python benchmarks/studies/cuda_check.py --out benchmarks/results/cuda_check.json    # on a GPU machine
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import peft_mcdi.generator.sampling as sampling  # noqa: E402
from peft_mcdi import McDiConfig  # noqa: E402
from peft_mcdi.generator.model import McDiGenerator  # noqa: E402


PREDICTION_TYPES = ("epsilon", "sample")


def build(prediction_type: str):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = get_peft_model(LlamaForCausalLM(config).eval(), McDiConfig(r=4, target_modules=["q_proj", "v_proj"]))
    generator = model.create_generator(condition_dim=8)
    with torch.no_grad():  # an untrained generator writes nearly the same weights for every task; perturb it
        g = torch.Generator().manual_seed(1)
        for p in generator.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    scheduler = dataclasses.replace(generator.scheduler.config, prediction_type=prediction_type)
    same_weights = McDiGenerator(generator.config, scheduler)
    same_weights.load_state_dict(generator.state_dict())
    model.attach_generator(same_weights)
    return model.eval()


def lora(model, adapter: str = "default") -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in model.base_model.lora_parameters(adapter).items()}


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def run(device: str, prediction_type: str) -> dict:
    noise_devices = []
    draw = sampling._task_generators
    sampling._task_generators = lambda seeds, dev: (noise_devices.append(str(dev)), draw(seeds, dev))[1]
    try:
        model = build(prediction_type).to(device)  # moved after the generator was attached
        cond = torch.randn(8, generator=torch.Generator().manual_seed(2)).to(device)
        x = torch.randint(0, 64, (3, 6), generator=torch.Generator().manual_seed(4)).to(device)
        info = model.adapt(embedding=cond, seed=3)
        seed3 = lora(model)
        logits = model(input_ids=x).logits.detach().float().cpu()
        model.adapt(embedding=cond, seed=3)
        again = lora(model)
        model.adapt(embedding=cond, seed=4)
        seed4 = lora(model)
        model.adapt(embedding=cond, seed=3, temperature=0.0)
        cold = lora(model)
        model.adapt(embedding=torch.stack([cond, -cond]), adapter_names=["a", "b"], seed=3)
        mixed = model(input_ids=x, adapter_names=["a", "b", "a"]).logits
        model.save_pretrained(f"/tmp/cuda_check-{prediction_type}-{device.replace(':', '_')}")
    finally:
        sampling._task_generators = draw
    return {
        "noise_devices": sorted(set(noise_devices)),
        "generator_ms_first_call": info.generator_ms,
        "same_seed_max_diff": max_diff(seed3, again),
        "seed3_vs_seed4_max_diff": max_diff(seed3, seed4),
        "mixed_batch_finite": bool(torch.isfinite(mixed).all()),
        "_lora": seed3,
        "_cold": cold,
        "_logits": logits.detach(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "cuda_check.json")
    args = parser.parse_args()
    record = {
        "command": "python benchmarks/studies/cuda_check.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
    }
    wanted = torch.device(args.device).type
    for prediction_type in PREDICTION_TYPES:
        cpu, dev = run("cpu", prediction_type), run(args.device, prediction_type)
        record[prediction_type] = {
            **{
                name: {k: v for k, v in r.items() if not k.startswith("_")}
                for name, r in (("cpu", cpu), (args.device, dev))
            },
            "adapter_max_diff_cpu_vs_device": max_diff(cpu["_lora"], dev["_lora"]),
            "temperature_0_adapter_max_diff_cpu_vs_device": max_diff(cpu["_cold"], dev["_cold"]),
            "logit_max_diff_cpu_vs_device": float((cpu["_logits"] - dev["_logits"]).abs().max()),
            "generates_on_device": all(torch.device(d).type == wanted for d in dev["noise_devices"]),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
