"""FeatureExtractor: the frozen backbone, input size and projection a head generator conditions on, saved beside it."""

import numpy as np
import pytest
import torch

from peft_mcdi.models.conv4 import Conv4, conv4_features
from peft_mcdi.models.feature_extractor import FeatureExtractor, FeatureExtractorConfig


def conv4(channels: int = 8) -> Conv4:
    torch.manual_seed(0)
    model = Conv4(channels)
    with torch.no_grad():  # running statistics away from their defaults, so that a lost buffer shows
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def glyph_images(n: int, size: int = 28) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)


def test_conv4_features_are_the_benchmarks_and_survive_a_round_trip(tmp_path):
    backbone = conv4()
    mean, basis = torch.randn(8), torch.linalg.qr(torch.randn(8, 3))[0]
    extractor = FeatureExtractor(FeatureExtractorConfig("conv4", 28, channels=8, projection_dim=3), backbone,
                                 (mean, basis))  # fmt: skip
    images = glyph_images(10)
    expected = (conv4_features(backbone, images) - mean) @ basis
    torch.testing.assert_close(extractor.features(torch.from_numpy(images)), expected)
    assert extractor.feature_dim == 3

    extractor.save_pretrained(tmp_path)
    loaded = FeatureExtractor.from_pretrained(tmp_path)
    assert loaded.config == extractor.config
    torch.testing.assert_close(loaded.features(torch.from_numpy(images), batch_size=3), expected)


def test_conv4_reads_other_sizes_and_rgb_as_grayscale_at_its_input_size():
    extractor = FeatureExtractor(FeatureExtractorConfig("conv4", 28, channels=8), conv4())
    rgb = torch.rand(4, 3, 56, 56)
    assert extractor.preprocess(rgb).shape == (4, 1, 28, 28)
    gray = rgb.mean(1, keepdim=True)
    torch.testing.assert_close(extractor.features(rgb), extractor.features(gray))


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="backbone must be one of"):
        FeatureExtractorConfig("resnet50")
    with pytest.raises(ValueError, match="image_size must be an int >= 1"):
        FeatureExtractorConfig("conv4", 0)
    with pytest.raises(ValueError, match="projection_dim=2 does not match the projection given"):
        FeatureExtractor(FeatureExtractorConfig("conv4", 28, channels=8, projection_dim=2), conv4())
    with pytest.raises(FileNotFoundError, match="feature_extractor.json: this generator does not say which backbone"):
        FeatureExtractor.from_pretrained(tmp_path)
    extractor = FeatureExtractor(FeatureExtractorConfig("conv4", 28, channels=8), conv4())
    with pytest.raises(ValueError, match="images must be float in"):
        extractor.features(torch.zeros(2, 28, 28, dtype=torch.int32))
