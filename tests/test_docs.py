"""Every shell command in docs/*.md runs, in document order, in a scratch folder that holds `examples/` and
`benchmarks/`: `mcdi` commands in-process, with tiny overrides added to the commands that train (a few tasks and
steps); `examples/train.py` and the script that `accelerate launch` starts, in-process too. Commands marked "needs a
GPU", "needs the Hub", "needs the network" or "slow" go as far as they can without it: argument parsing, the
accelerate config file, a `--print-config` dry run. Python blocks run too, except those whose first line says they
cannot. The config tables of docs/configs.md are checked against the code, and every relative link resolves."""

import argparse
import importlib.util
import json
import re
import runpy
import shlex
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from peft_mcdi.cli import build_parser, main
from peft_mcdi.pipeline import PipelineConfig
from peft_mcdi.tasks.logistic import LogisticFamilyConfig
from peft_mcdi.train import NESTED, TrainArguments
from tests.launch import accelerate_launch


ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
DRY_MARKERS = ("needs a gpu", "needs the hub", "needs the network", "slow")
TINY = [
    "taskset_kwargs.num_train_tasks=8",
    "taskset_kwargs.num_test_tasks=3",
    "taskset_kwargs.num_train_examples=64",
    "taskset_kwargs.num_test_examples=200",
    "recorder.num_epochs=3",
    "denoiser.hidden_dim=16",
    "denoiser.num_layers=1",
    "meta.num_outer_steps=4",
    "meta.meta_batch_size=4",
    "meta.samples_per_task=4",
    "meta.log_every=2",
    "hypernetwork_steps=5",
    "progress=false",
]
CONFIG_COMMANDS = ("train", "collect", "eval")


# ----------------------------------------------------------------------------------------------- reading the docs
def blocks(path: Path) -> list[tuple[str, str]]:
    """The fenced blocks of a page, in order: (language, text)."""
    return re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def shell_commands(text: str) -> list[tuple[list[str], str]]:
    """(argv, comment) for each command of a bash block; backslash continuations are joined."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        code, _, comment = line.partition(" #")
        out.append((shlex.split(code), comment.strip()))
    return out


def is_dry(comment: str) -> bool:
    return any(marker in comment.lower() for marker in DRY_MARKERS)


def insert_overrides(args: list[str], extra: list[str]) -> list[str]:
    """``extra`` KEY=VALUE overrides after the command's own (argparse takes the overrides as one run of
    positionals, so they must be adjacent)."""
    positions = [i for i, a in enumerate(args) if "=" in a and not a.startswith("-")]
    at = positions[-1] + 1 if positions else len(args)
    return [*args[:at], *extra, *args[at:]]


def load_example_train():
    spec = importlib.util.spec_from_file_location("docs_example_train", Path("examples") / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ running them
class Runner:
    def __init__(self, capsys):
        self.capsys = capsys
        self.log: list[str] = []

    def run_cli(self, args: list[str], expect_failure: bool = False, stdout_to: str | None = None) -> str:
        self.capsys.readouterr()
        code = main(args)
        out, err = self.capsys.readouterr()
        if expect_failure:
            assert code == 1, f"mcdi {shlex.join(args)} was expected to fail"
            assert err.strip() and "\n" not in err.strip() and "Traceback" not in err, err
        else:
            assert code == 0, f"mcdi {shlex.join(args)} exited {code}: {err[-2000:]}"
        if stdout_to:
            Path(stdout_to).write_text(out)
        return out

    def parse_only(self, args: list[str]) -> argparse.Namespace:
        try:
            return build_parser().parse_args(args)
        except SystemExit as exit_:  # pragma: no cover - a malformed documented command
            raise AssertionError(f"mcdi {shlex.join(args)} does not parse") from exit_

    def mcdi(self, args: list[str], comment: str, stdout_to: str | None) -> None:
        dry, fails = is_dry(comment), "fails" in comment.lower()
        command = next((a for a in args if not a.startswith("-")), None)
        if "--help" in args or "--version" in args:
            out = self.run_cli(args)
            assert "usage:" in out or "mcdi" in out
            self.log.append(f"ran: mcdi {shlex.join(args)}")
            return
        if command in CONFIG_COMMANDS:
            if any("wordnet" in a for a in args):
                assert dry, f"mark `mcdi {shlex.join(args)}` slow: a WordNet run takes minutes"
            if dry:
                self.run_cli([*args, "--print-config"] if "--print-config" not in args else args, stdout_to=stdout_to)
                self.log.append(f"dry run (--print-config): mcdi {shlex.join(args)}")
                return
            args = insert_overrides(args, TINY)
        elif command == "demo":  # serves until stopped: parsed here, the page is driven by tests/test_demo.py
            dry = True
        elif command == "bench":
            if "--engine" in args:
                assert dry, "mark `mcdi bench --engine` slow"
            if not dry:
                args = [*args, "--repeats", "3"]
        if dry:
            self.parse_only(args)
            self.log.append(f"parsed: mcdi {shlex.join(args)}")
            return
        self.run_cli(args, expect_failure=fails, stdout_to=stdout_to)
        self.log.append(f"ran: mcdi {shlex.join(args)}")

    def train_script(self, args: list[str], dry: bool) -> None:
        """examples/train.py in-process: what `python examples/train.py` and each launched process run."""
        if any("wordnet" in a for a in args):
            assert dry, "mark WordNet runs slow"
        args = [*args, "--print-config"] if dry else insert_overrides(args, TINY)
        self.capsys.readouterr()
        code = load_example_train().run(args)
        _, err = self.capsys.readouterr()
        assert code == 0, err[-2000:]

    def python(self, argv: list[str], comment: str) -> None:
        script, args = argv[1], argv[2:]
        if script == "examples/train.py":
            self.train_script(args, is_dry(comment))
            self.log.append(f"{'dry run' if is_dry(comment) else 'ran'}: python {shlex.join(argv[1:])}")
            return
        assert script.startswith("benchmarks/") and is_dry(comment), f"mark `{shlex.join(argv)}` slow"
        self.parse_benchmark(script, args)
        self.log.append(f"parsed: python {shlex.join(argv[1:])}")

    def parse_benchmark(self, script: str, args: list[str]) -> None:
        """Run the script until its ArgumentParser has parsed the documented arguments, then stop it."""

        class Parsed(Exception):
            pass

        original = argparse.ArgumentParser.parse_args

        def parse_and_stop(parser, args=None, namespace=None):
            original(parser, args, namespace)
            raise Parsed

        argv, sys.argv = sys.argv, [script, *args]
        argparse.ArgumentParser.parse_args = parse_and_stop
        try:
            with pytest.raises(Parsed):
                runpy.run_path(script, run_name="__main__")
        finally:
            argparse.ArgumentParser.parse_args = original
            sys.argv = argv

    def accelerate(self, argv: list[str], comment: str) -> None:
        from accelerate.commands.config.config_args import load_config_from_file
        from accelerate.commands.launch import launch_command_parser

        assert argv[1] == "launch", argv
        ns = launch_command_parser().parse_args(argv[2:])
        if ns.config_file:
            load_config_from_file(ns.config_file)  # a valid accelerate config file
        launched = ns.training_script_args
        several = ns.multi_gpu or ns.config_file or (ns.num_processes or 1) > 1
        if "tests/examples/test_train.py" in comment:
            # the documented CPU line is the launch prefix that test runs (less its free-port choice)
            tested = accelerate_launch(2)[3:]
            port = tested.index("--main_process_port")
            tested = tested[:port] + tested[port + 2 :]
            assert argv[2 : 2 + len(tested)] == tested, "docs and tests/launch.py launch differently"
        else:
            assert not several or is_dry(comment), f"mark `{shlex.join(argv)}` (several processes) needs a GPU"
        dry = is_dry(comment) or bool(several)
        if ns.module:
            assert ns.training_script == "peft_mcdi.cli", ns.training_script
            self.mcdi(launched, "slow" if dry else comment, None)
        else:
            assert ns.training_script == "examples/train.py", ns.training_script
            self.train_script(launched, dry)
        self.log.append(f"{'parsed + dry run' if dry else 'ran (one process, in-process)'}: {shlex.join(argv)}")

    def tensorboard(self, argv: list[str]) -> None:
        assert importlib.util.find_spec("tensorboard") is not None
        logdir = Path(argv[argv.index("--logdir") + 1])
        assert list(logdir.rglob("events.out.tfevents.*")), f"no TensorBoard events in {logdir}"
        self.log.append(f"checked: {shlex.join(argv)} (events present)")

    def pip(self, argv: list[str], comment: str) -> None:
        assert is_dry(comment) and argv[:3] == ["pip", "install", "-e"], argv
        target = argv[3]
        extras = re.fullmatch(r"\.\[([\w,-]+)\]", target).group(1).split(",")
        setup = (ROOT / "setup.py").read_text()
        for extra in extras:
            assert re.search(rf'"{extra}":\s*\[', setup), f"setup.py has no extra {extra!r}"
        self.log.append(f"checked extras: {shlex.join(argv)}")

    def shell(self, argv: list[str], comment: str) -> None:
        stdout_to = None
        if ">" in argv:
            at = argv.index(">")
            argv, stdout_to = argv[:at], argv[at + 1]
        program = argv[0]
        if program == "mcdi":
            self.mcdi(argv[1:], comment, stdout_to)
        elif program == "python":
            self.python(argv, comment)
        elif program == "accelerate":
            self.accelerate(argv, comment)
        elif program == "tensorboard":
            self.tensorboard(argv)
        elif program == "pip":
            self.pip(argv, comment)
        else:
            pytest.fail(f"tests/test_docs.py does not know how to exercise `{shlex.join(argv)}`: add a handler")

    def python_block(self, name: str, code: str) -> None:
        first = code.splitlines()[0].lower()
        compiled = compile(code, name, "exec")
        if first.startswith("#") and ("not run" in first or is_dry(first)):
            self.log.append(f"compiled: {name}")
            return
        exec(compiled, {"__name__": "__docs__"})
        self.log.append(f"ran: {name}")


def is_custom_family(code: str) -> bool:
    return "@register_tasksets(" in code


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A folder with the checkout's examples/ and benchmarks/, as the current directory; one torch thread (tiny
    models run faster on one thread, and other work on the machine cannot oversubscribe it)."""
    for name in ("examples", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


@pytest.mark.parametrize("page", [p.name for p in DOCS if any(lang == "bash" for lang, _ in blocks(p))])
def test_doc_commands_run(page, scratch, capsys):
    runner = Runner(capsys)
    for i, (lang, text) in enumerate(blocks(ROOT / "docs" / page)):
        if lang == "bash":
            for argv, comment in shell_commands(text):
                runner.shell(argv, comment)
        elif lang == "python" and not is_custom_family(text):
            runner.python_block(f"docs/{page}:block{i}", text)
    with capsys.disabled():
        print(f"\n{page}:\n  " + "\n  ".join(runner.log))
    assert runner.log


def test_custom_family_example_runs_and_learns(scratch, capsys):
    """training.md's own-family example: a complete family, registered and run through the pipeline."""
    (code,) = [
        text for lang, text in blocks(ROOT / "docs" / "training.md") if lang == "python" and is_custom_family(text)
    ]
    namespace = {"__name__": "__docs__"}
    exec(compile(code, "docs/training.md:custom-family", "exec"), namespace)
    metric = namespace["results"]["heldout_metric"]
    # what the page says: better than the nearest training task and the one-pass hypernetwork (0.137 vs 0.406 and
    # 0.199 when written), and far better than the mean of the zoo
    assert metric["generated"] < min(metric["nearest_task"], metric["hypernetwork"], metric["mean_of_zoo"])
    assert (scratch / "runs" / "lines" / "generator" / "model.safetensors").is_file()


def test_quickstart_output_sample_has_every_method():
    text = (ROOT / "docs" / "quickstart.md").read_text()
    sample = next(t for lang, t in blocks(ROOT / "docs" / "quickstart.md") if lang == "" and "held-out loss" in t)
    methods = {line.split()[0] for line in sample.splitlines()[2:] if line and not line.startswith("generation")}
    assert methods == {"generated", "nearest_task", "mean_of_zoo", "init", "per_task_reference", "hypernetwork"}
    assert "mcdi bench --run-dir runs/quick" in text


# ---------------------------------------------------------------------------------------------- static checks
def table_rows(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", text, flags=re.M))


def test_config_tables_match_the_code():
    rows = table_rows((ROOT / "docs" / "configs.md").read_text(encoding="utf-8"))
    expected = {}
    pipeline = PipelineConfig()
    for f in fields(PipelineConfig):
        if f.name in NESTED:
            section = getattr(pipeline, f.name)
            expected.update({f"{f.name}.{g.name}": getattr(section, g.name) for g in fields(NESTED[f.name])})
        else:
            expected[f.name] = getattr(pipeline, f.name)
    expected.update({f.name: getattr(TrainArguments(), f.name) for f in fields(TrainArguments)})
    expected.update({f.name: f.default for f in fields(LogisticFamilyConfig) if f.name not in expected})
    documented = {k: json.loads(v) for k, v in rows.items()}
    assert set(documented) == set(expected), set(documented) ^ set(expected)
    for key, value in documented.items():
        if key in {f.name for f in fields(LogisticFamilyConfig)}:
            assert value == getattr(LogisticFamilyConfig(), key), key
        else:
            assert value == expected[key], key


def test_relative_links_resolve():
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]*)(?:#([\w-]+))?\)", text):
            path, anchor = target
            if path.startswith(("http://", "https://")):
                continue
            resolved = (page.parent / path) if path else page
            assert resolved.exists(), f"{page.name}: broken link {path}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", resolved.read_text(encoding="utf-8"), flags=re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
                assert anchor in slugs, f"{page.name}: no heading #{anchor} in {resolved.name}"


def test_every_page_is_linked_from_the_others():
    names = {p.name for p in DOCS}
    assert {"concepts.md", "quickstart.md", "training.md", "configs.md", "distributed.md", "results.md"} <= names
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        assert {n for n in names - {page.name} if f"]({n}" in text} == names - {page.name}, page.name


def test_helpers():
    assert insert_overrides(["train", "--config", "c", "a=1", "--print-config"], ["b=2"]) == [
        "train", "--config", "c", "a=1", "b=2", "--print-config"
    ]  # fmt: skip
    assert insert_overrides(["eval", "--generator", "g"], ["b=2"]) == ["eval", "--generator", "g", "b=2"]
    assert shell_commands("mcdi a \\\n   b  # needs a GPU\n# note\n") == [(["mcdi", "a", "b"], "needs a GPU")]
