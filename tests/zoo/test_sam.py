import pytest
import torch

from peft_mcdi.zoo.sam import SAM


def loss_fn(w, v):
    return (w**4).sum() + w[0] * w[1] + (v * w[:1]).sum() ** 2


def test_one_sam_step_equals_hand_computation():
    w0, v0 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.25, -1.0])
    w, v = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(v0.clone())
    rho, lr = 0.1, 0.05
    opt = SAM([w, v], torch.optim.SGD, rho=rho, lr=lr)

    def closure():
        opt.zero_grad()
        loss = loss_fn(w, v)
        loss.backward()
        return loss

    opt.step(closure)

    # by hand: g = ∇L(w); ε = ρ·g/‖g‖ (norm over all parameters); w' = w − lr·∇L(w + ε)
    a, b = w0.clone().requires_grad_(), v0.clone().requires_grad_()
    ga, gb = torch.autograd.grad(loss_fn(a, b), (a, b))
    norm = torch.cat([ga, gb]).norm()
    a2 = (w0 + rho * ga / norm).requires_grad_()
    b2 = (v0 + rho * gb / norm).requires_grad_()
    ga2, gb2 = torch.autograd.grad(loss_fn(a2, b2), (a2, b2))
    torch.testing.assert_close(w.data, w0 - lr * ga2)
    torch.testing.assert_close(v.data, v0 - lr * gb2)


def test_rho_zero_is_the_base_optimizer():
    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(4))
    w2 = torch.nn.Parameter(w1.detach().clone())
    sam = SAM([w1], torch.optim.Adam, rho=0.0, lr=0.1)
    adam = torch.optim.Adam([w2], lr=0.1)
    passes = []
    for _ in range(3):

        def closure():
            passes.append(1)
            sam.zero_grad()
            loss = (w1**3).sum()
            loss.backward()
            return loss

        sam.step(closure)
        adam.zero_grad()
        (w2**3).sum().backward()
        adam.step()
    torch.testing.assert_close(w1.data, w2.data)
    assert len(passes) == 3  # one pass per step: without an ascent, the second one would only repeat the first


def test_bad_arguments():
    with pytest.raises(ValueError, match="rho"):
        SAM([torch.nn.Parameter(torch.zeros(1))], rho=-1.0, lr=0.1)
    opt = SAM([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
