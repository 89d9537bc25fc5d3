"""The ``mcdi`` command line, in-process: help, one-line errors, and a tiny train → generate/eval/bench/card trip."""

import json

import pytest
import torch
import yaml
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from peft_mcdi import McDiConfig
from peft_mcdi.cli import main
from peft_mcdi.train import load_config
from tests.tiny_config import TINY_RUN


TINY = TINY_RUN


def cli(capsys, *argv):
    capsys.readouterr()  # drop what the test itself printed
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles, status=1):
    assert code == status
    assert err.strip() and "\n" not in err.strip(), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.mark.parametrize(
    ("command", "needles"),
    [
        ((), ["collect", "train", "generate", "eval", "bench", "card"]),
        (("train",), ["KEY=VALUE", "meta.num_outer_steps", "recorder.lr", "log_with", "--print-config"]),
        (("collect",), ["zoo", "taskset_kwargs"]),
        (("generate",), ["--generator", "--out", "--base-model", "--export-lora", "--condition", "prompt"]),
        (("eval",), ["--generator", "held-out", "--out"]),
        (("bench",), ["--generator", "--engine", "--batch-sizes"]),
        (("card",), ["--generator", "--results", "README.md"]),
    ],
)
def test_help_is_complete(capsys, command, needles):
    code, out, _ = cli(capsys, *command, "--help")
    assert code == 0
    for needle in needles:
        assert needle in out


def test_user_mistakes_are_one_line(capsys, tmp_path, tiny_yaml):
    code, _, err = cli(capsys, "train", "--config", tmp_path / "missing.yaml")
    assert_one_line_error(code, err, "missing.yaml", "does not exist")

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "meta": {"num_outer_step": 3}}))
    code, _, err = cli(capsys, "train", "--config", bad)
    assert_one_line_error(code, err, "'meta.num_outer_step'", "bad.yaml", "num_outer_steps")

    code, _, err = cli(capsys, "train", "--config", tiny_yaml, "output_dri=x")
    assert_one_line_error(code, err, "'output_dri'", "output_dir")

    code, _, err = cli(capsys, "train", "--config", tiny_yaml, "meta.num_outer_steps=many")
    assert_one_line_error(code, err, "meta.num_outer_steps", "integer")

    code, _, err = cli(capsys, "train", "--config", tiny_yaml, "taskset_kwargs.num_tasks=3", f"zoo_dir={tmp_path}/z")
    assert_one_line_error(code, err, "'num_tasks'", "num_train_tasks")

    broken = tmp_path / "broken.yaml"
    broken.write_text("meta: [unclosed\n")
    code, _, err = cli(capsys, "collect", "--config", broken)
    assert_one_line_error(code, err, "not valid YAML")

    code, _, err = cli(capsys, "generate", "--generator", tmp_path / "nope", "a task", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "nope' does not exist, and it is not a Hub id")

    code, _, err = cli(capsys, "generate", "--generator", "runs/x/generator", "a task", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "'runs/x/generator' does not exist, and it is not a Hub id")

    code, _, err = cli(capsys, "card", "--generator", tmp_path / "nope")
    assert_one_line_error(code, err, "no generator folder")

    code, _, err = cli(capsys, "generate", "a task")  # --generator and --out missing: a malformed command line
    assert_one_line_error(code, err, "--generator", status=2)

    code, _, err = cli(capsys, "frobnicate")
    assert_one_line_error(code, err, "frobnicate", status=2)


def test_print_config_is_a_dry_run_that_reloads(capsys, tmp_path, tiny_yaml):
    code, out, _ = cli(capsys, "train", "--config", tiny_yaml, "meta.outer_lr=1e-3", "--print-config")
    assert code == 0
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(out)
    config, args = load_config(resolved)
    assert config.meta.outer_lr == 1e-3 and config.meta.num_outer_steps == 4  # "1e-3" is a float for a float field
    assert config.recorder.lr == 0.1  # omitted keys keep PipelineConfig's defaults, not RecorderConfig's
    assert args.progress is False and not (tmp_path / "runs").exists()


def test_train_then_generate_eval_bench_card(capsys, tmp_path, tiny_yaml):
    out, zoo = tmp_path / "run", tmp_path / "zoo"
    code, stdout, err = cli(
        capsys, "train", "--config", tiny_yaml, f"output_dir={out}", f"zoo_dir={zoo}", "log_with=tensorboard"
    )
    assert code == 0, err
    assert "held-out loss" in stdout and "11 collected now" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["history"][-1]["step"] == 4 and results["num_processes"] == 1
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # the TensorBoard tracker wrote events
    assert (out / "train_config.yaml").is_file()
    generator = out / "generator"
    assert "held-out loss (generated)" in (generator / "README.md").read_text()

    # a rerun of the finished run recollects nothing and resumes at the last step
    code, stdout, _ = cli(capsys, "train", "--config", tiny_yaml, f"output_dir={out}", f"zoo_dir={zoo}")
    assert code == 0 and "0 collected now" in stdout and "resuming from the checkpoint at step 4" in stdout

    # the logistic generator has no base model: generate writes the tensors for a given condition
    gen_out = tmp_path / "gen"
    code, stdout, err = cli(
        capsys, "generate", "--generator", generator, "--condition", "0.1,-0.2,0.3,0.5", "--out", gen_out
    )
    assert code == 0, err
    tensors = load_file(gen_out / "generated.safetensors")
    assert tensors["weight"].shape == (16,) and tensors["bias"].shape == ()
    assert json.loads((gen_out / "generation.json").read_text())["condition"] == pytest.approx([0.1, -0.2, 0.3, 0.5])
    cold = [tmp_path / f"cold{seed}" for seed in (1, 2)]  # temperature 0: the seed no longer matters
    for seed, folder in zip((1, 2), cold):
        code, _, err = cli(
            capsys, "generate", "--generator", generator, "--condition", "0.1,-0.2,0.3,0.5", "--out", folder,
            "--temperature", "0", "--seed", str(seed),
        )  # fmt: skip
        assert code == 0, err
    assert load_file(cold[0] / "generated.safetensors")["weight"].equal(
        load_file(cold[1] / "generated.safetensors")["weight"]
    )
    assert json.loads((cold[0] / "generation.json").read_text())["temperature"] == 0.0
    code, _, err = cli(capsys, "generate", "--generator", generator, "--condition", "1,2", "--out", gen_out)
    assert_one_line_error(code, err, "width 4")
    code, _, err = cli(
        capsys, "generate", "--generator", generator, "--condition", "1,2,3,4", "--out", gen_out, "--export-lora"
    )
    assert_one_line_error(code, err, "--export-lora")

    code, stdout, err = cli(
        capsys, "eval", "--generator", generator, "--config", tiny_yaml, f"zoo_dir={zoo}", "--out", tmp_path / "e.json"
    )
    assert code == 0, err
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["heldout_metric"]["generated"] == pytest.approx(results["heldout_metric"]["generated"])
    # evaluating on another task layout says what differs
    code, _, err = cli(
        capsys, "eval", "--generator", generator, "--config", tiny_yaml, f"zoo_dir={tmp_path / 'zoo8'}",
        "taskset_kwargs.dim=8",
    )  # fmt: skip
    assert_one_line_error(code, err, "the generator writes tensors")

    code, stdout, err = cli(
        capsys, "bench", "--generator", generator, "--batch-sizes", 1, 4, "--repeats", 2, "--out", tmp_path / "b.json"
    )
    assert code == 0, err
    assert [r["batch_size"] for r in json.loads((tmp_path / "b.json").read_text())["rows"]] == [1, 4]

    (generator / "README.md").unlink()
    code, stdout, _ = cli(capsys, "card", "--generator", generator)
    assert code == 0 and "results.json" in stdout
    card = (generator / "README.md").read_text()
    assert "held-out loss (generated)" in card and "training tasks | 8 (logistic)" in card

    code, stdout, _ = cli(capsys, "collect", "--config", tiny_yaml, f"zoo_dir={tmp_path / 'zoo2'}")
    assert code == 0 and (tmp_path / "zoo2" / "manifest.jsonl").read_text().count("\n") == 11


def tiny_llama(path, hidden=32):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_generate_a_lora_adapter_for_a_prompt(capsys, tmp_path):
    base = tiny_llama(tmp_path / "base")
    model = get_peft_model(
        LlamaForCausalLM.from_pretrained(base), McDiConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    generator = model.create_generator(condition_dim=384)
    with torch.no_grad():  # an untrained generator; perturb it so the weights depend on the prompt
        for p in generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    generator.config.metadata["base_model"] = str(base)
    generator.save_pretrained(tmp_path / "generator")

    out = tmp_path / "adapter"
    prompt = "Decide whether the word names a kind of fish."
    code, stdout, err = cli(capsys, "generate", "--generator", tmp_path / "generator", prompt, "--out", out)
    assert code == 0, err
    assert "MCDI adapter" in stdout
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MCDI" and saved["provenance"]["prompt"] == prompt
    loaded = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), out)
    lora = loaded.base_model.lora_parameters()
    assert any(name.endswith("lora_B.weight") and p.abs().sum() > 0 for name, p in lora.items())

    code, _, err = cli(
        capsys, "generate", "--generator", tmp_path / "generator", prompt, "--out", tmp_path / "lora", "--export-lora"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["peft_type"] == "LORA"

    # the wrong base model for this generator: one line that says what differs
    other = tiny_llama(tmp_path / "other", hidden=48)
    code, _, err = cli(
        capsys,
        "generate",
        "--generator",
        tmp_path / "generator",
        prompt,
        "--out",
        tmp_path / "x",
        "--base-model",
        other,
    )
    assert_one_line_error(code, err, "does not fit")

    # a base model without the generator's target modules: what it has, not peft's "no modules were targeted"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "gpt2")
    generate = ("generate", "--generator", tmp_path / "generator", "--out", tmp_path / "x")
    code, _, err = cli(capsys, *generate, prompt, "--base-model", tmp_path / "gpt2")
    assert_one_line_error(code, err, "writes LoRA for ['q_proj', 'v_proj']", "has no module named", "c_attn")
    code, _, err = cli(capsys, *generate, prompt, "--base-model", tmp_path / "no-such-base")
    assert_one_line_error(code, err, "--base-model", "no-such-base' does not exist, and it is not a Hub id")
    code, _, err = cli(capsys, *generate, "  ")
    assert_one_line_error(code, err, "the task prompt is empty")
    assert not (tmp_path / "x").exists()  # no failed call wrote anything
