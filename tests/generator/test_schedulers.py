"""Schedule maths of SPEC §3.3: boundaries, the four local-consistency properties (a)-(d), samplers, config I/O."""

import math

import pytest
import torch

from peft_mcdi.generator.schedulers import (
    LocalConsistencyScheduler,
    SchedulerConfig,
    local_target_epochs,
    segment_boundaries,
)
from peft_mcdi.meta.losses import LossNoise, diffusion_loss


# (T, k) → b_1..b_k, worked out by hand from b_i = round_half_up(T(k−i)/k).
HAND_BOUNDARIES = {
    (20, 1): [0],
    (20, 2): [10, 0],
    (20, 3): [13, 7, 0],  # 13.33 → 13, 6.67 → 7
    (10, 3): [7, 3, 0],  # 6.67 → 7, 3.33 → 3
    (7, 2): [4, 0],  # 3.5 → 4 (half up)
    (5, 4): [4, 3, 1, 0],  # 3.75 → 4, 2.5 → 3, 1.25 → 1
    (3, 3): [2, 1, 0],
}
CASES = [(20, 1), (20, 2), (20, 3), (7, 3), (10, 4)]  # includes T not divisible by k


@pytest.mark.parametrize(("T", "k"), list(HAND_BOUNDARIES))
def test_boundaries_by_hand(T, k):
    assert segment_boundaries(T, k) == HAND_BOUNDARIES[(T, k)]
    assert (
        LocalConsistencyScheduler(num_train_timesteps=T, num_segments=k).boundaries.tolist() == HAND_BOUNDARIES[(T, k)]
    )


def test_local_target_epochs_by_hand():
    assert local_target_epochs(10, 3) == [3, 7, 10]  # 3.33 → 3, 6.67 → 7
    assert local_target_epochs(5, 2) == [3, 5]  # 2.5 → 3 (half up)
    assert local_target_epochs(6, 1) == [6]


def _sched(T, k, prediction_type="epsilon"):
    return LocalConsistencyScheduler(num_train_timesteps=T, num_segments=k, prediction_type=prediction_type)


def _exact_rescaled_noise(s, x_t, theta, t, i):
    """f* = √(1−ᾱ_t)/√(1−ᾱᵢ(t))·ε̂, where ε̂ is the noise that takes θ⁽ⁱ⁾ to x_t under the local schedule."""
    tt, ii = torch.tensor([t]), torch.tensor([i])
    a_loc = s.local_alphas_cumprod(tt, ii).to(x_t.dtype)
    a_glob = s.alphas_cumprod[t].to(x_t.dtype)
    eps = (x_t - a_loc.sqrt() * theta) / (1 - a_loc).sqrt()
    return (1 - a_glob).sqrt() / (1 - a_loc).sqrt() * eps


@pytest.mark.parametrize(("T", "k"), CASES)
def test_a_ddpm_mean_equals_local_posterior_mean(T, k):
    s = _sched(T, k)
    g = torch.Generator().manual_seed(0)
    for i in range(1, k + 1):
        b = s.boundaries[i - 1].item()
        theta = torch.randn(5, generator=g, dtype=torch.float64)
        for t in range(b + 1, T + 1):
            x_t = torch.randn(5, generator=g, dtype=torch.float64)
            mean = s.step(_exact_rescaled_noise(s, x_t, theta, t, i), t, t - 1, x_t)  # noise term off
            # closed form q(x_{t−1} | x_t, θ) of the DDPM restarted at b_i
            a_t = s.local_alphas_cumprod(torch.tensor([t]), torch.tensor([i])).item()
            a_prev = 1.0 if t - 1 == b else s.local_alphas_cumprod(torch.tensor([t - 1]), torch.tensor([i])).item()
            beta, alpha = s.betas[t].item(), s.alphas[t].item()
            closed = math.sqrt(a_prev) * beta / (1 - a_t) * theta + math.sqrt(alpha) * (1 - a_prev) / (1 - a_t) * x_t
            torch.testing.assert_close(mean, closed, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("T", "k"), CASES)
def test_b_deterministic_chain_reaches_local_target(T, k):
    s = _sched(T, k)
    g = torch.Generator().manual_seed(1)
    for i in range(1, k + 1):
        b = s.boundaries[i - 1].item()
        theta = torch.randn(64, generator=g)
        x = torch.randn(64, generator=g)  # pure noise, float32 throughout
        for t in range(T, b, -1):
            x = s.step(_exact_rescaled_noise(s, x, theta, t, i), t, t - 1, x)
        torch.testing.assert_close(x, theta, rtol=0, atol=1e-5)


def _loss_inputs(s, k, n=256, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    segments, timesteps = s.sample_segments_and_timesteps(n, g, "mcdi")
    noise = LossNoise(segments, timesteps, torch.randn(n, D, generator=g), torch.zeros(n, dtype=torch.bool))
    targets = torch.randn(k, D, generator=g)
    return targets, noise


@pytest.mark.parametrize(("T", "k"), CASES)
@pytest.mark.parametrize("weighting", ["epsilon", "paper"])
def test_c_loss_is_zero_at_rescaled_noise_and_not_at_plain_noise(T, k, weighting):
    s = _sched(T, k)
    targets, noise = _loss_inputs(s, k)
    scale_pred, scale_target = s.loss_scales(noise.timesteps, noise.segments)
    f_star = (scale_target / scale_pred).float()[:, None] * noise.noise

    def oracle(x_t, t, drop):
        return f_star

    def plain(x_t, t, drop):
        return noise.noise

    assert diffusion_loss(oracle, s, targets, noise, "mcdi", weighting) < 1e-10
    plain_loss = diffusion_loss(plain, s, targets, noise, "mcdi", weighting)
    if k == 1:
        assert plain_loss < 1e-10  # with one segment ε itself is the minimiser: vanilla
    else:
        assert plain_loss > 1e-3  # local consistency differs from vanilla whenever k > 1


@pytest.mark.parametrize(("T", "k"), CASES)
@pytest.mark.parametrize("variant", ["mcdi", "twdi"])
def test_min_snr_weights_each_sample_by_its_own_noise_level(T, k, variant):
    """Min-SNR-γ: sample j's loss × min(SNR_j, γ)/SNR_j, SNR of the schedule it was noised with; a γ above every
    SNR changes nothing."""
    s = _sched(T, k)
    targets, noise = _loss_inputs(s, k)
    f = torch.randn_like(noise.noise)

    def per_sample(gamma):  # each sample's weighted loss, one at a time
        losses = []
        for j in range(len(noise.timesteps)):
            denoise = lambda x_t, t, d, j=j: f[j : j + 1]  # noqa: E731
            losses.append(diffusion_loss(denoise, s, targets, _only(noise, j), variant, min_snr_gamma=gamma))
        return torch.stack(losses)

    if variant == "mcdi":
        acp = s.local_alphas_cumprod(noise.timesteps, noise.segments)
    else:
        acp = s.alphas_cumprod[noise.timesteps]
    snr = (acp / (1 - acp)).float()
    torch.testing.assert_close(per_sample(2.0), per_sample(None) * snr.clamp(max=2.0) / snr)
    torch.testing.assert_close(per_sample(float(snr.max()) + 1), per_sample(None))
    loss = diffusion_loss(lambda x_t, t, d: f, s, targets, noise, variant, min_snr_gamma=2.0)
    torch.testing.assert_close(loss, per_sample(2.0).mean())


def _only(noise: LossNoise, j: int) -> LossNoise:
    return LossNoise(*(x[j : j + 1] for x in noise.as_tuple()))


@pytest.mark.parametrize("T", [20, 7])
def test_d_one_segment_is_exactly_vanilla_epsilon_prediction(T):
    s = _sched(T, 1)
    targets, noise = _loss_inputs(s, 1)
    f = torch.randn_like(noise.noise)
    seen = {}

    def denoise(x_t, t, drop):
        seen["x_t"] = x_t
        return f

    loss = diffusion_loss(denoise, s, targets, noise, "mcdi", "epsilon")
    acp = s.alphas_cumprod[noise.timesteps].float()[:, None]
    # vanilla DDPM: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, loss ‖f − ε‖²
    torch.testing.assert_close(seen["x_t"], acp.sqrt() * targets[0] + (1 - acp).sqrt() * noise.noise)
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(f, noise.noise))
    paper = diffusion_loss(denoise, s, targets, noise, "mcdi", "paper")
    torch.testing.assert_close(paper, ((1 - acp) * (f - noise.noise) ** 2).mean())
    # and Tw-Di with one segment is the same vanilla loss
    torch.testing.assert_close(diffusion_loss(denoise, s, targets, noise, "twdi"), loss)


@pytest.mark.parametrize(("T", "k"), CASES)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_a_sample_prediction_steps_like_the_epsilon_it_implies(T, k, sampler):
    """x̂₀-prediction changes what the network outputs, not the chain: a step from x̂₀ is the step from the ε̂ it
    implies, (x_t − √ᾱ_t·x̂₀)/√(1−ᾱ_t), noise term included."""
    eps_sched, x0_sched = _sched(T, k), _sched(T, k, "sample")
    g = torch.Generator().manual_seed(2)
    for t, t_prev in eps_sched.timesteps_for(max(1, T // 2)):
        x_t, x0_hat, z = torch.randn(3, 7, generator=g, dtype=torch.float64)
        acp = eps_sched.alphas_cumprod[t]
        eps_hat = (x_t - acp.sqrt() * x0_hat) / (1 - acp).sqrt()
        torch.testing.assert_close(
            x0_sched.step(x0_hat, t, t_prev, x_t, z, sampler), eps_sched.step(eps_hat, t, t_prev, x_t, z, sampler)
        )


@pytest.mark.parametrize(("T", "k"), CASES)
def test_b_sample_prediction_chain_reaches_local_target(T, k):
    """Property (b) for x̂₀-prediction: with x̂₀* from ``sample_targets`` the deterministic chain sits on θ⁽ⁱ⁾ at b_i."""
    s = _sched(T, k, "sample")
    g = torch.Generator().manual_seed(3)
    for i in range(1, k + 1):
        b = s.boundaries[i - 1].item()
        theta, x = torch.randn(2, 1, 64, generator=g)
        for t in range(T, b, -1):
            tt, ii = torch.tensor([t]), torch.tensor([i])
            a_loc = s.local_alphas_cumprod(tt, ii).float()[:, None]
            eps = (x - a_loc.sqrt() * theta) / (1 - a_loc).sqrt()  # the noise that takes θ⁽ⁱ⁾ to x_t, locally
            x = s.step(s.sample_targets(x, eps, tt, ii), t, t - 1, x)
        torch.testing.assert_close(x, theta, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("T", "k"), CASES)
def test_c_sample_prediction_loss_is_zero_at_its_target_and_the_x0_loss_for_one_segment(T, k):
    s = _sched(T, k, "sample")
    targets, noise = _loss_inputs(s, k)

    def oracle(x_t, t, drop):
        return s.sample_targets(x_t, noise.noise, t, noise.segments)

    assert diffusion_loss(oracle, s, targets, noise, "mcdi") < 1e-8
    final = targets[-1].expand_as(noise.noise)
    loss_at_final = diffusion_loss(lambda x_t, t, d: final, s, targets, noise, "mcdi")
    if k == 1:
        assert loss_at_final < 1e-10  # one segment: the plain x₀-loss ‖x̂₀ − θ‖²
        f = torch.randn_like(noise.noise)
        torch.testing.assert_close(
            diffusion_loss(lambda x_t, t, d: f, s, targets, noise, "mcdi"), ((f - targets[0]) ** 2).mean()
        )
    else:
        assert loss_at_final > 1e-3  # earlier segments aim at θ⁽ⁱ⁾ (through the rescaled ε), not at θ⁽ᵏ⁾
    # Tw-Di regresses each stretch's own θ⁽ⁱ⁾; Min-SNR-γ weighs an x̂₀-loss by min(SNR, γ)
    twdi_targets = targets[noise.segments - 1]
    assert diffusion_loss(lambda x_t, t, d: twdi_targets, s, targets, noise, "twdi") < 1e-12
    j = int(noise.timesteps.argmin())
    f = torch.randn_like(noise.noise[j : j + 1])
    acp = s.local_alphas_cumprod(noise.timesteps[j : j + 1], noise.segments[j : j + 1])
    snr = float(acp / (1 - acp))
    plain, weighted = (
        diffusion_loss(lambda x_t, t, d: f, s, targets, _only(noise, j), "mcdi", min_snr_gamma=gamma)
        for gamma in (None, 2.0)
    )
    torch.testing.assert_close(weighted, plain * min(snr, 2.0))


def test_sample_prediction_refuses_the_paper_weighting():
    s = _sched(20, 3, "sample")
    targets, noise = _loss_inputs(s, 3)
    with pytest.raises(ValueError, match="weighting='epsilon'"):
        diffusion_loss(lambda x_t, t, d: x_t, s, targets, noise, "mcdi", "paper")


@pytest.mark.parametrize(("T", "k"), CASES)
def test_sampled_steps_lie_in_their_segments(T, k):
    s = _sched(T, k)
    g = torch.Generator().manual_seed(0)
    seg, t = s.sample_segments_and_timesteps(4000, g, "mcdi")
    b = s.boundaries[seg - 1]
    assert bool(((t > b) & (t <= T)).all())
    assert set(seg.tolist()) == set(range(1, k + 1))
    # Tw-Di: t ∈ (b_i, b_{i−1}], b_0 = T, and every step is used
    seg, t = s.sample_segments_and_timesteps(4000, g, "twdi")
    upper = torch.cat([torch.tensor([T]), s.boundaries])[seg - 1]
    assert bool(((t > s.boundaries[seg - 1]) & (t <= upper)).all())
    assert set(t.tolist()) == set(range(1, T + 1))


def test_ddim_with_fewer_steps_reaches_the_final_target():
    s = _sched(20, 3)
    theta = torch.randn(32, dtype=torch.float64)
    x = torch.randn(32, dtype=torch.float64)
    for t, t_prev in s.timesteps_for(5):
        acp = s.alphas_cumprod[t]
        eps = (x - acp.sqrt() * theta) / (1 - acp).sqrt()  # exact global ε toward θ⁽ᵏ⁾
        x = s.step(eps, t, t_prev, x, sampler="ddim")
    torch.testing.assert_close(x, theta)


def test_timesteps_for_covers_the_chain():
    s = _sched(20, 3)
    assert s.timesteps_for() == [(t, t - 1) for t in range(20, 0, -1)]
    pairs = s.timesteps_for(4)
    assert pairs[0][0] == 20 and pairs[-1][1] == 0 and all(a > b for a, b in pairs)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.timesteps_for(21)


def test_default_schedule_keeps_last_alpha_away_from_zero():
    s = LocalConsistencyScheduler()
    assert 0.01 < s.alphas_cumprod[-1].item() < 0.03  # ᾱ_T ≈ 0.018 (SPEC §3.3 pitfall)
    assert s.alphas[-1].item() > 0.5


def test_config_round_trip(tmp_path):
    s = LocalConsistencyScheduler(num_train_timesteps=12, num_segments=4, beta_end=0.3)
    s.save_config(tmp_path)
    loaded = LocalConsistencyScheduler.from_config_file(tmp_path)
    assert loaded.config == s.config
    torch.testing.assert_close(loaded.alphas_cumprod, s.alphas_cumprod)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_train_timesteps": 5, "num_segments": 6}, "num_segments"),
        ({"num_segments": 0}, "num_segments"),
        ({"beta_schedule": "quadratic"}, "beta_schedule"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "beta_start"),
    ],
)
def test_bad_config_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SchedulerConfig(**kwargs)


def test_unknown_config_key_is_listed():
    with pytest.raises(ValueError, match=r"unknown SchedulerConfig keys \['num_segmnets'\]"):
        SchedulerConfig.from_dict({"num_train_timesteps": 20, "num_segmnets": 3})
