"""One shared tester over a matrix of (denoiser family, weight layout) cases, PEFT-style."""

import pytest
import torch

from peft_mcdi.generator.codec import WeightCodec
from peft_mcdi.generator.denoisers import DenoiserConfig, DenseProjection, LoRAPairProjection, build_denoiser
from tests.generator.test_codec import lora_shapes


T = 20


def make_case(name, num_layers=3, lora_factor_dim=4):
    """(denoiser, layout, sample_dim, condition builder) for a case of the matrix."""
    if name == "mlp":
        cfg = DenoiserConfig(type="mlp", condition_dim=6, hidden_dim=32, num_layers=2)
        return build_denoiser(cfg, T, sample_dim=17), None, 17, lambda B: torch.randn(B, 6)
    if name == "tokens-lora-dense":
        return make_case("tokens-lora", num_layers, lora_factor_dim=0)
    if name == "tokens-lora":
        codec = WeightCodec(lora_shapes(num_layers=num_layers))
        cfg = DenoiserConfig(
            type="tokens", condition_dim=6, hidden_dim=32, num_layers=2, num_heads=4, lora_factor_dim=lora_factor_dim
        )
        layout = codec.token_layout()
        den = build_denoiser(cfg, T, token_parts=layout.type_parts())
        return den, layout, codec.dim(), lambda B: torch.randn(B, 6)
    if name == "tokens-rows":
        codec = WeightCodec({"weight": [7], "bias": []}, row_tokens=True)
        cfg = DenoiserConfig(type="tokens", condition_dim=6, hidden_dim=32, num_layers=2, per_token_condition=True)
        den = build_denoiser(cfg, T, token_parts={"row": [[8]]})
        return den, codec.token_layout(5), codec.dim(5), lambda B: torch.randn(B, 5, 6)
    raise ValueError(name)


CASES = ["mlp", "tokens-lora", "tokens-lora-dense", "tokens-rows"]


def randomise_outputs(den):
    """Zero-initialised output layers hide bugs; give them weights for equivariance/consistency checks."""
    for name, p in den.named_parameters():
        if any(key in name for key in ("proj_out", "modulation", "decode", "out_a", "out_b", "skip")):
            torch.nn.init.normal_(p, std=0.1)


@pytest.mark.parametrize("case", CASES)
def test_forward_shape_and_zero_init(case):
    den, layout, D, cond = make_case(case)
    x = torch.randn(3, D)
    out = den(x, torch.tensor([1, 5, 20]), cond(3), layout=layout)
    assert out.shape == (3, D)
    assert torch.count_nonzero(out) == 0  # zero-initialised head: the untrained denoiser predicts 0


@pytest.mark.parametrize("case", CASES)
def test_condition_dropout_uses_the_null_condition(case):
    den, layout, D, cond = make_case(case)
    randomise_outputs(den)
    torch.nn.init.normal_(den.null_condition)
    x, t = torch.randn(2, D), torch.tensor([3, 3])
    c1, c2 = cond(2), cond(2)
    drop = torch.tensor([True, False])
    a = den(x, t, c1, drop, layout=layout)
    b = den(x, t, c2, drop, layout=layout)
    torch.testing.assert_close(a[0], b[0])  # dropped: condition ignored
    assert not torch.allclose(a[1], b[1])  # kept: condition matters


@pytest.mark.parametrize("case", CASES)
def test_wrong_condition_width_is_named(case):
    den, layout, D, cond = make_case(case)
    bad = cond(2)[..., :4]
    with pytest.raises(ValueError, match=r"condition has shape .* condition_dim=6"):
        den(torch.randn(2, D), torch.tensor([1, 2]), bad, layout=layout)


@pytest.mark.parametrize("case", CASES)
def test_samples_are_independent_in_the_batch(case):
    den, layout, D, cond = make_case(case)
    randomise_outputs(den)
    x, c, t = torch.randn(4, D), cond(4), torch.tensor([1, 7, 13, 20])
    batched = den(x, t, c, layout=layout)
    alone = torch.cat([den(x[j : j + 1], t[j : j + 1], c[j : j + 1], layout=layout) for j in range(4)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_row_tokens_are_permutation_equivariant_for_any_number_of_classes():
    den, _, _, _ = make_case("tokens-rows")
    randomise_outputs(den)
    codec = WeightCodec({"weight": [7], "bias": []}, row_tokens=True)
    for n in (2, 5, 11):
        x, c = torch.randn(2, n * 8), torch.randn(2, n, 6)
        t = torch.tensor([4, 9])
        out = den(x, t, c, layout=codec.token_layout(n)).view(2, n, 8)
        perm = torch.randperm(n)
        out_perm = den(x.view(2, n, 8)[:, perm].reshape(2, -1), t, c[:, perm], layout=codec.token_layout(n))
        torch.testing.assert_close(out_perm.view(2, n, 8), out[:, perm], atol=1e-5, rtol=1e-5)


def test_lora_blocks_use_the_lora_aware_projection():
    den, layout, D, cond = make_case("tokens-lora")
    proj = den.projections["q_proj"]
    assert isinstance(proj, LoRAPairProjection) and (proj.rank, proj.d_in, proj.d_out) == (2, 5, 5)
    dense = make_case("tokens-lora-dense")[0]
    assert isinstance(dense.projections["q_proj"], DenseProjection)
    # rank component j is row j of A and column j of B, on both the way in and the way out
    randomise_outputs(den)
    x = torch.randn(3, 20)  # (r=2, d_in=5) A then (d_out=5, r=2) B, flattened
    a, b = x[:, :10].view(3, 2, 5), x[:, 10:].view(3, 5, 2)
    z = torch.cat([proj.in_a(a), proj.in_b(b.transpose(1, 2))], dim=-1)  # (3, r, 2·width)
    torch.testing.assert_close(proj.encode(x), proj.mix_in(z.flatten(1)))
    h = torch.randn(3, 32)
    z = proj.mix_out(h).view(3, 2, 2 * proj.width)
    a_out, b_out = proj.out_a(z[..., : proj.width]), proj.out_b(z[..., proj.width :]).transpose(1, 2)
    torch.testing.assert_close(proj.decode(h), torch.cat([a_out.flatten(1), b_out.flatten(1)], dim=1))


def test_lora_denoiser_size_does_not_scale_with_depth():
    sizes = [sum(p.numel() for p in make_case("tokens-lora", num_layers=L)[0].parameters()) for L in (2, 8, 30)]
    assert len(set(sizes)) == 1
    den, layout, D, cond = make_case("tokens-lora", num_layers=30)
    assert den(torch.randn(1, D), torch.tensor([5]), cond(1), layout=layout).shape == (1, D)


def test_bad_config_names_the_argument():
    with pytest.raises(ValueError, match="denoiser type"):
        DenoiserConfig(type="unet")
    with pytest.raises(ValueError, match="hidden_dim"):
        DenoiserConfig(type="tokens", hidden_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="per_token_condition"):
        DenoiserConfig(type="mlp", per_token_condition=True)
