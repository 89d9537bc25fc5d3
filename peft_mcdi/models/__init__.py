"""Backbones and offline base models: the Conv-4 and EfficientNet-Lite0 feature extractors of the vision suites
and the offline copies of the Hub models this project uses (MiniLM, SmolLM2)."""
