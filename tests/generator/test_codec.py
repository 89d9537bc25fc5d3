import pytest
import torch

from peft_mcdi.generator.codec import TokenLayout, WeightCodec, lora_block_of


def lora_shapes(num_layers=3, r=2, d=5, modules=("q_proj", "v_proj")):
    return {
        f"model.layers.{i}.self_attn.{m}.lora_{ab}.weight": ([r, d] if ab == "A" else [d, r])
        for i in range(num_layers)
        for m in modules
        for ab in "AB"
    }


def random_params(shapes, lead=(), rows=None):
    extra = (rows,) if rows is not None else ()
    return {n: torch.randn(*lead, *extra, *s) * 3 + 1 for n, s in shapes.items()}


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_flat_round_trip(lead):
    shapes = lora_shapes()
    codec = WeightCodec(shapes).fit(random_params(shapes, (7,)))
    params = random_params(shapes, lead)
    vec = codec.encode(params)
    assert vec.shape == (*lead, codec.dim())
    out = codec.decode(vec)
    assert list(out) == list(shapes)  # recorded order
    for name in shapes:
        torch.testing.assert_close(out[name], params[name])  # exact up to float32 rounding


@pytest.mark.parametrize("num_rows", [2, 5, 20])
def test_rows_round_trip_any_number_of_classes(num_rows):
    codec = WeightCodec({"weight": [8], "bias": []}, row_tokens=True)
    codec.fit(random_params(codec.shapes, (6,), rows=5))
    params = random_params(codec.shapes, (3,), rows=num_rows)
    vec = codec.encode(params)
    assert vec.shape == (3, num_rows * 9)
    # row j of every tensor is token j: permuting classes permutes tokens
    perm = torch.randperm(num_rows)
    permuted = codec.encode({n: v[:, perm] for n, v in params.items()})
    torch.testing.assert_close(permuted.view(3, num_rows, 9), vec.view(3, num_rows, 9)[:, perm])
    out = codec.decode(vec)
    for name in params:
        torch.testing.assert_close(out[name], params[name])


def test_normalisation_uses_zoo_statistics():
    codec = WeightCodec({"a": [100], "b": [3]})
    zoo = {"a": torch.randn(50, 100) * 4 + 2, "b": torch.zeros(50, 3)}  # b constant over the zoo → std 1
    codec.fit(zoo)
    vec = codec.encode(zoo)
    assert abs(vec[:, :100].mean().item()) < 1e-4 and abs(vec[:, :100].std().item() - 1) < 1e-2
    assert (codec.std[100:] == 1.0).all()
    assert torch.unique(codec.mean[:100]).numel() == 1  # one scalar per tensor


def test_element_normalisation_removes_what_all_tasks_share():
    shared = torch.randn(40)  # like LoRA A: the same in every task, plus small task-specific moves
    zoo = {"a": shared + 0.01 * torch.randn(30, 40), "b": torch.randn(30, 3)}
    codec = WeightCodec({"a": [40], "b": [3]}, normalization="element").fit(zoo)
    torch.testing.assert_close(codec.mean[:40], zoo["a"].mean(0), atol=1e-6, rtol=0)
    vec = codec.encode(zoo)
    torch.testing.assert_close(vec.std(0, unbiased=False), torch.ones(43), atol=1e-4, rtol=0)
    assert abs(vec[:, :40]).mean() < 1.5  # task variation on a unit scale, not the shared matrix
    for name, value in codec.decode(vec).items():
        torch.testing.assert_close(value, zoo[name])
    rows = WeightCodec({"w": [4], "b": []}, row_tokens=True, normalization="element")
    rows.fit({"w": torch.randn(6, 5, 4) * torch.tensor([1.0, 2, 3, 4]), "b": torch.randn(6, 5)})
    assert rows.std.shape == (5,) and rows.std[3] > rows.std[0]  # per feature column, shared by every class row
    assert WeightCodec.from_config(rows.config()).config() == rows.config()
    with pytest.raises(ValueError, match="normalization"):
        WeightCodec({"w": [2]}, normalization="layer")


def test_statistics_travel_in_the_state_dict():
    shapes = lora_shapes()
    codec = WeightCodec(shapes).fit(random_params(shapes, (7,)))
    other = WeightCodec(shapes)
    other.load_state_dict(codec.state_dict())
    params = random_params(shapes)
    torch.testing.assert_close(other.encode(params), codec.encode(params))


def test_mismatched_keys_are_named():
    codec = WeightCodec({"weight": [4], "bias": []})
    with pytest.raises(ValueError, match=r"missing keys \['bias'\], unexpected keys \['b'\]"):
        codec.encode({"weight": torch.zeros(4), "b": torch.zeros(())})


def test_mismatched_shapes_are_named():
    codec = WeightCodec({"weight": [4], "bias": []})
    with pytest.raises(ValueError, match=r"params\['weight'\] has shape \(5,\), expected \(\.\.\., 4\)"):
        codec.encode({"weight": torch.zeros(5), "bias": torch.zeros(())})
    with pytest.raises(ValueError, match="entries"):
        codec.decode(torch.zeros(7))


def test_nan_in_zoo_is_rejected():
    codec = WeightCodec({"weight": [4]})
    zoo = torch.randn(3, 4)
    zoo[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        codec.fit({"weight": zoo})


def test_lora_token_layout():
    codec = WeightCodec(lora_shapes(num_layers=3, r=2, d=5))
    layout = codec.token_layout()
    assert layout.num_tokens == 6
    assert layout.types == ("q_proj", "v_proj") * 3
    assert layout.dims == (20,) * 6 and layout.offsets == tuple(range(0, 120, 20))
    assert layout.depths == (0.0, 0.0, 0.5, 0.5, 1.0, 1.0)
    assert lora_block_of("classifier.bias") == ("classifier", "classifier", -1)
    assert lora_block_of("base_model.model.model.layers.12.mlp.down_proj.lora_B.weight") == (
        "base_model.model.model.layers.12.mlp.down_proj",
        "down_proj",
        12,
    )


def test_rows_layout():
    assert TokenLayout.rows(3, 4) == TokenLayout(("row",) * 3, (4,) * 3, (0, 4, 8), (0.0,) * 3)
