"""Vision: backbones, image datasets and classifier-head generation."""
