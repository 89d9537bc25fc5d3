"""AutoMcDiModel: from a generator's metadata to a ready PeftModel, and clear refusals when the metadata cannot."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import LlamaForCausalLM

from peft_mcdi import AutoMcDiModel, McDiConfig, McDiGenerator
from tests.generator.test_model import make_generator


@pytest.fixture(scope="module")
def generator_dir(tiny_llama_dir, tmp_path_factory) -> str:
    """A generator for r = 2 LoRA on q/v of the tiny Llama, with the metadata a trained one records."""
    config = McDiConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_llama_dir), config)
    generator = model.base_model.create_generator(condition_dim=384)
    with torch.no_grad():  # an untrained generator writes B = 0; perturb it so that adapt() writes something
        for p in generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    generator.config.metadata.update(lora_alpha=4, input_template="Word: {input}\nAnswer:")
    folder = tmp_path_factory.mktemp("auto") / "generator"
    generator.save_pretrained(folder)
    return str(folder)


def test_from_generator_builds_the_model_its_metadata_describes(generator_dir, tiny_llama_dir):
    model = AutoMcDiModel.from_generator(generator_dir, seed=3)
    assert isinstance(model, PeftModel)
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, sorted(config.target_modules)) == (2, 4, ["q_proj", "v_proj"])
    assert str(config.task_type) == "CAUSAL_LM" and config.seed == 3  # McDiConfig keywords pass through
    assert config.generator_name_or_path == generator_dir and config.base_model_name_or_path == tiny_llama_dir
    assert model.input_template == "Word: {input}\nAnswer:"
    assert model.tokenizer(model.input_template.format(input="salmon"))["input_ids"]

    condition = torch.randn(384)
    model.adapt(embedding=condition)
    expected = McDiGenerator.from_pretrained(generator_dir).generate(condition[None], seed=3)
    written = model.base_model.lora_parameters()
    assert written.keys() == expected.keys()
    assert all(torch.allclose(written[k], v[0]) for k, v in expected.items())  # the attached copy, seed 3


def test_metadata_without_a_template_means_the_input_alone(generator_dir, tmp_path):
    generator = McDiGenerator.from_pretrained(generator_dir)
    del generator.config.metadata["input_template"]
    generator.save_pretrained(tmp_path)
    assert AutoMcDiModel.from_generator(tmp_path).input_template == "{input}"


def test_what_the_metadata_lacks_is_named(generator_dir, tmp_path):
    generator = McDiGenerator.from_pretrained(generator_dir)
    for key in ("target_modules", "base_model"):
        del generator.config.metadata[key]
    generator.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"lacks \['target_modules', 'base_model'\].*base_model_name_or_path="):
        AutoMcDiModel.from_generator(tmp_path)


def test_a_head_generator_is_sent_to_the_head_model(tmp_path):
    make_generator("head").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="classifier heads.*McDiHeadModel"):
        AutoMcDiModel.from_generator(tmp_path)


def test_another_base_is_checked_against_the_generator(generator_dir, tmp_path):
    torch.manual_seed(0)
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match=r"writes LoRA for \['q_proj', 'v_proj'\].*has no module named"):
        AutoMcDiModel.from_generator(generator_dir, base_model_name_or_path=str(tmp_path / "gpt2"))


def test_it_is_not_instantiated():
    with pytest.raises(OSError, match="from_generator"):
        AutoMcDiModel()
