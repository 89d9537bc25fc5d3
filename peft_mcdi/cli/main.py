"""The ``mcdi`` command line: collect a trajectory zoo, train a generator, generate an adapter, evaluate, benchmark,
write a generator's model card.

    mcdi train --config examples/configs/logistic.yaml meta.num_outer_steps=300 output_dir=runs/x
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        -m peft_mcdi.cli train --config ...     # the same, sharded over 2 processes (CPU over gloo, or 2 GPUs)
    mcdi generate --generator runs/x/generator "Decide whether the word names a fish." --out adapters/fish
    mcdi eval --generator runs/x/generator --config examples/configs/logistic.yaml
    mcdi bench --run-dir runs/x          # pictures (PNG) and results.md next to runs/x/results.json
    mcdi bench --generator runs/x/generator
    mcdi card --generator runs/x/generator
    mcdi demo                            # a web page: describe a task, compare the answers

A user mistake (a missing file, a generator that does not fit the base model, an unknown config key) prints one
line on stderr and exits with status 1 (2 for a malformed command line); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from peft_mcdi.cli import bench, card, demo, generate, training
from peft_mcdi.cli.common import CONFIG_EPILOG


# Errors that come from what the user typed or pointed at; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, yaml.YAMLError, FloatingPointError, ImportError)


class _Parser(argparse.ArgumentParser):
    """argparse, but a malformed command line is one line (not usage + error) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n" if is_main_process() else None)


def build_parser(prog: str = "mcdi", command: str | None = None) -> argparse.ArgumentParser:
    """The ``mcdi`` parser; with ``command``, a script that is that one subcommand (``examples/train.py``) names
    itself ``prog`` in its usage and errors rather than ``prog command``."""
    from peft_mcdi.train import config_help

    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=prog, description=__doc__.split("\n\n")[0], formatter_class=fmt)
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    training.add_parsers(sub, CONFIG_EPILOG.format(keys=config_help()))
    generate.add_parser(sub)
    bench.add_parser(sub)
    card.add_parser(sub)
    demo.add_parser(sub)
    if command is not None:
        sub.choices[command].prog = prog
    return parser


def is_main_process() -> bool:
    """False in the non-main processes of a distributed launch (accelerate, torchrun set RANK before our code runs):
    every process meets the same user mistake, and one line from the main process says it."""
    return os.environ.get("RANK", "0") == "0"


def _version() -> str:
    from peft_mcdi import __version__

    return __version__


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror and err.filename:
        text = f"{err.strerror}: {err.filename}"
    return text


def main(argv: list[str] | None = None, prog: str = "mcdi", command: str | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it). ``command`` runs that
    subcommand on ``argv`` under the name ``prog`` (a script such as ``examples/train.py``)."""
    parser = build_parser(prog, command)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv if command is None else [command, *argv])
    except SystemExit as exit_:  # --help, --version, malformed command lines
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    debug = args.debug or os.environ.get("MCDI_DEBUG") == "1"
    name = prog if command is not None else f"{prog} {args.command}"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if is_main_process():
            print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if debug:
            raise
        if is_main_process():
            print(f"{name}: error: {_one_line(err)}", file=sys.stderr)
        return 1
