"""Reading command-line text: booleans, lists and optional values as the recipe's types expect them, and an
argparse parser whose errors are one line with a did-you-mean."""
from __future__ import annotations

import argparse
import typing

import yaml

from endovit.errors import did_you_mean

__all__ = ["parse_bool", "parse_list", "converter", "OneLineParser", "numbers_action"]


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


def numbers_action(kind: type, counts: tuple[int, ...]) -> type[argparse.Action]:
    """An action for a ``nargs="+"`` flag of numbers typed as words (``0.5 0.4 0.3``), with commas (``0.5,0.4,0.3``,
    as pretrain.py's list flags take them) or as YAML (``[0.5, 0.4, 0.3]``): ``counts`` says how many may come."""

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
            setattr(namespace, self.dest, [kind(v) for v in numbers])

    return Numbers


class OneLineParser(argparse.ArgumentParser):
    """Errors as one ``error:`` line (with a did-you-mean for a misspelt flag) instead of a usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments: "):
            flag = message.split(": ", 1)[1].split()[0]
            known = [s for action in self._actions for s in action.option_strings]
            message = f"unknown flag {flag}{did_you_mean(flag.split('=')[0], known)}; see --help for every flag"
        self.exit(2, f"error: {message}\n")
