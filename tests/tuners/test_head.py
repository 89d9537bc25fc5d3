"""McDiHeadConfig / McDiHeadModel: generated heads on a frozen backbone, named adapters, save/load, errors."""

import pytest
import torch
from torch import nn

from peft_mcdi.tuners.head import McDiHeadConfig, McDiHeadModel
from tests.generator.test_head import DIM, head_generator


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(12, DIM)

    def features(self, images):
        return self.proj(images.flatten(1))


def images(n: int, seed: int = 0):
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return McDiHeadModel(Backbone(), McDiHeadConfig(seed=3), generator=head_generator())


def test_adapt_then_classify_with_named_heads(model):
    info = model.adapt(images(6), torch.tensor([0, 0, 1, 1, 2, 2]), adapter_name="abc", class_names=["a", "b", "c"])
    assert info.num_classes == 3 and info.generator_ms > 0 and info.backbone_ms >= 0
    model.adapt(images(4, 1), torch.tensor([0, 1, 0, 1]), adapter_name="xy")
    assert model.active_adapter == "xy"
    assert model(images(5)).shape == (5, 2)
    assert model(images(5), adapter_name="abc").shape == (5, 3)
    assert not any(p.requires_grad for p in model.parameters())


def test_refine_steps_lower_the_support_loss_from_the_generated_head(model):
    import torch.nn.functional as F

    x, y = images(6), torch.tensor([0, 0, 1, 1, 2, 2])
    generated = model.adapt(x, y, adapter_name="generated")
    assert generated.refine_ms == 0.0
    info = model.adapt(x, y, adapter_name="refined", refine_steps=5)
    assert info.refine_ms > 0 and not any(p.requires_grad for p in model.parameters())

    def support_loss(name):
        return float(F.cross_entropy(model(x, adapter_name=name), y))

    # the same seed gives the same generated head, so the refined one starts there and only the 5 steps differ
    assert support_loss("refined") < support_loss("generated")
    with pytest.raises(ValueError, match="refine_steps must be an int >= 0, got -1"):
        model.adapt(x, y, refine_steps=-1)
    with pytest.raises(ValueError, match="refine_lr must be > 0, got 0"):
        model.adapt(x, y, refine_steps=1, refine_lr=0)


def test_save_and_load_round_trip(model, tmp_path):
    model.adapt(images(6), torch.tensor([0, 0, 1, 1, 2, 2]), adapter_name="abc", class_names=["a", "b", "c"])
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"head_config.json", "heads.safetensors", "README.md"}
    assert "| abc | 3 | a, b, c |" in (tmp_path / "README.md").read_text()
    loaded = McDiHeadModel.from_pretrained(model.backbone, tmp_path)
    x = images(7, 2)
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.config == model.config and loaded.class_names == model.class_names


def test_errors_name_the_problem(model, tmp_path):
    with pytest.raises(ValueError, match="call adapt"):
        model(images(2))
    with pytest.raises(ValueError, match="class_names has 2 entries"):
        model.adapt(images(3), torch.tensor([0, 1, 2]), class_names=["a", "b"])
    with pytest.raises(ValueError, match="no method 'embed'"):
        McDiHeadModel(Backbone(), McDiHeadConfig(feature_method="embed"), generator=head_generator())
    with pytest.raises(ValueError, match="needs a generator"):
        McDiHeadModel(Backbone(), McDiHeadConfig()).adapt(images(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="sampler must be one of"):
        McDiHeadConfig(sampler="euler")
    with pytest.raises(FileNotFoundError, match="head_config.json is missing"):
        McDiHeadModel.from_pretrained(Backbone(), tmp_path)


def test_from_generator_builds_the_backbone_saved_with_the_generator(tmp_path):
    from peft_mcdi.models.feature_extractor import FeatureExtractor, FeatureExtractorConfig
    from tests.models.test_feature_extractor import conv4, glyph_images

    generator = head_generator().generator
    generator.set_training_conditions(torch.randn(6, 3, DIM))  # what training records; the fallback reads it
    generator.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not say which backbone it was trained on"):
        McDiHeadModel.from_generator(tmp_path)
    FeatureExtractor(FeatureExtractorConfig("conv4", 28, channels=DIM), conv4(DIM)).save_pretrained(tmp_path)
    model = McDiHeadModel.from_generator(tmp_path, seed=3)
    assert model.config.generator_name_or_path == str(tmp_path) and model.config.seed == 3
    support = torch.from_numpy(glyph_images(6))  # raw uint8 images in: the extractor does the rest
    model.adapt(support, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert model(support).shape == (6, 3)

    FeatureExtractor(FeatureExtractorConfig("conv4", 28, channels=DIM + 1), conv4(DIM + 1)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"heads on {DIM} features but its feature extractor \\(conv4\\) gives 9"):
        McDiHeadModel.from_generator(tmp_path)
