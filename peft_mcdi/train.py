"""The training entry point shared by ``examples/train.py`` and ``mcdi train`` / ``mcdi collect``.

A run is configured by a YAML file whose top-level keys are the fields of
:class:`~peft_mcdi.pipeline.PipelineConfig` (nested sections ``recorder``, ``scheduler``, ``denoiser``, ``meta``)
and of :class:`TrainArguments` (logging and process options), plus command-line overrides ``key=value`` with dotted
keys (``meta.num_outer_steps=50``). Values are YAML (``null``, ``true``, ``[1, 2]``) and are converted to the
field's type (``1e-3`` is a float for a float field). Keys that are not fields are refused with the list of allowed
keys. Omitted keys keep :class:`PipelineConfig`'s defaults.

The run itself is :func:`~peft_mcdi.pipeline.run_pipeline` under an ``accelerate.Accelerator``: the same command
works as ``python``, ``accelerate launch`` with one process, or several processes (CPU over gloo, or GPUs).
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union

import torch
import yaml

from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.schedulers import SchedulerConfig
from peft_mcdi.meta.chain import ChainFinetuneConfig
from peft_mcdi.meta.trainer import MetaTrainConfig
from peft_mcdi.pipeline import PipelineConfig, format_results, prepare_zoo, run_pipeline
from peft_mcdi.utils import DictConfigMixin, atomic_write_text
from peft_mcdi.zoo.recorder import RecorderConfig


@dataclass
class TrainArguments(DictConfigMixin):
    """Options of the run itself (not of what is trained); same YAML file and overrides as the pipeline keys."""

    log_with: str = field(
        default="auto",
        metadata={
            "help": "accelerate trackers: 'auto' (TensorBoard when installed and output_dir or logging_dir is set), "
            "'none', or comma-separated names such as 'tensorboard' or 'tensorboard,wandb'."
        },
    )
    project_name: str = field(default="mcdi", metadata={"help": "Tracker project (run) name."})
    logging_dir: str | None = field(default=None, metadata={"help": "Tracker folder (default: <output_dir>/logs)."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars (tasks, steps, loss, ETA)."})
    cpu: bool | None = field(default=None, metadata={"help": "Force CPU (null: CPU only when there is no GPU)."})
    num_threads: int | None = field(
        default=None,
        metadata={"help": "torch intra-op threads per process (null: torch's default); fix it to compare runs."},
    )


# the sections of PipelineConfig that are config dataclasses themselves
NESTED = {
    "recorder": RecorderConfig,
    "scheduler": SchedulerConfig,
    "denoiser": DenoiserConfig,
    "meta": MetaTrainConfig,
    "chain": ChainFinetuneConfig,
}


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def allowed_keys() -> list[str]:
    return sorted([f.name for f in fields(PipelineConfig)] + [f.name for f in fields(TrainArguments)])


def _coerce(value, annotation, key: str):
    """``value`` converted to ``annotation`` (the field's type) where YAML gave a near miss ("1e-3", 1 for 1.0)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0])
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(f"{key} must be one of {list(args)}, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, str):
            try:
                return annotation(value)
            except ValueError:
                pass
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (annotation is float or float(value).is_integer())  # 3.0 is an int; 3.5 is not
        ):
            return annotation(value)
        raise ValueError(f"{key} must be {'an integer' if annotation is int else 'a number'}, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{key} must be a string, got {value!r}")
    if annotation is dict or origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise ValueError(f"{key} must be a mapping (key: value), got {value!r}")
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ValueError(f"{key} must be a list, got {value!r}")
    return value


def _check_section(cls, data: Mapping, prefix: str, source: str) -> dict:
    """``data`` restricted to ``cls``'s fields (names checked, values coerced); a wrong key names itself."""
    hints = _field_types(cls)
    known = [f.name for f in fields(cls)]
    out = {}
    for key, value in data.items():
        if key not in known:
            where = f"under '{prefix[:-1]}'" if prefix else "at the top level"
            raise ValueError(
                f"unknown config key '{prefix}{key}' ({source}); allowed keys {where}: {', '.join(sorted(known))}"
            )
        out[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return out


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value (e.g. meta.num_outer_steps=50)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip().split("."), value))
    return parsed


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = ()
) -> tuple[PipelineConfig, TrainArguments]:
    """Read a YAML config (or none: the defaults) and apply ``key=value`` overrides; see the module docstring."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ValueError(f"{path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} must hold a mapping of config keys, not a {type(loaded).__name__}")
        data, source = loaded, f"in {path}"
    _check_keys(data, source)
    for keys, value in parse_overrides(overrides):
        target = data
        for depth, part in enumerate(keys[:-1]):
            dotted = ".".join(keys[: depth + 1])
            if depth == 0 and part not in NESTED and part != "taskset_kwargs":
                raise ValueError(
                    f"unknown config key '{'.'.join(keys)}' (command line); only {', '.join(sorted(NESTED))} and "
                    f"taskset_kwargs have sub-keys; allowed top-level keys: {', '.join(allowed_keys())}"
                )
            if depth > 0:
                raise ValueError(f"config key '{'.'.join(keys)}' (command line) is nested too deeply ({dotted})")
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"config key '{dotted}' is not a section; cannot set '{'.'.join(keys)}'")
        target[keys[-1]] = value
        _check_keys(data, "command line")
    return _build(data)


def _check_keys(data: Mapping, source: str) -> None:
    pipeline_keys = {f.name for f in fields(PipelineConfig)}
    script_keys = {f.name for f in fields(TrainArguments)}
    for key, value in data.items():
        if key not in pipeline_keys | script_keys:
            raise ValueError(
                f"unknown config key '{key}' ({source}); allowed top-level keys: {', '.join(allowed_keys())}"
            )
        if key in NESTED:
            if not isinstance(value, Mapping):
                raise ValueError(f"config key '{key}' ({source}) must be a section (key: value), got {value!r}")
            _check_section(NESTED[key], value, f"{key}.", source)


def _build(data: Mapping) -> tuple[PipelineConfig, TrainArguments]:
    script_keys = {f.name for f in fields(TrainArguments)}
    base = PipelineConfig().to_dict()
    pipeline = {}
    for key, value in data.items():
        if key in script_keys:
            continue
        if key in NESTED:
            # a section left at its defaults is omitted from to_dict() (e.g. chain): start from its own defaults
            defaults = base.get(key, NESTED[key]().to_dict())
            pipeline[key] = {**defaults, **_check_section(NESTED[key], value, f"{key}.", "config")}
        elif key == "taskset_kwargs":
            pipeline[key] = _coerce(value, dict, key)
        else:
            pipeline[key] = value
    pipeline = _check_section(PipelineConfig, pipeline, "", "config")
    script = _check_section(TrainArguments, {k: v for k, v in data.items() if k in script_keys}, "", "config")
    try:
        return PipelineConfig(**pipeline), TrainArguments(**script)
    except TypeError as err:  # a nested config rejected a value's type
        raise ValueError(str(err)) from err


def dump_config(config: PipelineConfig, args: TrainArguments) -> str:
    """The resolved configuration as YAML (the file that reruns it)."""
    return yaml.safe_dump({**config.to_dict(), **args.to_dict()}, sort_keys=False)


def config_help() -> str:
    """Every config key with its help string and default, for ``--help``."""
    lines = []

    def add(cls, prefix: str, defaults) -> None:
        for f in fields(cls):
            if prefix == "" and f.name in NESTED:
                add(NESTED[f.name], f"{f.name}.", getattr(defaults, f.name))
                continue
            default = getattr(defaults, f.name)
            text = f.metadata.get("help", "")
            lines.append(f"  {prefix + f.name:<30} {text} (default: {json.dumps(default, default=str)})")

    add(PipelineConfig, "", PipelineConfig())
    add(TrainArguments, "", TrainArguments())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- the run
def resolve_trackers(args: TrainArguments, output_dir: str | None) -> tuple[list[str], str | None]:
    """The tracker names and their folder for ``args.log_with``."""
    from accelerate.utils import LoggerType

    logging_dir = args.logging_dir or (str(Path(output_dir) / "logs") if output_dir else None)
    choice = (args.log_with or "none").strip().lower()
    if choice == "none":
        return [], logging_dir
    if choice == "auto":
        from accelerate.utils import is_tensorboard_available

        return (["tensorboard"] if is_tensorboard_available() and logging_dir else []), logging_dir
    names = [n.strip() for n in choice.split(",") if n.strip()]
    valid = sorted(str(t.value) for t in LoggerType)
    for name in names:
        if name not in valid:
            raise ValueError(f"log_with: unknown tracker {name!r}; allowed: auto, none, {', '.join(valid)}")
    if "tensorboard" in names and logging_dir is None:
        raise ValueError("log_with=tensorboard needs output_dir or logging_dir (where the event files go)")
    return names, logging_dir


def make_accelerator(args: TrainArguments, output_dir: str | None):
    """An ``Accelerator`` for this process layout (CPU when there is no GPU, or when ``args.cpu``)."""
    from accelerate import Accelerator

    trackers, logging_dir = resolve_trackers(args, output_dir)
    cpu = (not torch.cuda.is_available()) if args.cpu is None else args.cpu
    return Accelerator(cpu=cpu, log_with=trackers or None, project_dir=logging_dir)


def _flat_hparams(data: Mapping, prefix: str = "") -> dict:
    """Nested config → flat scalars (what TensorBoard's hparams accept)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flat_hparams(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = json.dumps(value, default=str)
    return out


def run_training(config: PipelineConfig, args: TrainArguments, stage: Literal["all", "collect"] = "all") -> dict:
    """Run the pipeline (or only its collection stage) under an accelerator; returns the results on the main
    process and ``{}`` on the others. Safe to rerun after a kill: it continues where it stopped."""
    threads = torch.get_num_threads()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        return _run(config, args, stage)
    finally:
        torch.set_num_threads(threads)  # leave an in-process caller (a notebook, a test) as it was


def _run(config: PipelineConfig, args: TrainArguments, stage: str) -> dict:
    accelerator = make_accelerator(args, config.output_dir)

    def log(message: str) -> None:
        if accelerator.is_main_process:
            print(message, flush=True)

    if accelerator.is_main_process and config.output_dir:
        atomic_write_text(Path(config.output_dir) / "train_config.yaml", dump_config(config, args))
    if accelerator.log_with:
        accelerator.init_trackers(args.project_name, config=_flat_hparams(config.to_dict()))
    progress = args.progress and sys.stderr is not None
    try:
        if stage == "collect":
            store, by_process = prepare_zoo(config, None, accelerator, progress, log)
            return {"zoo": str(store.root), "zoo_collected_by_process": by_process}
        log(
            f"mcdi train: task set {config.taskset}, {accelerator.num_processes} process(es) on "
            f"{accelerator.device}, output {config.output_dir or '(not saved)'}"
        )
        results = run_pipeline(config, progress=progress, log=log, accelerator=accelerator)
        if accelerator.is_main_process:
            log(format_results(results))
            if config.output_dir:
                log(f"generator: {Path(config.output_dir) / 'generator'}")
                log(f"results: {Path(config.output_dir) / 'results.json'}")
        return results
    finally:
        accelerator.end_training()


__all__ = [
    "TrainArguments",
    "allowed_keys",
    "config_help",
    "dump_config",
    "load_config",
    "make_accelerator",
    "run_training",
]
