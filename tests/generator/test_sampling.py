"""The sampling chain against an inline reference: every step's arithmetic and the order of the noise draws."""

import os

import pytest
import torch

from peft_mcdi.generator.sampling import _spare_cpu_core
from tests.generator.test_model import conditions, make_generator


@pytest.fixture(params=["one_thread", "all_threads"])
def intra_op_threads(request):
    """One intra-op thread leaves a core for the noise helper thread (where the machine has two); all threads don't,
    and the draws stay inline. Both paths must give the same chain."""
    before = torch.get_num_threads()
    torch.set_num_threads(1 if request.param == "one_thread" else os.cpu_count() or 1)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["mlp", "lora"])
def test_ddpm_chain_equals_the_step_by_step_reference(kind, intra_op_threads):
    """x_T and each ancestral z come from the task's generator in chain order, exactly as ``torch.randn`` draws them
    inline (the sampler may draw them one step ahead on a helper thread), and every chain entry is its own
    snapshot."""
    assert _spare_cpu_core() == (intra_op_threads == "one_thread" and len(os.sched_getaffinity(0)) > 1)
    gen, c = make_generator(kind), conditions(kind, 1)
    layout = gen.codec.token_layout() if kind == "lora" else None
    x0, chain = gen.generate_vectors(c, seed=11, return_chain=True)

    rng = torch.Generator().manual_seed(11)
    x = torch.randn(gen.codec.dim(), generator=rng)[None]
    expected = [x]
    with torch.no_grad():
        for t, t_prev in gen.scheduler.timesteps_for():
            f = gen.denoiser(x, torch.tensor([t]), c, layout=layout)
            z = torch.randn(x.shape[1], generator=rng)[None] if t_prev > 0 else None
            x = gen.scheduler.step(f, t, t_prev, x, noise=z, sampler="ddpm")
            expected.append(x)
    assert len(chain) == len(expected)
    for got, want in zip(chain, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x0, chain[-1], rtol=0, atol=0)
