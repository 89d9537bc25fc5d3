"""The README's Python blocks run as written (placeholders bound to tiny stand-ins, sizes scaled down)."""

import re
from pathlib import Path

import pytest
import torch


README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(section: str) -> str:
    text = README.read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, re.S)
    assert len(blocks) == 1, f"expected one python block under '## {section}'"
    return blocks[0]


def scaled(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, f"the README no longer contains {old!r}: update this test"
        code = code.replace(old, new)
    return code


def test_opening_block_adapts_minilm_with_the_shipped_generator(capsys):
    opening = README.read_text(encoding="utf-8").split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", opening, re.S)
    exec(code, {})
    assert re.fullmatch(r"tensor\(\[[01], [01]\]\)", capsys.readouterr().out.strip().splitlines()[-1])


def test_peft_method_block(tmp_path, monkeypatch):
    from peft import get_peft_model

    import peft_mcdi
    from tests.tuners.test_mcdi import tiny_llama

    monkeypatch.chdir(tmp_path)
    # "path/or/hub-id": an (untrained, slightly perturbed) generator that fits the README's adapter, saved there
    template = get_peft_model(tiny_llama(), peft_mcdi.McDiConfig(r=8, target_modules=["q_proj", "v_proj"]))
    generator = template.create_generator(condition_dim=384)  # the MiniLM task encoder's width
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    generator.save_pretrained("path/or/hub-id")
    namespace = {"base_llm": tiny_llama(), "batch": {"input_ids": torch.randint(0, 64, (3, 5))}}
    exec(python_block("As a PEFT method"), namespace)
    assert (tmp_path / "out" / "README.md").is_file() and (tmp_path / "lora_out" / "adapter_config.json").is_file()
    assert set(namespace["model"].peft_config) == {"default", "a", "b"}


@pytest.mark.timeout(300)
def test_using_the_engine_block(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = scaled(
        python_block("Using the engine"),
        {
            "num_train_tasks=400, num_test_tasks=100": "num_train_tasks=12, num_test_tasks=3",
            "RecorderConfig(num_epochs=10)": "RecorderConfig(num_epochs=3)",
            "num_outer_steps=2000": "num_outer_steps=3",
        },
    )
    namespace = {}
    exec(code, namespace)
    assert namespace["weights"]["weight"].shape == (3, 16) and namespace["weights"]["bias"].shape == (3,)
    assert (tmp_path / "my-generator" / "config.json").is_file()
