"""On-disk trajectory zoo: one safetensors file per task plus a JSONL manifest (SPEC §3.1).

Layout of a zoo folder::

    zoo_config.json            what determined the zoo (its hash is the folder name's suffix)
    tasks/<task_id>.safetensors  "epoch_<e>/<param>" tensors for every kept epoch, "condition", JSON metadata
    manifest.jsonl             one line per finished task (id, file, sha256, epochs, final loss)

Every file is written to a temporary name and renamed, so a task file exists only once it is complete: "is this
task done?" is "does its file exist?", which is what makes collection resumable after SIGKILL. Reading verifies the
file (a truncated or damaged file is reported by name, never skipped) and that every tensor is finite.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from peft_mcdi.utils import atomic_write, atomic_write_text, file_sha256, stable_hash


ZOO_CONFIG_NAME = "zoo_config.json"
MANIFEST_NAME = "manifest.jsonl"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._=+-]+$")


class ZooCorruptError(ValueError):
    """A zoo file cannot be read or holds invalid values; the message names the file and what is wrong."""


@dataclass
class TaskTrajectory:
    """A task's recorded checkpoints: ``params[name]`` is (num_kept_epochs, *shape), rows ordered like ``epochs``."""

    task_id: str
    condition: torch.Tensor
    epochs: list[int]
    params: dict[str, torch.Tensor]
    metadata: dict

    def at_epochs(self, epochs: list[int]) -> dict[str, torch.Tensor]:
        """The checkpoints after the given epochs, stacked: {name: (len(epochs), *shape)}."""
        missing = [e for e in epochs if e not in self.epochs]
        if missing:
            raise ValueError(f"task {self.task_id!r} kept epochs {self.epochs}, not {missing}.")
        rows = torch.tensor([self.epochs.index(e) for e in epochs])
        return {name: value[rows] for name, value in self.params.items()}


class ZooStore:
    """A zoo folder. ``ZooStore.open(root, config)`` creates it or checks that it was made with the same config."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.task_dir = self.root / "tasks"

    @classmethod
    def open(cls, root: str | Path, config: dict) -> ZooStore:
        store = cls(root)
        store.task_dir.mkdir(parents=True, exist_ok=True)
        path = store.root / ZOO_CONFIG_NAME
        record = {"hash": stable_hash(config), "config": config}
        if path.exists():
            existing = json.loads(path.read_text(encoding="utf-8"))
            if existing.get("hash") != record["hash"]:
                raise ValueError(
                    f"{store.root} holds a zoo made with a different configuration (hash {existing.get('hash')} vs "
                    f"{record['hash']}); use another folder or delete it."
                )
        else:
            atomic_write_text(path, json.dumps(record, indent=2, default=str))
        return store

    @property
    def config(self) -> dict:
        return json.loads((self.root / ZOO_CONFIG_NAME).read_text(encoding="utf-8"))["config"]

    def path(self, task_id: str) -> Path:
        if not _SAFE_ID.match(task_id):
            raise ValueError(f"task_id {task_id!r} must match {_SAFE_ID.pattern} (it becomes a file name).")
        return self.task_dir / f"{task_id}.safetensors"

    def has(self, task_id: str) -> bool:
        return self.path(task_id).is_file()

    def task_ids(self) -> list[str]:
        return sorted(p.name[: -len(".safetensors")] for p in self.task_dir.glob("*.safetensors"))

    # ------------------------------------------------------------------ write
    def write(
        self,
        task_id: str,
        checkpoints: dict[int, dict[str, torch.Tensor]],
        condition: torch.Tensor,
        metadata: dict | None = None,
    ) -> Path:
        """Atomically write one task: ``checkpoints`` maps epoch → parameter dict."""
        tensors = {"condition": condition.detach().float().cpu().contiguous()}
        for epoch, params in checkpoints.items():
            for name, value in params.items():
                if not torch.isfinite(value).all():
                    raise ValueError(f"task {task_id!r}: {name} after epoch {epoch} is not finite; not writing it.")
                tensors[f"epoch_{epoch}/{name}"] = value.detach().float().cpu().contiguous()
        meta = {"task_id": task_id, "epochs": sorted(checkpoints), **(metadata or {})}
        path = self.path(task_id)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"mcdi": json.dumps(meta)}))
        return path

    def write_manifest(self) -> Path:
        """(Re)build manifest.jsonl from the task files; cheap enough to run after every collection."""
        lines = []
        for task_id in self.task_ids():
            path = self.path(task_id)
            meta = self._read_metadata(path)
            lines.append(
                json.dumps(
                    {
                        "task_id": task_id,
                        "file": f"tasks/{path.name}",
                        "sha256": file_sha256(path),
                        "epochs": meta["epochs"],
                        "final_loss": meta.get("final_loss"),
                    }
                )
            )
        out = self.root / MANIFEST_NAME
        atomic_write_text(out, "".join(line + "\n" for line in lines))
        return out

    # ------------------------------------------------------------------- read
    @staticmethod
    def _read_metadata(path: Path) -> dict:
        try:
            with safe_open(path, framework="pt") as f:
                return json.loads(f.metadata()["mcdi"])
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError, TypeError) as err:
            raise ZooCorruptError(f"zoo file {path} is corrupt or truncated ({err}); delete it to recollect.") from err

    def read(self, task_id: str) -> TaskTrajectory:
        path = self.path(task_id)
        if not path.is_file():
            raise FileNotFoundError(f"task {task_id!r} has not been collected into {self.root}.")
        meta = self._read_metadata(path)
        try:
            with safe_open(path, framework="pt") as f:
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except (SafetensorError, OSError) as err:
            raise ZooCorruptError(f"zoo file {path} is corrupt or truncated ({err}); delete it to recollect.") from err
        for key, value in tensors.items():
            if not torch.isfinite(value).all():
                raise ZooCorruptError(f"zoo file {path}: tensor {key!r} holds NaN or inf values.")
        epochs = meta["epochs"]
        names = [k.split("/", 1)[1] for k in tensors if k.startswith(f"epoch_{epochs[0]}/")]
        params = {n: torch.stack([tensors[f"epoch_{e}/{n}"] for e in epochs]) for n in names}
        return TaskTrajectory(task_id, tensors["condition"], epochs, params, meta)
