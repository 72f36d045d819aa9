"""The documented commands work: every block marked `<!-- runnable -->` in the README and QUICKSTART is run.

The commands run in this interpreter, with the working directory at an empty temporary folder standing in for
a fresh clone's root, and training shortened to a few steps. A runnable command the mapping in `_runner` does
not know fails the test, so a new command cannot go into the docs untested.
"""

from __future__ import annotations

import glob
import re
import shlex

import pytest

from blueberry_video import cli
from tests.conftest import REPO_ROOT

RUNNABLE_DOCS = ("README.md", "QUICKSTART.md")
MARKER = "<!-- runnable -->"
SHORT_TRAINING = ["--max_train_steps", "4"]
# Inline `paths` the docs promise a run leaves behind, checked after the commands ran.
OUTPUT_PATH = re.compile(r"`((?:\.blueberry|outputs|experiments)/[\w./*-]+)`")


def runnable_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks whose opening fence follows a MARKER line."""
    return re.findall(rf"^{re.escape(MARKER)}\n```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[list[str]]:
    joined = block.replace("\\\n", " ")
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(doc, argv) in reading order; a command in several docs runs once, where it first appears."""
    seen, found = set(), []
    for doc in RUNNABLE_DOCS:
        for block in runnable_blocks((REPO_ROOT / doc).read_text()):
            for argv in commands(block):
                if tuple(argv) not in seen:
                    seen.add(tuple(argv))
                    found.append((doc, argv))
    return found


def _runner(argv: list[str]):
    """How this test runs a documented command, or None where it does not know."""
    match argv:
        case ["bash", "scripts/test.sh", *_]:
            return lambda: None  # running the suite from inside it would recurse: test_ci_runs_the_test_script
        case ["bash", "scripts/demo.sh", *flags]:
            return lambda: cli.main(["demo", *flags, *SHORT_TRAINING])  # what the script execs, after setting up .venv
        case ["source", ".venv/bin/activate"]:
            return lambda: None  # this interpreter already has the package
        case ["blueberry-video", ("demo" | "train") as verb, *rest]:
            return lambda: cli.main([verb, *rest, *SHORT_TRAINING])
        case ["blueberry-video", *rest]:
            return lambda: cli.main(rest)
    return None


def test_every_runnable_command_is_known_and_parses():
    found = documented_commands()
    assert any(doc == "QUICKSTART.md" for doc, _ in found) and any(doc == "README.md" for doc, _ in found)
    for doc, argv in found:
        assert _runner(argv) is not None, (
            f"{doc}: runnable command {shlex.join(argv)!r} is not one tests/test_docs.py knows how to run; "
            f"add it to _runner, or remove the {MARKER} line if it needs a GPU, real weights or data")
        if argv[0] == "blueberry-video":
            cli.build_parser().parse_known_args(argv[1:])


def test_ci_runs_the_test_script():
    assert "bash scripts/test.sh" in (REPO_ROOT / ".ci" / "run").read_text().splitlines()


def test_demo_script_runs_the_demo_verb_with_its_arguments():
    assert 'blueberry-video" demo "$@"' in (REPO_ROOT / "scripts" / "demo.sh").read_text()


@pytest.mark.slow
def test_runnable_commands_run_and_leave_the_documented_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for doc, argv in documented_commands():
        print(f"{doc}: {shlex.join(argv)}")
        _runner(argv)()
    for doc in RUNNABLE_DOCS:
        for path in OUTPUT_PATH.findall((REPO_ROOT / doc).read_text()):
            assert glob.glob(path) or glob.glob(str(REPO_ROOT / path)), f"{doc} names {path}; the commands did not write it"
