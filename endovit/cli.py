"""Reading command-line text: booleans, lists and optional values as the recipe's types expect them, and an
argparse parser whose errors are one line with a did-you-mean."""
from __future__ import annotations

import argparse
import gc
import sys
import typing
from typing import NoReturn

import yaml

from endovit.errors import did_you_mean

__all__ = ["parse_bool", "parse_list", "converter", "OneLineParser", "numbers_action", "add_image_flags", "exit_script"]


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_list(text: str) -> list:
    """``[a, b]`` as YAML, or ``a,b`` split at commas; a single value becomes a one-item list."""
    text = text.strip()
    value = yaml.safe_load(text) if text.startswith("[") else [yaml.safe_load(p) for p in text.split(",") if p.strip()]
    return value if isinstance(value, list) else [value]


def converter(hint):
    """A string -> value converter for one type hint ('none' means None where the hint allows it)."""
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    convert = {bool: parse_bool, int: int, float: float, str: str, list: parse_list}[base]

    def parse(text: str):
        if optional and str(text).strip().lower() in ("none", "null", ""):
            return None
        try:
            return convert(text)
        except (TypeError, ValueError, yaml.YAMLError) as err:
            raise argparse.ArgumentTypeError(f"cannot read {text!r} as {base.__name__}: {err}") from None

    parse.__name__ = base.__name__
    return parse


def numbers_action(kind: type, counts: tuple[int, ...], unit_range: str = "") -> type[argparse.Action]:
    """An action for a ``nargs="+"`` flag of numbers typed as words (``0.5 0.4 0.3``), with commas (``0.5,0.4,0.3``,
    as pretrain.py's list flags take them) or as YAML (``[0.5, 0.4, 0.3]``): ``counts`` says how many may come;
    ``unit_range`` ``[0, 1]`` or ``(0, 1]`` bounds each value (pixel statistics, in [0, 1] units)."""

    class Numbers(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            typed = " ".join(values)
            try:
                numbers = [v for word in values for v in parse_list(word)]
            except yaml.YAMLError:
                numbers = [None]
            whole = all(isinstance(v, int) for v in numbers) if kind is int else True
            if not numbers or not whole or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
                parser.error(f"{option_string} {typed}: give {'whole ' if kind is int else ''}numbers, with spaces "
                             "or commas between them")
            if len(numbers) not in counts:
                parser.error(f"{option_string} {typed}: give {' or '.join(map(str, counts))} numbers")
            if unit_range and not all(0 < v <= 1 if unit_range == "(0, 1]" else 0 <= v <= 1 for v in numbers):
                parser.error(f"{option_string} {typed}: give values in {unit_range} units (pixels are divided by 255 "
                             "first; divide 0-255 values by 255)")
            setattr(namespace, self.dest, [kind(v) for v in numbers])

    return Numbers


def add_image_flags(parser: argparse.ArgumentParser, size_help: str, stats_default: str) -> None:
    """``--img_size`` (one size, or height and width) and ``--mean``/``--std`` (R,G,B), typed with spaces or commas;
    ``stats_default`` says where mean and std come from when they are not given."""
    parser.add_argument("--img_size", nargs="+", action=numbers_action(int, (1, 2)), metavar="SIZE", help=size_help)
    for name, unit_range in (("mean", "[0, 1]"), ("std", "(0, 1]")):
        parser.add_argument(f"--{name}", nargs="+", action=numbers_action(float, (3,), unit_range), metavar="R,G,B",
                            help=f"per-channel {name} in {unit_range} units; {stats_default}")


class OneLineParser(argparse.ArgumentParser):
    """Errors as one ``error:`` line (with a did-you-mean for a misspelt flag) instead of a usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments: "):
            flag = message.split(": ", 1)[1].split()[0]
            known = [s for action in self._actions for s in action.option_strings]
            message = f"unknown flag {flag}{did_you_mean(flag.split('=')[0], known)}; see --help for every flag"
        self.exit(2, f"error: {message}\n")


def exit_script(code: int | None) -> NoReturn:
    """``sys.exit(code)`` for a script's last line, a second or more sooner once torch is imported."""
    # At shutdown Python runs its cycle collector over every object the imports made (torch, dynamo, sympy: millions)
    # for nothing, about 1.2 s per process here. Frozen objects are skipped; what we own is closed by now, and files
    # and tensors are still freed by reference count.
    gc.freeze()
    sys.exit(code)
