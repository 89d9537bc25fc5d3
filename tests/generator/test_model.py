"""The generator artefact: determinism, batch invariance, guidance, save/load, corrupt files."""

import pytest
import torch
import yaml

from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.model import WEIGHTS_NAME, GeneratorConfig, McDiGenerator
from peft_mcdi.generator.schedulers import SchedulerConfig
from peft_mcdi.meta.losses import diffusion_loss, draw_loss_noise
from tests.generator.test_codec import lora_shapes


def make_generator(kind: str, prediction_type: str = "epsilon") -> McDiGenerator:
    if kind == "mlp":
        config = GeneratorConfig(
            codec={"shapes": {"weight": [16], "bias": []}},
            denoiser=DenoiserConfig(condition_dim=4, hidden_dim=32, num_layers=2),
        )
    elif kind == "lora":
        config = GeneratorConfig(
            codec={"shapes": lora_shapes()},
            denoiser=DenoiserConfig(type="tokens", condition_dim=4, hidden_dim=32, num_layers=2),
        )
    else:
        config = GeneratorConfig(
            codec={"shapes": {"weight": [6], "bias": []}, "row_tokens": True},
            denoiser=DenoiserConfig(
                type="tokens", condition_dim=4, hidden_dim=32, num_layers=2, per_token_condition=True
            ),
        )
    gen = McDiGenerator(
        config, SchedulerConfig(num_train_timesteps=10, num_segments=2, prediction_type=prediction_type)
    )
    with torch.no_grad():  # an untrained generator predicts 0 everywhere; give it non-trivial weights
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        gen.codec.mean.normal_()
        gen.codec.std.uniform_(0.5, 2.0)
    return gen


def conditions(kind: str, B: int) -> torch.Tensor:
    return torch.randn(B, 3, 4) if kind == "heads" else torch.randn(B, 4)


KINDS = ["mlp", "lora", "heads"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_deterministic_under_a_seed(kind, sampler):
    gen, c = make_generator(kind), conditions(kind, 2)
    a = gen.generate_vectors(c, seed=3, sampler=sampler)
    b = gen.generate_vectors(c, seed=3, sampler=sampler)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = gen.generate_vectors(c, seed=4, sampler=sampler)
    assert not torch.allclose(a, other)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_batched_generation_equals_one_by_one(kind, guidance_scale):
    gen, c = make_generator(kind), conditions(kind, 5)
    batched = gen.generate_vectors(c, seed=7, guidance_scale=guidance_scale)
    alone = torch.cat([gen.generate_vectors(c[j : j + 1], seed=7, guidance_scale=guidance_scale) for j in range(5)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_per_task_seeds_and_decoded_shapes():
    gen = make_generator("lora")
    c = conditions("lora", 3)
    out = gen.generate(c, seed=[1, 2, 1])
    for name, shape in gen.codec.shapes.items():
        assert out[name].shape == (3, *shape)
    name = gen.codec.names[0]
    assert not torch.allclose(out[name][0], out[name][2])  # same seed, other condition: the condition matters
    same = gen.generate(c[[0, 0, 0]], seed=[1, 1, 2])[name]
    torch.testing.assert_close(same[0], same[1])  # same condition, same seed
    assert not torch.allclose(same[0], same[2])  # same condition, other seed


def test_guidance_is_the_cfg_combination():
    """With DDIM and one step, the guided output is exactly x_T mapped with f_null + s·(f_cond − f_null)."""
    gen, c = make_generator("mlp"), conditions("mlp", 1)
    s = gen.scheduler
    x_T = torch.randn(1, 17, generator=torch.Generator().manual_seed(5))
    ts = torch.tensor([10])
    f_c = gen.denoiser(x_T, ts, c)
    f_u = gen.denoiser(x_T, ts, c, torch.tensor([True]))
    f = f_u + 3.0 * (f_c - f_u)
    expected = s.step(f, 10, 0, x_T, sampler="ddim")
    got = gen.generate_vectors(c, seed=5, sampler="ddim", num_inference_steps=1, guidance_scale=3.0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_temperature_scales_the_noise_of_the_chain(sampler):
    """τ = 1 is the plain sampler; τ = 0 runs the chain from x_T = 0 with no ancestral noise, so every seed gives
    the same weights; in between, x_T is τ·(the seed's noise)."""
    gen, c = make_generator("mlp"), conditions("mlp", 2)
    plain = gen.generate_vectors(c, seed=3, sampler=sampler)
    torch.testing.assert_close(gen.generate_vectors(c, seed=3, sampler=sampler, temperature=1.0), plain)
    cold = gen.generate_vectors(c, seed=3, sampler=sampler, temperature=0.0)
    torch.testing.assert_close(gen.generate_vectors(c, seed=4, sampler=sampler, temperature=0.0), cold)
    assert not torch.allclose(cold, plain)
    x_T = 0.5 * torch.randn(1, 17, generator=torch.Generator().manual_seed(5))
    expected = gen.scheduler.step(gen.denoiser(x_T, torch.tensor([10]), c[:1]), 10, 0, x_T, sampler="ddim")
    got = gen.generate_vectors(c[:1], seed=5, sampler="ddim", num_inference_steps=1, temperature=0.5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        gen.generate_vectors(c, temperature=-0.1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_save_load_gives_identical_samples(kind, prediction_type, tmp_path):
    gen, c = make_generator(kind, prediction_type), conditions(kind, 2)
    gen.set_training_conditions(conditions(kind, 6))
    gen.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "scheduler_config.json", WEIGHTS_NAME, "README.md"}
    loaded = McDiGenerator.from_pretrained(tmp_path)
    assert loaded.config == gen.config and loaded.scheduler.config == gen.scheduler.config
    assert loaded.scheduler.config.prediction_type == prediction_type
    torch.testing.assert_close(loaded.generate_vectors(c, seed=1), gen.generate_vectors(c, seed=1), rtol=0, atol=0)
    torch.testing.assert_close(loaded.nearest_training_distance(c), gen.nearest_training_distance(c))


def test_standardized_conditions_are_saved_and_ignore_a_common_offset(tmp_path):
    """'standardize' fits shift/scale to the training conditions: a common offset and scale of every condition
    (train and query alike) leaves generation unchanged, and the statistics travel with the weights."""
    gen = make_generator("lora")
    gen.config.denoiser.condition_normalization = "standardize"
    fresh = McDiGenerator(gen.config, gen.scheduler.config)
    fresh.load_state_dict(gen.state_dict(), strict=False)  # same weights, plus the new statistics buffers
    train, query = torch.randn(6, 4), torch.randn(2, 4)
    fresh.set_training_conditions(train)
    reference = fresh.generate_vectors(query, seed=1)
    fresh.set_training_conditions(3.0 * train + 5.0)
    torch.testing.assert_close(fresh.generate_vectors(3.0 * query + 5.0, seed=1), reference)
    fresh.save_pretrained(tmp_path)
    loaded = McDiGenerator.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.denoiser.condition_scale, fresh.denoiser.condition_scale)
    torch.testing.assert_close(loaded.generate_vectors(3.0 * query + 5.0, seed=1), reference)


def test_truncated_weights_file_is_reported(tmp_path):
    gen = make_generator("mlp")
    gen.save_pretrained(tmp_path)
    path = tmp_path / WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        McDiGenerator.from_pretrained(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        McDiGenerator.from_pretrained(tmp_path)


@pytest.mark.parametrize("where", ["missing-folder", "runs/x/generator", "./gen", "~/no/such/generator"])
def test_a_path_that_does_not_exist_is_not_sent_to_the_hub(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / where) if where == "missing-folder" else where
    with pytest.raises(FileNotFoundError, match=r"does not exist, and it is not a Hub id \(like 'owner/name'\)"):
        McDiGenerator.from_pretrained(path)


def test_a_hub_id_that_cannot_be_found_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no generator folder at 'owner/missing', and the Hub lookup"):
        McDiGenerator.from_pretrained("owner/missing", local_files_only=True, cache_dir=tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file; a generator is a folder"):
        McDiGenerator.from_pretrained(tmp_path / "file")


def test_wrong_condition_width_is_named():
    gen = make_generator("mlp")
    with pytest.raises(ValueError, match="condition_dim=4"):
        gen.generate(torch.randn(1, 5))


def test_nearest_training_distance():
    gen = make_generator("mlp")
    assert torch.isnan(gen.nearest_training_distance(torch.zeros(1, 4))).all()
    gen.set_training_conditions(torch.tensor([[0.0, 0, 0, 0], [3.0, 4, 0, 0]]))
    torch.testing.assert_close(gen.nearest_training_distance(torch.tensor([[3.0, 4, 0, 1]])), torch.tensor([1.0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_variant": "ddpm"}, "loss_variant"),
        ({"condition_dropout": 1.5}, "condition_dropout"),
        ({"codec": {"shapes": {"w": [3]}, "row_tokens": True}}, "per_token_condition"),
        ({"loss_tensor_weights": {"classifier.*": 2.0}}, "matches no tensor"),
        ({"loss_tensor_weights": {"w": 0.0}}, "must be > 0"),
        ({"denoiser": {"condition_normalization": "zscore"}}, "condition_normalization must be one of"),
    ],
)
def test_bad_generator_config_names_the_argument(kwargs, match):
    base = {"codec": {"shapes": {"w": [3]}}}
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(**{**base, **kwargs})


def test_loss_tensor_weights_lay_out_per_coordinate():
    """Flat layout: one weight per coordinate of each tensor, mean 1; rows layout: one row's pattern per class."""
    gen = make_generator("mlp")
    gen.config.loss_tensor_weights = {"bias": 17.0}
    expected = torch.tensor([1.0] * 16 + [17.0])
    torch.testing.assert_close(gen.coordinate_weights(17), expected / expected.mean())
    heads = make_generator("heads")
    heads.config.loss_tensor_weights = {"w*": 0.5, "weight": 3.0}  # the last matching pattern wins
    row = torch.tensor([3.0] * 6 + [1.0])
    torch.testing.assert_close(heads.coordinate_weights(21), row.repeat(3) / row.mean())


def test_loss_tensor_weights_reweight_the_loss():
    """The weighted loss is the weighted mean of the per-coordinate losses of the unweighted one."""
    gen = make_generator("mlp")
    targets, condition = torch.randn(2, 17), torch.randn(4)
    noise = draw_loss_noise(gen.scheduler, 5, 17, torch.Generator().manual_seed(0))

    def denoise(x_t, t, drop):
        return gen.denoiser(x_t, t, condition.expand(5, 4), drop, None)

    per_coordinate = []
    for one_hot in torch.eye(17) * 17:  # a one-hot weight of mean 1 isolates one coordinate's loss
        per_coordinate.append(diffusion_loss(denoise, gen.scheduler, targets, noise, coordinate_weights=one_hot))
    torch.testing.assert_close(gen(targets, condition, noise), torch.stack(per_coordinate).mean())
    gen.config.loss_tensor_weights = {"bias": 17.0}
    weights = gen.coordinate_weights(17)
    torch.testing.assert_close(gen(targets, condition, noise), (weights * torch.stack(per_coordinate)).mean())


def test_card_is_written_from_metadata(tmp_path):
    gen = make_generator("lora")
    gen.config.metadata.update(
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        target_modules=["q_proj", "v_proj"],
        r=2,
        num_train_tasks=48,
        taskset="wordnet",
        latency_ms=12.5,
        licenses={"SmolLM2-135M-Instruct": "apache-2.0", "WordNet 3.0": "WordNet licence"},
    )
    gen.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["tags"] == ["peft", "mcdi", "lora", "weight-generation"]
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "| training tasks | 48 (wordnet) |" in card and "12.50 ms" in card and "WordNet licence" in card
    usage = card.split("```python")[1]
    assert usage.lstrip().startswith("import peft_mcdi")
    # with the task type, the metadata says all AutoMcDiModel needs: the snippet is one call, then the template
    gen.config.metadata.update(task_type="CAUSAL_LM", name="org/generator")
    gen.save_pretrained(tmp_path)
    usage = (tmp_path / "README.md").read_text().split("```python")[1]
    assert 'AutoMcDiModel.from_generator("org/generator")' in usage and "model.input_template.format" in usage


def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    """No network here: the Hub client is replaced at the last step, and what it would upload is checked."""
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, revision=None, commit_message=""):
            from pathlib import Path

            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["card"] = (Path(folder_path) / "README.md").read_text()
            return "https://huggingface.co/user/gen/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = make_generator("mlp").push_to_hub("user/gen", token="t0k", private=True)
    assert url.endswith("/commit/abc") and calls["repo"] == ("user/gen", True, True) and calls["token"] == "t0k"
    assert calls["files"] == ["README.md", "config.json", "model.safetensors", "scheduler_config.json"]
    assert 'generator_name_or_path="user/gen"' in calls["card"]
