"""The small labelled image sources of the vision benchmarks, all offline (``shared/OFFLINE_ASSETS.md``):

* Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx files, 70k 28×28 images, 10 classes);
* animal silhouettes from PyPI ``animal-mnist==0.4`` (10k 28×28 images, 10 classes), whose data are two gzip
  pickles: they are read once with an unpickler that admits numpy array reconstruction only, checked against the
  pinned files' sha256, and cached as ``.npz``;
* sklearn's handwritten digits (1,797 8×8 images, 10 classes).

Every loader returns an :class:`ImageSet`: uint8 images (n, H, W), white on black like the glyphs, int64 labels.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peft_mcdi.utils import atomic_write, cache_root


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
ANIMAL_MNIST_VERSION = "0.4"
# sha256 of the decompressed pickles of animal-mnist 0.4: anything else is refused before it is unpickled.
ANIMAL_MNIST_SHA256 = {
    "animal_data_version_3.gz": "0a13908291891bf5b97b18427cf0eceedcb720959826cc85f7e06dc89e5eaf77",
    "animal_label_version_3.gz": "3d826227c39b7dba09abb8273cf07928443fec2c56b6396b4872741b7b332f93",
}


@dataclass
class ImageSet:
    """Images (n, H, W) uint8, labels (n,) int64 in 0..C−1, and a name per class."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"{self.name}: images must be uint8 (n, H, W), got {self.images.dtype} {self.images.shape}."
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"{self.name}: {len(self.images)} images but labels of shape {self.labels.shape}.")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format: big-endian magic, dims, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "train", root: str | Path = FASHION_MNIST_DIR) -> ImageSet:
    """Fashion-MNIST's ``train`` (60k), ``test`` (10k) or ``all`` (70k) images."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}.")
    root = Path(root)
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root}: install the Debian package dataset-fashion-mnist (scripts/setup.sh)."
        )
    parts = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    images = np.concatenate([_read_idx(root / f"{p}-images-idx3-ubyte.gz") for p in parts])
    labels = np.concatenate([_read_idx(root / f"{p}-labels-idx1-ubyte.gz") for p in parts]).astype(np.int64)
    return ImageSet(f"fashion-mnist/{split}", images.copy(), labels, list(FASHION_MNIST_CLASSES))


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits the three globals a pickled numpy array needs and nothing else: no code can run while loading."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are admitted.")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return getattr(np, name)


def _unpickle_array(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ANIMAL_MNIST_SHA256[path.name]:
        raise ValueError(
            f"{path} has sha256 {digest}, not the pinned animal-mnist=={ANIMAL_MNIST_VERSION} file; refusing to "
            "unpickle it. Reinstall with `pip install --no-deps animal-mnist==0.4`."
        )
    array = _ArrayOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path} does not hold a numpy array (got {type(array).__name__}).")
    return array


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to exactly ``path`` (numpy appends ``.npz`` to names without it, e.g. atomic temp files)."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_animal_silhouettes() -> ImageSet:
    """The animal-mnist silhouettes (10 classes × 1,000), converted once to ``.npz`` in the cache."""
    cached = cache_root() / "images" / f"animal-mnist-{ANIMAL_MNIST_VERSION}.npz"
    if not cached.is_file():
        spec = importlib.util.find_spec("animal_mnist")  # locate the package without importing its loader
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "animal silhouettes need `pip install --no-deps animal-mnist==0.4` (scripts/setup.sh installs it)."
            )
        folder = Path(spec.submodule_search_locations[0]) / "data" / "Animal_MNIST"
        images = _unpickle_array(folder / "animal_data_version_3.gz")
        labels = _unpickle_array(folder / "animal_label_version_3.gz")
        atomic_write(cached, lambda tmp: save_npz(tmp, images=images, labels=labels))
    try:
        with np.load(cached, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"the animal silhouettes cache {cached} is corrupt ({err}); delete it to rebuild.") from err
    images = images.reshape(len(images), 28, 28).astype(np.uint8)
    labels = labels.astype(np.int64)
    names = [f"animal-{c}" for c in range(int(labels.max()) + 1)]
    return ImageSet("animal-silhouettes", images, labels, names)


def load_digits() -> ImageSet:
    """sklearn's 8×8 digits, rescaled from 0..16 to 0..255."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return ImageSet("digits", images, digits.target.astype(np.int64), [str(d) for d in range(10)])
