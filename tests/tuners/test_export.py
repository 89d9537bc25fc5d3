"""``export_lora`` writes what peft's own ``save_pretrained`` writes for the same LoRA adapter, so that every
``AutoPeftModelFor…`` class that fits the base loads it (with or without ``task_type``) and gives the in-memory
model's outputs; the MCDI adapter saved by ``save_pretrained`` loads the same way once ``peft_mcdi`` is imported."""

import json
import subprocess
import sys

import pytest
import torch
from peft import (
    AutoPeftModel,
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForQuestionAnswering,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
    LoraConfig,
    get_peft_model,
)
from safetensors.torch import save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

import peft_mcdi
from peft_mcdi import McDiConfig
from tests.tuners.test_mcdi import COND, with_generator


TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}
# (base, task_type, the transformers class the adapter is made on, the AutoPeftModel class that loads it back).
# task_type None: AutoPeftModel finds the base class in the config's auto_mapping. Not listed: Seq2Seq (neither base
# is an encoder-decoder), BERT as a causal LM, and Llama for question answering (its backbone is named `transformer`,
# so a LlamaForCausalLM checkpoint does not load into it and every load draws a new random backbone).
CASES = [
    ("bert", None, AutoModel, AutoPeftModel),
    ("bert", None, AutoModelForSequenceClassification, AutoPeftModel),
    ("bert", "SEQ_CLS", AutoModelForSequenceClassification, AutoPeftModelForSequenceClassification),
    ("bert", "TOKEN_CLS", AutoModelForTokenClassification, AutoPeftModelForTokenClassification),
    ("bert", "QUESTION_ANS", AutoModelForQuestionAnswering, AutoPeftModelForQuestionAnswering),
    ("bert", "FEATURE_EXTRACTION", AutoModel, AutoPeftModelForFeatureExtraction),
    ("llama", None, AutoModelForCausalLM, AutoPeftModel),
    ("llama", None, AutoModel, AutoPeftModel),
    ("llama", "CAUSAL_LM", AutoModelForCausalLM, AutoPeftModelForCausalLM),
    ("llama", "SEQ_CLS", AutoModelForSequenceClassification, AutoPeftModelForSequenceClassification),
    ("llama", "TOKEN_CLS", AutoModelForTokenClassification, AutoPeftModelForTokenClassification),
    ("llama", "FEATURE_EXTRACTION", AutoModel, AutoPeftModelForFeatureExtraction),
]
IDS = [f"{base}-{task or 'no_task_type'}-{cls.__name__}" for base, task, cls, _ in CASES]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Tiny random bases saved as folders (what a Hub id resolves to): a BERT-style encoder with a 2-way head and a
    Llama causal LM (pad token set, for its sequence-classification head)."""
    folder = tmp_path_factory.mktemp("bases")
    torch.manual_seed(0)
    bert = BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    BertForSequenceClassification(bert).save_pretrained(folder / "bert")
    llama = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)  # fmt: skip
    LlamaForCausalLM(llama).save_pretrained(folder / "llama")
    return {name: str(folder / name) for name in ("bert", "llama")}


def generated(path, base, task_type, model_class):
    """An MCDI adapter whose LoRA (and head, where the task type has one) was written by a perturbed untrained
    generator: non-zero everywhere, so a lost tensor changes the outputs."""
    torch.manual_seed(1)
    config = McDiConfig(r=2, target_modules=TARGETS[base], task_type=task_type, sampler="ddim", num_sampling_steps=2)
    model, _ = with_generator(get_peft_model(model_class.from_pretrained(path), config))
    model.adapt(embedding=torch.randn(COND))
    return model


def outputs(output) -> torch.Tensor:
    if getattr(output, "start_logits", None) is not None:
        return torch.stack([output.start_logits, output.end_logits])
    return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


@pytest.mark.parametrize(("base", "task_type", "model_class", "auto_class"), CASES, ids=IDS)
def test_the_export_and_the_mcdi_adapter_load_with_the_fitting_auto_class(
    bases, tmp_path, base, task_type, model_class, auto_class
):
    model = generated(bases[base], base, task_type, model_class)
    x = torch.randint(1, 64, (2, 5))
    expected = outputs(model(input_ids=x))
    peft_mcdi.export_lora(model, tmp_path / "lora")
    model.save_pretrained(tmp_path / "mcdi")
    for folder, peft_type in (("lora", "LORA"), ("mcdi", "MCDI")):
        loaded = auto_class.from_pretrained(tmp_path / folder).eval()
        assert loaded.peft_config["default"].peft_type == peft_type
        torch.testing.assert_close(outputs(loaded(input_ids=x)), expected, msg=f"{folder} via {auto_class.__name__}")


def adapter_config(folder) -> dict:
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = sorted(config["target_modules"])  # written from a set: any order
    return config


@pytest.mark.parametrize(("base", "task_type", "model_class", "auto_class"), CASES, ids=IDS)
def test_the_exported_config_is_what_peft_writes_for_the_same_lora(
    bases, tmp_path, base, task_type, model_class, auto_class
):
    model = generated(bases[base], base, task_type, model_class)
    peft_mcdi.export_lora(model, tmp_path / "export")
    plain = get_peft_model(model_class.from_pretrained(bases[base]), LoraConfig(r=2, target_modules=TARGETS[base],
                                                                                task_type=task_type))  # fmt: skip
    plain.save_pretrained(tmp_path / "peft")
    exported, written = adapter_config(tmp_path / "export"), adapter_config(tmp_path / "peft")
    assert exported == written, {k: (exported.get(k), written.get(k)) for k in exported.keys() | written.keys()}
    assert exported["base_model_name_or_path"] == bases[base] and exported["inference_mode"] is True
    assert (exported["auto_mapping"] is not None) == (task_type is None)


def test_a_base_model_named_in_the_config_is_kept_and_the_card_names_it(bases, tmp_path):
    model = generated(bases["llama"], "llama", None, AutoModelForCausalLM)
    model.peft_config["default"].base_model_name_or_path = "owner/base"
    model.peft_config["default"].revision = "v1"
    peft_mcdi.export_lora(model, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("owner/base", "v1")
    assert config["auto_mapping"] == {
        "base_model_class": "LlamaForCausalLM",
        "parent_library": "transformers.models.llama.modeling_llama",
    }
    assert "base_model: owner/base" in (tmp_path / "export" / "README.md").read_text()


VANILLA = """
import sys

import torch
from peft import AutoPeftModel, AutoPeftModelForCausalLM
from safetensors.torch import load_file

expected = load_file(sys.argv[1])
for name, cls in (("no_task_type", AutoPeftModel), ("causal_lm", AutoPeftModelForCausalLM)):
    model = cls.from_pretrained(sys.argv[2] + "/" + name).eval()
    torch.testing.assert_close(model(input_ids=expected["input_ids"]).logits, expected[name])
    print(type(model).__name__, model.peft_config["default"].peft_type.value)
assert "peft_mcdi" not in sys.modules
"""


def test_exports_load_with_auto_classes_in_peft_alone(bases, tmp_path):
    """In a fresh interpreter that never imports peft_mcdi: the export without task_type through its auto_mapping
    (the case that failed with "Cannot infer the auto class from the config"), and a causal-LM export."""
    expected = {"input_ids": torch.randint(1, 64, (2, 5))}
    for name, task_type in (("no_task_type", None), ("causal_lm", "CAUSAL_LM")):
        model = generated(bases["llama"], "llama", task_type, AutoModelForCausalLM)
        peft_mcdi.export_lora(model, tmp_path / name)
        expected[name] = model(input_ids=expected["input_ids"]).logits.detach()
    save_file(expected, tmp_path / "expected.safetensors")
    script = tmp_path / "vanilla.py"
    script.write_text(VANILLA)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "expected.safetensors"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["PeftModel", "LORA", "PeftModelForCausalLM", "LORA"]
