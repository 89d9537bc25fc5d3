"""What the subcommands share: the user-mistake error, the run-config arguments, loading a generator and the
sampling options."""

from __future__ import annotations

import argparse


class CommandError(ValueError):
    """A user mistake detected by the CLI itself."""


CONFIG_EPILOG = """\
The configuration is a YAML file (--config) whose keys are listed below, then KEY=VALUE overrides (dotted keys for
sections, values in YAML syntax). Omitted keys keep their defaults; an unknown key is refused with the allowed ones.

config keys:
{keys}
"""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="run configuration file (default: built-in defaults)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. meta.num_outer_steps=50"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration as YAML and exit (a dry run)"
    )


def load_run_config(args):
    from peft_mcdi.train import dump_config, load_config

    config, train_args = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(config, train_args), end="")
        return None
    return config, train_args


def load_generator(name_or_path: str, revision: str | None = None, device: str = "cpu"):
    """A generator from a folder or a Hub id; a path that does not exist is a clear error, not a Hub lookup."""
    from peft_mcdi.generator.model import McDiGenerator

    return McDiGenerator.from_pretrained(name_or_path, revision=revision, device=device)


def sampling_options(args) -> dict:
    return {"sampler": args.sampler, "num_inference_steps": args.num_steps}
