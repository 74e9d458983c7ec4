"""The commands in README.md and docs/*.md run as written: every script they name exists and takes every --flag
they pass, every `make` target exists, and the README stays short."""
from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3"}
_FENCE = re.compile(r"^```(\S*)\s*$")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks marked bash, sh, shell or console."""
    blocks, lines, language = [], None, ""
    for line in text.splitlines():
        fence = _FENCE.match(line.strip())
        if fence and lines is None:
            lines, language = [], fence.group(1).lower()
        elif fence and not fence.group(1):
            if language in SHELL_LANGUAGES:
                blocks.append("\n".join(lines))
            lines = None
        elif lines is not None:
            lines.append(line)
    return blocks


def commands(block: str) -> list[list[str]]:
    """Each simple command of a shell block as its words: continuation lines joined, comments dropped, split at
    `&&`, `||`, `;` and `|`; a `$ ` prompt is removed."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"^\s*\$ ", "", line)
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        current: list[str] = []
        for word in words + [";"]:
            if word in {"&&", "||", ";", "|"}:
                if current:
                    found.append(current)
                current = []
            else:
                current.append(word)
    return found


class _Parser(BaseException):
    """Raised by the patched parse_args: carries the parser a script built (a BaseException, so that no script's
    `except Exception` swallows it)."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


@cache
def script_parser(script: str) -> argparse.ArgumentParser:
    """The argparse parser `script` parses its command line with, taken at the moment its `main` parses."""
    if script == "scripts/pretrain.py":
        from endovit.recipe import build_parser

        return build_parser()
    namespace = runpy.run_path(str(REPO / script), run_name="endovit_docs_check")  # not __main__: nothing runs

    def capture(self, args=None, namespace=None):
        raise _Parser(self)

    saved = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args, sys.argv
    argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_known_args = capture
    sys.argv = [script]
    try:
        namespace["main"]()
    except _Parser as found:
        return found.parser
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args, sys.argv = saved
    raise AssertionError(f"{script}: main() returned without parsing a command line")


@cache
def accelerate_launch_parser() -> argparse.ArgumentParser:
    from accelerate.commands.launch import launch_command_parser

    return launch_command_parser()


@cache
def make_targets() -> frozenset[str]:
    text = (REPO / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.MULTILINE))


def _flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--") and w != "--"]


def _unknown(parser: argparse.ArgumentParser, flags: list[str]) -> list[str]:
    return [f for f in flags if f not in parser._option_string_actions]


def _script_index(words: list[str]) -> int | None:
    for i, word in enumerate(words):
        if re.fullmatch(r"scripts/[\w.-]+\.(py|sh)", word):
            return i
    return None


def check_command(words: list[str]) -> list[str]:
    """What is wrong with one command (empty when it runs as written as far as names go)."""
    problems = []
    program = Path(words[0]).name
    if program == "make":
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        problems += [f"make target {t!r} is not in the Makefile" for t in targets if t not in make_targets()]
        return problems
    at = _script_index(words)
    launcher = program == "accelerate" and len(words) > 1 and words[1] == "launch"
    if at is None or not (program in PYTHONS or launcher or program in {"bash", "sh"}):
        return problems
    script = words[at]
    if not (REPO / script).is_file():
        return [f"{script} does not exist"]
    if launcher:
        problems += [f"accelerate launch takes no {f}" for f in _unknown(accelerate_launch_parser(),
                                                                          _flags(words[2:at]))]
    if script.endswith(".sh"):
        return problems
    rest = words[at + 1:]
    inner = _script_index(rest) if script == "scripts/launch_sagemaker.py" else None
    own, passed_on = (rest, []) if inner is None else (rest[:inner], rest[inner:])
    problems += [f"{script} takes no {f}" for f in _unknown(script_parser(script), _flags(own))]
    if passed_on:
        problems += check_command(["python", *passed_on])
    return problems


def check_markdown(text: str) -> list[str]:
    return [f"`{' '.join(words)}`: {problem}"
            for block in shell_blocks(text) for words in commands(block) for problem in check_command(words)]


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, over {README_MAX_LINES}: move detail into docs/"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_doc_commands_name_real_scripts_flags_and_targets(doc):
    assert check_markdown(doc.read_text()) == []


@pytest.mark.parametrize("doc", sorted((REPO / "docs").glob("*.md")), ids=lambda p: p.name)
def test_doc_page_opens_with_what_the_reader_can_do(doc):
    first = next(line for line in doc.read_text().splitlines() if line.strip() and not line.startswith("#"))
    assert first.startswith("After reading this you can"), f"{doc.name} opens with {first!r}"


def test_the_sdist_carries_the_docs():
    from setuptools.command.egg_info import FileList

    wanted = [str(p.relative_to(REPO)) for p in [*doc_files(), REPO / "CHANGELOG.md"]]
    files = FileList()
    files.allfiles = list(wanted)  # MANIFEST.in's rules, applied to just these files
    for line in (REPO / "MANIFEST.in").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            files.process_template_line(line)
    assert sorted(set(wanted) - set(files.files)) == []


def test_the_check_catches_wrong_commands():
    text = "\n".join([
        "```bash",
        "accelerate launch --num_processes 2 --no_such_launcher_flag scripts/pretrain.py --recipe demo \\",
        "    --mask_ratoi 0.5 --output_dir=out",
        "python scripts/evaluate.py --weights a --bogus_probe_flag 1",
        "python scripts/launch_sagemaker.py --dry-run scripts/pretrain.py --train_dta s3://b/x",
        "python scripts/no_such_script.py --x 1",
        "make demo no-such-target",
        "```",
        "```python",
        "python scripts/pretrain.py --ignored_outside_shell_blocks 1",
        "```",
    ])
    assert check_markdown(text) == [
        "`accelerate launch --num_processes 2 --no_such_launcher_flag scripts/pretrain.py --recipe demo --mask_ratoi "
        "0.5 --output_dir=out`: accelerate launch takes no --no_such_launcher_flag",
        "`accelerate launch --num_processes 2 --no_such_launcher_flag scripts/pretrain.py --recipe demo --mask_ratoi "
        "0.5 --output_dir=out`: scripts/pretrain.py takes no --mask_ratoi",
        "`python scripts/evaluate.py --weights a --bogus_probe_flag 1`: scripts/evaluate.py takes no "
        "--bogus_probe_flag",
        "`python scripts/launch_sagemaker.py --dry-run scripts/pretrain.py --train_dta s3://b/x`: scripts/pretrain.py "
        "takes no --train_dta",
        "`python scripts/no_such_script.py --x 1`: scripts/no_such_script.py does not exist",
        "`make demo no-such-target`: make target 'no-such-target' is not in the Makefile",
    ]
