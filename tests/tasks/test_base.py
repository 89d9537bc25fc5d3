import pytest
import torch
import torch.nn.functional as F

from peft_mcdi.tasks.base import TaskSet, accuracy, get_tasksets


def test_unknown_taskset_lists_the_valid_names():
    with pytest.raises(
        ValueError,
        match=r"unknown task set 'omniglot'; valid names: \['glyphs-fewshot', 'hub-binary', 'logistic', "
        r"'vision-dg', 'vision-transfer', 'wordforms-smollm2', 'wordnet-minilm', 'wordnet-smollm2'\]",
    ):
        get_tasksets("omniglot")


def test_taskset_sampling_is_seeded_and_uniform():
    tasks = get_tasksets("logistic", num_train_tasks=5, num_test_tasks=1).train
    a = tasks.sample(200, torch.Generator().manual_seed(3))
    b = tasks.sample(200, torch.Generator().manual_seed(3))
    assert [t.task_id for t in a] == [t.task_id for t in b]
    assert {t.task_id for t in a} == {t.task_id for t in tasks}
    assert tasks.conditions().shape == (5, 4)


def test_duplicate_task_ids_are_refused():
    tasks = get_tasksets("logistic", num_train_tasks=2, num_test_tasks=1).train
    with pytest.raises(ValueError, match="not unique"):
        TaskSet([tasks[0], tasks[0]], "dup")


def test_accuracy_is_argmax_accuracy_without_ties():
    scores = torch.tensor([[[2.0, -1.0, 0.5], [0.1, 0.3, -4.0], [1.0, 2.0, 3.0], [-5.0, -2.0, -3.0]]])
    labels = torch.tensor([[0, 1, 0, 1]])
    assert accuracy(scores, labels).tolist() == [0.75]  # leading batch dims kept
    assert accuracy(scores[0], labels[0]).item() == (scores[0].argmax(-1) == labels[0]).float().mean().item()


def test_tied_classes_score_one_over_k():
    scores = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, -1.0], [3.0, 3.0, 3.0, 2.0], [-1.0, -1.0, -1.0, -1.0]]
    )
    assert accuracy(scores, torch.tensor([3, 1, 2, 0])).item() == pytest.approx((1 / 4 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert accuracy(scores, torch.tensor([0, 3, 3, 0])).item() == pytest.approx((1 / 4 + 0 + 0 + 1 / 4) / 4)
    assert accuracy(torch.tensor([[float("nan"), 1.0]]), torch.tensor([1])).item() == 0.0
    assert accuracy(torch.tensor([[float("inf"), 1.0]]), torch.tensor([0])).item() == 1.0


def test_identical_rows_tie_whatever_the_summation_order():
    # One head row for every class (the mean-of-zoo baseline): each class's score is the same dot product, but a
    # CPU's kernels may sum it in another order per column, so the scores differ in their last bits, and for a score
    # that nearly cancels, by far more than the score's own size allows. Sized by the terms, every class ties.
    g = torch.Generator().manual_seed(0)
    x, w = F.normalize(torch.randn(256, 768, generator=g), dim=1), torch.randn(768, generator=g)
    products = x * w
    orders = [torch.arange(768), torch.arange(767, -1, -1), torch.randperm(768, generator=g)]
    columns = [products[:, order].cumsum(-1)[:, -1] for order in orders]  # sequential, in three orders
    columns += [products.view(-1, 48, 16).sum(-1).sum(-1), x @ w]  # blocked as vector units sum, and the BLAS
    scores = torch.stack(columns, -1)
    magnitude = (x.abs() @ w.abs())[:, None]
    assert (scores != scores[:, :1]).any()  # rounding did move scores
    labels = torch.randint(5, (256,), generator=g)
    assert accuracy(scores, labels, magnitude).item() == pytest.approx(1 / 5)
    shifted = scores + torch.tensor([0.0, 0.0, 0.0, 0.0, 1e-3])  # a real margin, far below the terms' size
    assert accuracy(shifted, labels, magnitude).item() == (labels == 4).float().mean().item()
