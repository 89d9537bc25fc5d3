"""Noto glyph dataset: Omniglot-like structure, script-disjoint splits, no homoglyph leakage, deterministic cache."""

from pathlib import Path

import numpy as np
import pytest

from peft_mcdi.tasks import glyphs
from peft_mcdi.tasks.glyphs import (
    GlyphCacheError,
    GlyphConfig,
    build_glyphs,
    canonical_similarity,
    glyph_cache_path,
    load_glyphs,
)


pytestmark = pytest.mark.skipif(
    not Path(GlyphConfig().font_dir).is_dir(), reason="Noto fonts not installed (fonts-noto-core/-extra/-ui-core)"
)

TINY = {"max_scripts": 8, "max_chars_per_script": 10, "min_chars_per_script": 8, "drawers_per_char": 4}
# Scripts whose capitals share pictures (Latin A, Greek Α, Cyrillic А, Coptic Ⲁ, Cherokee Ꭺ); enough letters per script
# that the homoglyphs are within the cap, so the checks below are not vacuous.
LOOKALIKES = {
    "scripts": ["Latin", "Greek", "Cyrillic", "Armenian", "Coptic", "Cherokee"],
    "max_chars_per_script": 60,
    "min_chars_per_script": 10,
    "drawers_per_char": 2,
}
A_TRIPLE = (0x41, 0x391, 0x410)  # Latin A, Greek Alpha, Cyrillic A
O_TRIPLE = (0x6F, 0x3BF, 0x43E)  # Latin o, Greek omicron, Cyrillic o


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A cache folder of this module's own: the cache tests corrupt files in it."""
    path = tmp_path_factory.mktemp("glyph_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCDI_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny(cache_dir):
    return build_glyphs(GlyphConfig(**TINY))


@pytest.fixture(scope="module")
def lookalikes(cache_dir):
    return {seed: build_glyphs(GlyphConfig(**LOOKALIKES, seed=seed)) for seed in range(3)}


def _classes_by_codepoint(dataset):
    return {c["codepoint"]: c for c in dataset.classes}


def test_builds_are_deterministic(tiny):
    again = build_glyphs(GlyphConfig(**TINY))
    for name in ("images", "labels", "styles", "fonts", "canonical"):
        assert np.array_equal(getattr(tiny, name), getattr(again, name)), name
        assert getattr(tiny, name).tobytes() == getattr(again, name).tobytes()
    assert tiny.classes == again.classes and tiny.font_names == again.font_names


def test_another_seed_draws_other_images(lookalikes):
    a, b = lookalikes[0], lookalikes[1]
    shared = sorted(set(_classes_by_codepoint(a)) & set(_classes_by_codepoint(b)))
    assert len(shared) >= 20
    index_a = {c["codepoint"]: i for i, c in enumerate(a.classes)}
    index_b = {c["codepoint"]: i for i, c in enumerate(b.classes)}
    for cp in shared[:20]:
        assert not np.array_equal(a.images[a.labels == index_a[cp]], b.images[b.labels == index_b[cp]]), chr(cp)
        assert np.array_equal(a.canonical[index_a[cp]], b.canonical[index_b[cp]])  # the clean render is seed-free


def test_shapes_drawers_and_styles(tiny):
    n_classes = len(tiny.classes)
    assert len(tiny.scripts()) == tiny.info["num_scripts"] <= 8 and n_classes == tiny.info["num_classes"]
    assert tiny.images.shape == (n_classes * 4, 28, 28) and tiny.images.dtype == np.uint8
    assert tiny.labels.dtype == np.int64 and np.array_equal(np.bincount(tiny.labels), np.full(n_classes, 4))
    for k in range(n_classes):
        images = tiny.images[tiny.labels == k]
        assert len({img.tobytes() for img in images}) == len(images), tiny.classes[k]["char"]
    # white glyph on black: every image reaches 255, the border is (almost) background
    assert (tiny.images.max(axis=(1, 2)) == 255).all()
    border = np.concatenate([tiny.images[:, 0], tiny.images[:, -1], tiny.images[:, :, 0], tiny.images[:, :, -1]], 1)
    assert border.mean() < 5
    assert tiny.style_names == ["sans", "serif", "mono", "display-other"]
    assert tiny.styles.min() >= 0 and tiny.styles.max() < len(tiny.style_names)
    assert tiny.fonts.max() < len(tiny.font_names) and len(tiny.font_names) > 1
    for c in tiny.classes:
        assert c["char"] == chr(c["codepoint"]) and c["split"] in ("background", "evaluation") and c["script"]


def test_splits_are_disjoint_by_script(tiny):
    background, evaluation = tiny.scripts("background"), tiny.scripts("evaluation")
    assert background and evaluation and not set(background) & set(evaluation)
    assert sorted(background + evaluation) == tiny.scripts()
    assert len(background) == round(0.6 * len(tiny.scripts()))
    parts = {name: tiny.split(name) for name in ("background", "evaluation")}
    assert sum(len(p.classes) for p in parts.values()) == len(tiny.classes)
    assert not {c["codepoint"] for c in parts["background"].classes} & {
        c["codepoint"] for c in parts["evaluation"].classes
    }
    for name, part in parts.items():
        assert {c["split"] for c in part.classes} == {name}
        assert np.array_equal(np.unique(part.labels), np.arange(len(part.classes)))
        assert len(part.images) == len(part.labels) == len(part.styles) == 4 * len(part.classes)
        assert len(part.canonical) == len(part.classes)
        first = part.classes[0]
        original = next(i for i, c in enumerate(tiny.classes) if c["codepoint"] == first["codepoint"])
        assert np.array_equal(part.images[part.labels == 0], tiny.images[tiny.labels == original])
    with pytest.raises(ValueError, match="unknown split"):
        tiny.split("test")


def _assert_no_leakage(dataset, threshold):
    background, evaluation = dataset.split("background"), dataset.split("evaluation")
    similarity = canonical_similarity(evaluation.canonical, background.canonical)
    i, j = np.unravel_index(similarity.argmax(), similarity.shape)
    assert similarity[i, j] < threshold, (evaluation.classes[i], background.classes[j], similarity[i, j])


def test_no_homoglyph_leaks_between_splits(tiny, lookalikes):
    _assert_no_leakage(tiny, GlyphConfig().homoglyph_threshold)
    for dataset in lookalikes.values():
        _assert_no_leakage(dataset, GlyphConfig().homoglyph_threshold)


def test_latin_greek_cyrillic_lookalikes_keep_one(lookalikes):
    for seed, dataset in lookalikes.items():
        assert set(dataset.scripts()) >= {"Latin", "Greek", "Cyrillic"}, seed
        by_cp = _classes_by_codepoint(dataset)
        for triple in (A_TRIPLE, O_TRIPLE):
            survivors = [by_cp[cp] for cp in triple if cp in by_cp]
            assert len(survivors) == 1, (seed, [(c["char"], c["script"], c["split"]) for c in survivors])
            if set(dataset.scripts("background")) & {"Latin", "Greek", "Cyrillic"}:
                assert survivors[0]["split"] == "background", (seed, survivors)
        assert (0x393 in by_cp) + (0x413 in by_cp) <= 1  # Greek Γ, Cyrillic Г
        # NotoSansCherokee draws Ꮇ with serifs: only the serif canonical render of Latin M matches it
        assert (0x4D in by_cp) + (0x13B7 in by_cp) <= 1
        assert dataset.info["dropped_homoglyphs"] > 10
        assert any("Latin A U+0041" in line or "Greek Α U+0391" in line for line in dataset.info["homoglyphs"])


def test_cache_is_reused_and_corruption_is_reported(cache_dir, monkeypatch):
    monkeypatch.setenv("MCDI_CACHE", str(cache_dir))
    config = GlyphConfig(**{**TINY, "seed": 7})
    path = glyph_cache_path(config)
    assert str(path).startswith(str(cache_dir)) and path.parent.name == "glyphs" and not path.exists()
    first = load_glyphs(config)
    assert path.is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("load_glyphs rebuilt instead of reading the cache")

    monkeypatch.setattr(glyphs, "build_glyphs", no_rebuild)
    second = load_glyphs(GlyphConfig.from_dict(config.to_dict()))
    assert np.array_equal(first.images, second.images) and first.classes == second.classes
    assert first.info == second.info and first.font_names == second.font_names

    for garbage in (b"not an npz", path.read_bytes()[:1000]):  # not a zip; a truncated one
        path.write_bytes(garbage)
        with pytest.raises(GlyphCacheError, match="delete it to rebuild") as err:
            load_glyphs(config)
        assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"drawers_per_char": 0}, "drawers_per_char"),
        ({"image_size": "28"}, "image_size"),
        ({"background_fraction": 1.0}, "background_fraction"),
        ({"max_chars_per_script": 10}, "max_chars_per_script"),  # below min_chars_per_script=20
        ({"scale_range": (1.2, 0.9)}, "scale_range"),
        ({"max_scripts": 1}, "max_scripts"),
        ({"homoglyph_threshold": 1.5}, "homoglyph_threshold"),
        ({"scripts": "Latin"}, "scripts"),
        ({"elastic_alpha": -1.0}, "elastic_alpha"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"GlyphConfig\.{field}"):
        GlyphConfig(**overrides)


def test_unknown_inputs_are_named(cache_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown GlyphConfig keys"):
        GlyphConfig.from_dict({"drawers": 3})
    with pytest.raises(ValueError, match="Klingon"):
        build_glyphs(GlyphConfig(**{**TINY, "max_scripts": None, "scripts": ["Latin", "Klingon"]}))
    with pytest.raises(FileNotFoundError, match="fonts-noto-core fonts-noto-extra fonts-noto-ui-core"):
        load_glyphs(GlyphConfig(font_dir=str(tmp_path / "no-fonts")))


def test_elastic_batch_keeps_images_apart():
    rng = np.random.default_rng(0)
    batch = np.zeros((3, 56, 56), dtype=np.float32)
    batch[0] = 255.0  # an empty image between two inked ones must stay empty whatever the displacement
    batch[2, 20:36, 20:36] = 255.0
    noise = rng.standard_normal((3, 2, 14, 14)).astype(np.float32)
    assert np.allclose(glyphs._elastic(batch, noise, alpha=0.0, sigma=3.0), batch, atol=1e-4)
    warped = glyphs._elastic(batch, noise, alpha=1.5, sigma=3.0)
    assert warped[1].max() == 0.0 and warped[0].mean() > 150 and not np.allclose(warped[2], batch[2])
