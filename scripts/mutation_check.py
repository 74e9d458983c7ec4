"""Mutation check: does the test suite catch realistic one-line bugs?

    python scripts/mutation_check.py                 # every mutation; exit 1 when the score is under --min_score
    python scripts/mutation_check.py --list          # the mutations, checked against the code, nothing run
    python scripts/mutation_check.py --only swa lr   # those whose name contains one of the words

The mutations are data (``scripts/mutations.yaml``): a name, the file, the function or method it lives in
(``scope``: ``train``, ``Saver.after_probe``; empty = the whole module), the original code, the mutated code and
the tests to run. The original is found by its tokens inside that scope, so reformatting (line wraps, spacing,
comments) and code moving elsewhere in the file do not break a mutation; it must match exactly once. The tracked
files (and untracked ones git does not ignore) are copied into a temporary folder; there, one mutation at a time is
applied, its tests run (``python -m pytest -x`` with ``PYTHONPATH`` the copy) and the file put back. A mutation is
caught when its tests fail. The working tree is never modified.

Exit status: 0 when the score (caught / mutations) is at least ``--min_score``; 1 when under it; 2 when the list is
out of sync with the code (an original not found exactly once in its scope, a mutant that does not compile) or the
unmutated tests do not pass (the baseline), so nothing a mutation does could be told apart.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from endovit.cli import exit_script

REPO = Path(__file__).resolve().parents[1]
MUTATIONS_FILE = Path(__file__).with_name("mutations.yaml")
# a token: a string literal, a name or number, a comment (dropped), or any other single character
_TOKEN = re.compile(r"[rbfuRBFU]{0,2}(\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*')"
                    r"|\w+|#[^\n]*|\S")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    scope: str  # qualified name of the function or class holding the original; "" = the module
    original: str
    mutated: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions
    regression: bool = False  # a bug the suite once let through


def load_mutations(path: Path = MUTATIONS_FILE) -> list[Mutation]:
    entries = yaml.safe_load(path.read_text())
    return [Mutation(**{**e, "scope": e.get("scope", ""), "tests": tuple(e["tests"])}) for e in entries]


def _tokens(text: str, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """(token, start, end) offsets of ``text[start:end]``'s tokens, comments dropped."""
    found = []
    for match in _TOKEN.finditer(text, start, len(text) if end is None else end):
        if not match.group().startswith("#"):
            found.append((match.group(), match.start(), match.end()))
    return found


def _scope_span(source: str, scope: str) -> tuple[int, int] | None:
    """Character span of the function or class ``scope`` (dotted qualified name) in ``source``; None if absent."""
    if not scope:
        return 0, len(source)
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def find(body, names):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == names[0]:
                if len(names) == 1:
                    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    return offsets[first - 1], offsets[node.end_lineno]
                return find(node.body, names[1:])
        return None

    return find(ast.parse(source).body, scope.split("."))


def locate(source: str, m: Mutation) -> list[tuple[int, int]]:
    """The character spans in ``source`` whose tokens are ``m.original``'s, inside ``m.scope``."""
    span = _scope_span(source, m.scope)
    if span is None:
        return []
    wanted = [t for t, _, _ in _tokens(m.original)]
    have = _tokens(source, *span)
    words = [t for t, _, _ in have]
    return [(have[i][1], have[i + len(wanted) - 1][2]) for i in range(len(have) - len(wanted) + 1)
            if words[i:i + len(wanted)] == wanted]


def mutate(source: str, m: Mutation) -> str:
    (start, end), = locate(source, m)
    mutated = m.mutated
    if m.original[:1].isspace() or not mutated.strip():
        # whole lines (a removed or rewritten statement): replace them whole, re-indented as the code is now
        start = source.rfind("\n", 0, start) + 1
        end = source.find("\n", end) + 1 or len(source)
        shift = len(re.match(r" *", source[start:]).group()) - len(re.match(r" *", m.original.lstrip("\n")).group())
        lines = mutated.strip("\n").splitlines()
        mutated = "".join(" " * shift + line + "\n" if shift >= 0 else line[-shift:] + "\n" for line in lines
                          ) if mutated.strip() else ""
    return source[:start] + mutated + source[end:]


def sync_problems(mutations: list[Mutation], repo: Path) -> list[str]:
    """Every way the list is out of step with the code (each original exactly once in its scope, each mutant
    compiling)."""
    problems = []
    names = [m.name for m in mutations]
    problems += [f"{name}: the name is used twice" for name in sorted({n for n in names if names.count(n) > 1})]
    for m in mutations:
        path = repo / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        source = path.read_text()
        if _scope_span(source, m.scope) is None:
            problems.append(f"{m.name}: {m.file} has no {m.scope}")
            continue
        count = len(locate(source, m))
        if count != 1:
            where = f"{m.file}:{m.scope}" if m.scope else m.file
            problems.append(f"{m.name}: the original occurs {count} times in {where} (must be once): {m.original!r}")
            continue
        if [t for t, _, _ in _tokens(m.original)] == [t for t, _, _ in _tokens(m.mutated)]:
            problems.append(f"{m.name}: the mutation changes nothing")
            continue
        try:
            compile(mutate(source, m), m.file, "exec")
        except SyntaxError as err:
            problems.append(f"{m.name}: the mutated {m.file} does not compile ({err})")
    return problems


def tracked_files(repo: Path) -> list[str]:
    """Tracked files plus untracked ones git does not ignore (new tests not yet committed)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout.decode()
    return sorted({name for name in out.split("\0") if name and (repo / name).is_file()})


def copy_repo(repo: Path, dest: Path) -> None:
    """The tracked files, plus a link to the wheels ``make test-wheels`` downloads for the tests (.whl-local/)."""
    for name in tracked_files(repo):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)
    if (repo / ".whl-local").is_dir():
        (dest / ".whl-local").symlink_to(repo / ".whl-local", target_is_directory=True)


def baseline_selection(mutations: list[Mutation]) -> tuple[str, ...]:
    """One pytest selection for every mutation's tests together: their files, and a ``-k`` that keeps, per file,
    what its mutations select (``-k`` matches module names too, e.g. ``test_loop.py``)."""
    files: list[str] = []
    clauses: list[str] = []
    for m in mutations:
        names = [t for t in m.tests if t.startswith("tests/")]
        keyword = m.tests[m.tests.index("-k") + 1] if "-k" in m.tests else None
        files += names
        modules = " or ".join(Path(name.split("::")[0]).name for name in names)
        tests = " or ".join(name.split("::")[1] for name in names if "::" in name)
        clause = f"({modules})" + (f" and ({tests})" if tests else "") + (f" and ({keyword})" if keyword else "")
        clauses.append(f"({clause})")
    return (*[f.split("::")[0] for f in dict.fromkeys(files)], "-k", " or ".join(dict.fromkeys(clauses)))


def run_tests(copy: Path, tests: tuple[str, ...], timeout: int) -> tuple[int | None, float, str]:
    """(pytest's exit status or None on timeout, seconds, the output's tail) for ``tests`` in ``copy``."""
    env = dict(os.environ, PYTHONPATH=str(copy), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               CUDA_VISIBLE_DEVICES="", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.perf_counter()
    try:
        result = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, ""
    return result.returncode, time.perf_counter() - start, (result.stdout + result.stderr)[-3000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min_score", type=float, default=0.9, help="fail below this share of caught mutations")
    parser.add_argument("--only", nargs="+", default=[], help="run the mutations whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the mutations (checked against the code) and exit")
    parser.add_argument("--no_baseline", action="store_true", help="skip running the unmutated tests first")
    parser.add_argument("--timeout", type=int, default=180, help="seconds one mutation's tests may take (a hang "
                                                                  "counts as caught)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy of the repository")
    args = parser.parse_args(argv)

    mutations = load_mutations()
    problems = sync_problems(mutations, REPO)
    if problems:
        print("the mutation list is out of sync with the code:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    chosen = [m for m in mutations if not args.only or any(word in m.name for word in args.only)]
    if args.list or not chosen:
        for m in chosen:
            print(f"{m.name:46s} {m.file}:{m.scope or '<module>'}  {' '.join(m.tests)}"
                  f"{'  (regression)' if m.regression else ''}")
        return 0 if chosen else 2

    started = time.perf_counter()
    copy_root = Path(tempfile.mkdtemp(prefix="endovit-mutants-"))
    copy = copy_root / "repo"
    try:
        copy_repo(REPO, copy)
        if not args.no_baseline:
            status, seconds, tail = run_tests(copy, baseline_selection(chosen), args.timeout)
            if status != 0:
                print(f"baseline: the unmutated tests fail (exit {status}):\n{tail}", file=sys.stderr)
                return 2
            print(f"baseline: the unmutated tests pass ({seconds:.0f}s)", flush=True)
        survivors, results = [], []
        for number, m in enumerate(chosen, 1):
            path = copy / m.file
            original = path.read_text()
            path.write_text(mutate(original, m))
            try:
                status, seconds, tail = run_tests(copy, m.tests, args.timeout)
            finally:
                path.write_text(original)
            if status in (4, 5):  # usage error, nothing collected: the selection is wrong, not the code
                print(f"{m.name}: its tests {' '.join(m.tests)} select nothing or are misspelt (exit {status}):\n"
                      f"{tail}", file=sys.stderr)
                return 2
            caught = status != 0
            verdict = "caught" if caught else "SURVIVED"
            if status is None:
                verdict += " (timeout)"
            results.append(caught)
            if not caught:
                survivors.append(m)
            print(f"[{number:2d}/{len(chosen)}] {verdict:17s} {m.name:46s} {seconds:5.0f}s  {' '.join(m.tests)}",
                  flush=True)
        score = sum(results) / len(results)
        regressions = [caught for m, caught in zip(chosen, results, strict=True) if m.regression]
        print(f"\nmutation score {score:.0%}: {sum(results)} of {len(results)} caught; regressions: "
              f"{sum(regressions)} of {len(regressions)} caught; {time.perf_counter() - started:.0f}s")
        for m in survivors:
            print(f"  survived: {m.name} ({m.file}: {m.original.strip()!r} -> {m.mutated.strip()!r})")
        return 0 if score >= args.min_score else 1
    finally:
        if args.keep:
            print(f"copy kept in {copy}")
        else:
            shutil.rmtree(copy_root, ignore_errors=True)


if __name__ == "__main__":
    exit_script(main())
