"""`mcdi card`: write or refresh a generator's model card from its metadata and results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peft_mcdi.cli.common import CommandError, load_generator


def add_parser(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "card",
        help="write or refresh a generator's model card (README.md) from its metadata and results",
        description="Render GENERATOR/README.md from the generator's metadata (base model, target modules, rank, "
        "training tasks, diffusion settings) and, when found, a results.json (held-out metric per method, "
        "generation latency): --results, else GENERATOR/results.json, else GENERATOR/../results.json (the layout "
        "that `mcdi train` writes).",
        formatter_class=fmt,
    )
    p.add_argument("--generator", required=True, metavar="DIR", help="local generator folder")
    p.add_argument("--results", metavar="JSON", help="results file (default: found next to the generator)")
    p.add_argument("--repo-id", help="Hub id to show in the usage snippet")
    p.set_defaults(func=cmd_card)


def find_results(generator_dir: Path, explicit: str | None) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"results file {explicit} does not exist")
        return path
    for candidate in (generator_dir / "results.json", generator_dir.parent / "results.json"):
        if candidate.is_file():
            return candidate
    return None


def cmd_card(args) -> int:
    from peft_mcdi.generator.model import CARD_NAME
    from peft_mcdi.pipeline import render_generator_card
    from peft_mcdi.utils import atomic_write_text

    folder = Path(args.generator)
    if not folder.is_dir():
        raise FileNotFoundError(f"no generator folder at {args.generator}")
    generator = load_generator(str(folder))
    results_path = find_results(folder, args.results)
    results = None
    if results_path is not None:
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CommandError(f"{results_path} is not valid JSON ({err})") from err
        if not isinstance(results, dict) or "heldout_metric" not in results:
            raise CommandError(
                f"{results_path} is not a results file of `mcdi train` / `mcdi eval` (no heldout_metric)"
            )
    atomic_write_text(folder / CARD_NAME, render_generator_card(generator, results, args.repo_id))
    print(f"wrote {folder / CARD_NAME}" + (f" with the results of {results_path}" if results_path else ""))
    return 0
