"""The MCDI PEFT method on tiny random models: registration, config validation, adapt, save/load, batches."""

import importlib
import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.utils import PeftType
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

import peft_mcdi
from peft_mcdi import McDiConfig, McDiModel


COND = 8


def tiny_llama(seed=0, hidden=32):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_labels=3
    )
    return BertForSequenceClassification(config).eval()


def with_generator(model):
    """``model`` in eval mode with a new generator, perturbed: an untrained one writes the same weights for every
    task (zero-initialised output), so a lost or misplaced tensor would go unnoticed."""
    generator = model.create_generator(condition_dim=COND)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    return model, generator


def make(r=4, **kwargs):
    return with_generator(get_peft_model(tiny_llama(), McDiConfig(r=r, target_modules=["q_proj", "v_proj"], **kwargs)))


def lora_state(model, adapter="default"):
    return {k: v.detach().clone() for k, v in model.base_model.lora_parameters(adapter).items()}


def test_registration_is_idempotent():
    peft_mcdi.register()
    importlib.reload(peft_mcdi)
    peft_mcdi.register()
    assert PeftType("MCDI") is PeftType.MCDI
    assert list(PeftType).count(PeftType.MCDI) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"use_dora": True}, "use_dora"),
        ({"sampler": "euler"}, "sampler"),
        ({"num_segments": 30}, "num_segments"),
        ({"num_sampling_steps": 50}, "num_sampling_steps"),
        ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
    ],
)
def test_config_validates_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        McDiConfig(target_modules=["q_proj"], **kwargs)


def test_get_peft_model_builds_an_mcdi_lora_model():
    model, _ = make()
    assert isinstance(model.base_model, McDiModel)
    assert model.peft_config["default"].peft_type == PeftType.MCDI
    names = list(model.base_model.lora_shapes())
    assert names[0].endswith("layers.0.self_attn.q_proj.lora_A.weight")  # module-major order
    assert names[6].endswith("layers.0.self_attn.v_proj.lora_A.weight")
    bert = get_peft_model(tiny_bert(), McDiConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    assert isinstance(bert.base_model, McDiModel) and len(bert.base_model.lora_shapes()) == 8 + 2  # + classifier


def test_adapt_writes_weights_deterministically():
    model, _ = make()
    before = lora_state(model)
    cond = torch.randn(COND)
    info = model.adapt(embedding=cond, seed=3)
    first = lora_state(model)
    assert info.adapter_names == ["default"] and info.seeds == [3] and info.generator_ms > 0
    assert any(not torch.equal(first[k], before[k]) for k in first)
    model.adapt(embedding=cond, seed=3)
    assert all(torch.equal(lora_state(model)[k], first[k]) for k in first)
    model.adapt(embedding=cond, seed=4)
    assert any(not torch.equal(lora_state(model)[k], first[k]) for k in first)


def test_the_generator_follows_the_model_to_another_device():
    """Generators are not submodules: after model.to(device), adapt() must generate where the adapter now lives
    (on an H100, a model moved to CUDA after create_generator() generated on the CPU before this was handled)."""
    model, generator = make()
    model.to("meta")
    assert next(iter(lora_state(model).values())).device.type == "meta"
    assert model.base_model._generator_for("default") is generator and generator.device.type == "meta"


def test_batched_adapt_equals_one_by_one_and_mixed_batches_work():
    model, _ = make()
    conds = torch.randn(2, COND)
    model.adapt(embedding=conds, adapter_names=["a", "b"], seed=1)
    batched = {name: lora_state(model, name) for name in ("a", "b")}
    for j, name in enumerate(("a", "b")):
        model.adapt(embedding=conds[j], adapter_names=name, seed=1)
        for key, value in lora_state(model, name).items():
            torch.testing.assert_close(value, batched[name][key], atol=1e-5, rtol=1e-5)

    x = torch.randint(0, 64, (3, 6))
    mixed = model(input_ids=x, adapter_names=["a", "b", "a"]).logits
    for row, name in enumerate(["a", "b", "a"]):
        model.set_adapter(name)
        torch.testing.assert_close(mixed[row], model(input_ids=x[row : row + 1]).logits[0], atol=1e-5, rtol=1e-5)


def test_temperature_zero_gives_one_adapter_whatever_the_seed_and_is_recorded():
    model, _ = make()
    condition = torch.randn(COND)

    def lora_after(**kwargs):
        model.adapt(embedding=condition, **kwargs)
        return {k: v.detach().clone() for k, v in model.base_model.lora_parameters("default").items()}

    cold = lora_after(seed=1, temperature=0.0)
    assert model.peft_config["default"].provenance["temperature"] == 0.0
    for name, value in lora_after(seed=2, temperature=0.0).items():
        torch.testing.assert_close(value, cold[name], rtol=0, atol=0)
    warm = lora_after(seed=1)  # the config's temperature, 1
    assert any(not torch.equal(warm[n], cold[n]) for n in cold)


def test_save_load_restores_logits_and_provenance(tmp_path):
    model, generator = make()
    generator.save_pretrained(tmp_path / "gen")
    model.peft_config["default"].generator_name_or_path = str(tmp_path / "gen")
    model.adapt(embedding=torch.randn(COND), seed=5)
    x = torch.randint(0, 64, (2, 7))
    logits = model(input_ids=x).logits
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MCDI"
    assert saved["provenance"]["seed"] == 5 and len(saved["provenance"]["generator_sha256"]) == 64
    assert saved["provenance"]["peft_mcdi_version"] == peft_mcdi.__version__
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "library_name: peft" in card and "- mcdi" in card and "- weight-generation" in card
    assert saved["provenance"]["generator_sha256"] in card and "| seed | 5 |" in card
    assert "import peft_mcdi" in card and "- PEFT " in card  # peft's own card content is kept
    model.save_pretrained(tmp_path / "adapter")  # saving again refreshes the section instead of appending one
    assert (tmp_path / "adapter" / "README.md").read_text().count("## Generated adapter (Mc-Di)") == 1

    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter")
    assert isinstance(loaded.base_model, McDiModel)
    torch.testing.assert_close(loaded(input_ids=x).logits, logits)
    # the referenced generator resolves, so the loaded adapter can be regenerated
    loaded.adapt(embedding=torch.randn(COND), seed=6)
    assert not torch.allclose(loaded(input_ids=x).logits, logits)
    # new adapters created by a batched adapt() load nothing twice: they share the referenced generator
    fresh = PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter")
    fresh.adapt(embedding=torch.randn(2, COND), adapter_names=["a", "b"])
    assert fresh.base_model._generator_for("a") is fresh.base_model._generator_for("b")


def test_merge_and_unload_keeps_logits():
    model, _ = make()
    model.adapt(embedding=torch.randn(COND))
    x = torch.randint(0, 64, (2, 5))
    logits = model(input_ids=x).logits
    merged = model.merge_and_unload()
    assert isinstance(merged, LlamaForCausalLM)
    torch.testing.assert_close(merged(input_ids=x).logits, logits, atol=1e-5, rtol=1e-5)


def test_generated_adapter_can_be_fine_tuned(tmp_path):
    model, _ = make()
    model.adapt(embedding=torch.randn(COND))
    model.save_pretrained(tmp_path)
    trainable = PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    params = [p for n, p in trainable.named_parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in trainable.named_parameters() if p.requires_grad)
    before = [p.detach().clone() for p in params]
    x = torch.randint(0, 64, (2, 6))
    trainable(input_ids=x, labels=x).loss.backward()
    torch.optim.SGD(params, lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params))


def test_generator_that_does_not_fit_is_explained():
    model, _ = make(r=4)
    other, generator = make(r=2)
    with pytest.raises(ValueError, match=r"generator does not fit adapter 'default': .*shape mismatches \(rank"):
        model.base_model.attach_generator(generator)
    short = get_peft_model(tiny_llama(), McDiConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="6 LoRA tensors here vs 12 in the generator"):
        short.base_model.attach_generator(model.base_model._mcdi_generators["default"])
    generator.config.metadata["base_model"] = "org/another-base"
    with pytest.raises(ValueError, match=r"\(it was trained for org/another-base; this model is "):
        model.base_model.attach_generator(generator)


def test_a_generator_that_writes_nan_is_refused_and_nothing_is_written():
    model, generator = make()
    before = lora_state(model)
    with torch.no_grad():  # as a diverged training run leaves them
        for p in generator.denoiser.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"NaN or infinite weights for adapter\(s\) \['default'\]"):
        model.adapt(embedding=torch.randn(COND))
    assert all(torch.equal(before[k], v) for k, v in lora_state(model).items())


def test_adapt_without_generator_or_with_bad_arguments():
    model = get_peft_model(tiny_llama(), McDiConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(ValueError, match="has no generator"):
        model.adapt(embedding=torch.randn(COND))
    with pytest.raises(ValueError, match=r"exactly one of prompts \(task descriptions\) or embedding="):
        model.adapt()
    with pytest.raises(ValueError, match="2 tasks need adapter_names"):
        model.adapt(embedding=torch.randn(2, COND))
    model.create_generator(condition_dim=COND)
    with pytest.raises(ValueError, match="condition_dim=8"):
        model.adapt(embedding=torch.randn(5))


@pytest.mark.parametrize(
    "prompts, match",
    [
        ("", r"the prompt is empty: describe the task"),
        ("   ", r"the prompt is empty"),
        ([], r"the prompt list is empty: pass at least one task description"),
        (["a fish", ""], r"prompt 1 is empty"),
        (["a fish", 3], r"prompt 1 is a int; prompts must be strings"),
        (torch.randn(10, COND), r"prompts must be strings .* use adapt\(embedding=tensor\)"),
    ],
)
def test_adapt_refuses_prompts_that_would_write_a_meaningless_adapter(prompts, match):
    model, _ = make()
    before = lora_state(model)
    with pytest.raises(ValueError, match=match):
        model.adapt(prompts)
    assert all(torch.equal(before[k], v) for k, v in lora_state(model).items())  # nothing was written


@pytest.mark.parametrize(
    "embedding, match",
    [
        (torch.zeros(0, COND), r"non-empty tensor of shape \(C,\) or \(B, C\), got \[0, 8\]"),
        (torch.zeros(1, 2, COND), r"got \[1, 2, 8\]"),
        ([0.0] * COND, r"got list"),
        (torch.full((COND,), float("nan")), r"NaN or infinite"),
    ],
)
def test_adapt_refuses_malformed_embeddings(embedding, match):
    model, _ = make()
    with pytest.raises(ValueError, match=match):
        model.adapt(embedding=embedding)


def test_adapt_from_a_prompt_uses_the_offline_sentence_encoder():
    model = get_peft_model(tiny_llama(), McDiConfig(r=2, target_modules=["q_proj"]))
    model.create_generator()  # 384-d MiniLM conditions
    info = model.adapt("Decide whether the word names a kind of fish.")
    assert info.encoder_ms > 0
    assert model.peft_config["default"].provenance["prompt"].startswith("Decide whether")


VANILLA = """
import sys
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

base = LlamaForCausalLM.from_pretrained(sys.argv[1]).eval()
model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
assert "peft_mcdi" not in sys.modules
expected = load_file(sys.argv[3])
logits = model(input_ids=expected["input_ids"]).logits
torch.testing.assert_close(logits, expected["logits"])
print(model.peft_config["default"].peft_type)
"""


def test_export_lora_loads_in_vanilla_peft_with_identical_logits(tmp_path):
    import subprocess
    import sys

    from safetensors.torch import save_file

    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    model, _ = with_generator(get_peft_model(base, McDiConfig(r=4, target_modules=["q_proj", "v_proj"])))
    model.adapt(embedding=torch.randn(COND))
    x = torch.randint(0, 64, (2, 6))
    save_file({"input_ids": x, "logits": model(input_ids=x).logits.detach()}, tmp_path / "expected.safetensors")
    peft_mcdi.export_lora(model, tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "generator_name_or_path" not in config
    card = (tmp_path / "lora" / "README.md").read_text()
    assert "exported as a plain LoRA adapter" in card and "import peft_mcdi" not in card
    script = tmp_path / "vanilla.py"
    script.write_text(VANILLA)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "base"),
            str(tmp_path / "lora"),
            str(tmp_path / "expected.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LORA" in proc.stdout


def test_export_refuses_unknown_adapters():
    model, _ = make()
    with pytest.raises(ValueError, match="no adapter named 'x'"):
        peft_mcdi.export_lora(model, "/tmp/unused", adapter_name="x")


def test_num_samples_selects_the_candidate_with_the_lowest_loss():
    model, _ = make()
    cond = torch.randn(COND)
    x = torch.randint(0, 64, (4, 6))
    examples = {"input_ids": x, "labels": x}
    losses = {}
    for seed in range(10, 14):  # each candidate alone
        model.adapt(embedding=cond, seed=seed)
        losses[seed] = model(**examples).loss.item()
    info = model.adapt(embedding=cond, seed=10, num_samples=4, examples=examples)
    best = min(losses, key=losses.get)
    assert info.seeds == [best]
    assert model(**examples).loss.item() == pytest.approx(losses[best], rel=1e-5)
    assert model.peft_config["default"].provenance["seed"] == best
    with pytest.raises(ValueError, match="selects on labelled examples"):
        model.adapt(embedding=cond, num_samples=2)


def test_refine_steps_train_only_the_generated_adapter_on_the_examples():
    """adapt(refine_steps=K, examples=...): the examples' loss falls from the generated adapter's, only that adapter
    moves (another adapter and the base stay bit for bit), gradients are off again after, provenance records it."""
    model, _ = make()
    cond = torch.randn(COND)
    x = torch.randint(0, 64, (4, 6))
    examples = {"input_ids": x, "labels": x}
    model.adapt(embedding=cond, adapter_names="other", seed=3)
    model.adapt(embedding=cond, seed=3)
    generated = model(**examples).loss.item()
    other, base = lora_state(model, "other"), {n: p.clone() for n, p in model.get_base_model().named_parameters()
                                                if "lora_" not in n}  # fmt: skip
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.adapt(embedding=cond, seed=3, examples=examples, refine_steps=10, refine_lr=5e-2)
    assert model.active_adapters == ["default"]
    assert model(**examples).loss.item() < generated - 0.01  # 4.118 → 4.089 measured (LoRA on a tiny random model)
    assert all(torch.equal(v, lora_state(model, "other")[k]) for k, v in other.items())
    assert all(torch.equal(p, base[n]) for n, p in model.get_base_model().named_parameters() if n in base)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.peft_config["default"].provenance["refine_steps"] == 10
    with pytest.raises(ValueError, match="refine_steps > 0 trains on labelled examples"):
        model.adapt(embedding=cond, refine_steps=2)
    with pytest.raises(ValueError, match="refine_steps must be an int >= 0"):
        model.adapt(embedding=cond, refine_steps=-1, examples=examples)


def test_sequence_classification_heads_are_generated_with_the_lora():
    model = get_peft_model(tiny_bert(), McDiConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    shapes = model.base_model.lora_shapes()
    assert list(shapes)[-2:] == ["classifier.weight", "classifier.bias"] and shapes["classifier.weight"] == [3, 32]
    generator = model.create_generator(condition_dim=COND)
    assert generator.codec.token_layout().type_parts()["classifier"] == [[3, 32], [3]]
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    head = model.base_model.lora_parameters()["classifier.weight"]
    before = head.detach().clone()
    model.adapt(embedding=torch.randn(COND))
    assert not torch.equal(head, before)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_bases_adapt_and_merge(tmp_path, bits):
    """bitsandbytes on CPU: generated LoRA on 4-bit (nf4) and 8-bit bases. Merging re-quantizes W + BA, so merged
    logits only approximate the adapter's (measured: max |Δ| ≈ 0.3 for nf4, 0.01 for int8 on this tiny model)."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    tiny_llama(hidden=64).save_pretrained(tmp_path)  # nf4 quantizes in blocks of 64
    quant = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        if bits == 4
        else BitsAndBytesConfig(load_in_8bit=True)
    )
    base = LlamaForCausalLM.from_pretrained(tmp_path, quantization_config=quant, device_map="cpu", dtype=torch.float32)
    model = get_peft_model(base, McDiConfig(r=4, target_modules=["q_proj", "v_proj"]))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    generator = model.create_generator(condition_dim=COND)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    x = torch.randint(0, 64, (2, 5))
    plain = model(input_ids=x).logits
    model.adapt(embedding=torch.randn(COND))
    adapted = model(input_ids=x).logits
    assert (adapted - plain).abs().max() > 0.1
    merged = model.merge_and_unload()(input_ids=x).logits
    assert (merged - adapted).norm() < 0.5 * (merged - plain).norm()  # the merge applied the generated adapter
