"""The ``mcdi`` command line, one module per subcommand (``training``: collect/train/eval, ``generate``, ``bench``,
``card``) and ``main`` to parse and dispatch; ``python -m peft_mcdi.cli`` runs it too (e.g. under accelerate)."""

from peft_mcdi.cli.main import build_parser, main


__all__ = ["build_parser", "main"]
