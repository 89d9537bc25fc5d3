import os

import pytest
import torch


# Nothing here may reach the Hub (these machines have none; a lookup there waits ~23 s on retries before failing):
# the Hub-id models come from the offline copies in the Hugging Face cache (scripts/setup.sh). Set before any test
# module imports huggingface_hub, which reads it once; HF_HUB_OFFLINE=0 in the environment overrides it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """No test reads or writes the user's cache; each session gets a fresh one. Session-scoped, so that module- and
    class-scoped fixtures (built before any function-scoped one) see it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MCDI_CACHE", str(tmp_path_factory.getbasetemp() / "mcdi_cache"))
        yield


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A 2-layer, 64-wide random Llama with SmolLM2's tokenizer, saved as any local causal-LM folder is: the
    causal-LM code paths in seconds."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from peft_mcdi.models.offline import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
