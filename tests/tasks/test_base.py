import pytest
import torch

from peft_mcdi.tasks.base import TaskSet, get_tasksets


def test_unknown_taskset_lists_the_valid_names():
    with pytest.raises(
        ValueError,
        match=r"unknown task set 'omniglot'; valid names: \['glyphs-fewshot', 'hub-binary', 'logistic', "
        r"'vision-dg', 'vision-transfer', 'wordnet-minilm', 'wordnet-smollm2'\]",
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
