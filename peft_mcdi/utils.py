"""Small helpers shared by every module: atomic writes, cache folders, content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write through ``write(tmp_path)`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    A reader (or a rerun after SIGKILL) therefore sees either the old file or the complete new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def check_local_or_hub(name_or_path: str | os.PathLike, what: str) -> None:
    """A clear FileNotFoundError for a ``from_pretrained`` argument that is neither an existing local path nor shaped
    like a Hub id ("owner/name" or "name"): without it, huggingface_hub answers a mistyped folder with a Hub-id
    validation error that never says the folder is missing. ``what`` names the argument in the message."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = str(name_or_path)
    if Path(text).expanduser().exists():
        return
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1
    try:
        validate_repo_id(text)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise FileNotFoundError(f"{what} {text!r} does not exist, and it is not a Hub id (like 'owner/name').")


def merged(base: Mapping, overrides: Mapping) -> dict:
    """``base`` with ``overrides`` applied; nested dicts merge key by key (JSON/CLI overrides of nested configs)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
        )
    return out


def stable_hash(obj, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict order: keys the caches of SPEC §3.1."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_root() -> Path:
    """Where zoos and derived data live: ``$MCDI_CACHE``, else ``$XDG_CACHE_HOME/peft_mcdi`` (never in the repo)."""
    env = os.environ.get("MCDI_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "peft_mcdi"


def compute_device() -> torch.device:
    """Where the benchmarks run base models and train generators: ``$MCDI_DEVICE`` (e.g. ``cuda``), else the CPU.
    An execution setting, like the thread count: it is in no configuration, so no cache key depends on it."""
    name = os.environ.get("MCDI_DEVICE") or "cpu"
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"$MCDI_DEVICE must name a torch device such as 'cpu' or 'cuda', got {name!r}.") from err


def to_device(tensors: Mapping, device: torch.device) -> dict:
    """``tensors`` with every tensor value on ``device`` (differentiably) and anything else unchanged."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


def unstacked(weights: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Weights with a leading task axis → one weight dict per task."""
    return [{k: v[j] for k, v in weights.items()} for j in range(next(iter(weights.values())).shape[0])]


class DictConfigMixin:
    """For config dataclasses: ``to_dict`` and a ``from_dict`` that names unknown keys and lists the allowed ones."""

    @classmethod
    def from_dict(cls, data: Mapping):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; allowed: {sorted(known)}.")
        return cls(**data)

    def nested_from_dicts(self) -> None:
        """Turn nested config fields given as dicts (JSON, YAML, ``--config`` overrides) into their config classes,
        known from the field's default; ``from_dict`` names any unknown key. Call first in ``__post_init__``."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict) and f.default_factory is not MISSING:
                default = f.default_factory()
                if isinstance(default, DictConfigMixin):
                    setattr(self, f.name, type(default).from_dict(value))

    def to_dict(self) -> dict:
        """``asdict``, less the fields marked ``metadata["omit_default"]`` while they hold their default. Those are
        fields added after caches keyed by this dict were written: leaving them out at their default keeps every
        earlier cache key (and so every finished zoo, generator and benchmark record) valid."""
        data = asdict(self)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("omit_default") and value == _field_default(f):
                del data[f.name]
            elif isinstance(value, DictConfigMixin):  # nested configs omit their own defaults too
                data[f.name] = value.to_dict()
        return data


def _field_default(f):
    return f.default_factory() if f.default is MISSING else f.default
