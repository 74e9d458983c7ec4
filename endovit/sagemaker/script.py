"""The entry script's ``--key value`` flags as SageMaker hyperparameters and input channels, checked with
``scripts/pretrain.py``'s own parser in a simulated job environment."""
from __future__ import annotations

import argparse
import dataclasses
import re
import urllib.parse
from collections.abc import Collection, Mapping
from pathlib import Path

from endovit.errors import LaunchError, RecipeError, did_you_mean
from endovit.io import SHA256_PIN
from endovit.recipe import Recipe, build_parser, recipe_from_args
from endovit.sagemaker.job import (
    CHANNEL_ROOT,
    CHANNELS,
    CHECKPOINT_LOCAL_PATH,
    JOB_ENVIRON,
    JOB_FOLDER_KEYS,
    TENSORBOARD_LOCAL_PATH,
    job_defaults,
)

__all__ = ["INIT_CHANNEL", "to_script_args", "script_hyperparameters", "check_hyperparameters", "init_channel"]

INIT_CHANNEL = "init"  # input channel of a local or s3:// --init_from
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def to_script_args(hyperparameters: Mapping[str, object]) -> list[str]:
    """Hyperparameters as the training toolkit passes them to the entry script: sorted ``--key str(value)``."""
    args = []
    for key in sorted(hyperparameters):
        args += [f"--{key}", str(hyperparameters[key])]
    return args


def _split_flags(script_args: list[str]) -> list[str]:
    """``--key=value`` split in two; every flag checked to have exactly one value."""
    args: list[str] = []
    for token in script_args:
        args += token.split("=", 1) if token.startswith("--") and "=" in token else [token]
    seen = set()
    for index in range(0, len(args), 2):
        flag = args[index]
        value = args[index + 1] if index + 1 < len(args) else None
        if not flag.startswith("--"):
            raise LaunchError(f"script argument {flag!r} is not a --key: SageMaker passes only --key value pairs")
        if value is None or value.startswith("--"):
            raise LaunchError(f"{flag} has no value: SageMaker passes every hyperparameter as --key value "
                              f"(write e.g. {flag} true)")
        if flag in seen:
            raise LaunchError(f"{flag} is given twice; keep one")
        seen.add(flag)
    return args


def _secret_url_error(key: str, value: str) -> LaunchError | None:
    """The error for a URL that carries credentials or a query token (shown without them), else None. A
    ``#sha256=<hex>`` pin is no secret."""
    url = urllib.parse.urlsplit(value)
    secret_fragment = url.fragment and not SHA256_PIN.fullmatch(url.fragment)
    if not (url.scheme and url.netloc and (url.username or url.password or url.query or secret_fragment)):
        return None
    public = urllib.parse.urlunsplit((url.scheme, url.hostname or "", url.path, "", ""))
    return LaunchError(f"--{key} {public}: the URL carries credentials or a query token (not shown; e.g. a presigned "
                       "S3 URL) that would be stored in the job's hyperparameters, readable by anyone who may describe "
                       "the job; download the file and pass its local path, or pass its s3:// URI")


def _typed(text: str) -> object:
    """A flag's value as a JSON number or boolean where that reads back as the very same text, else the text: the
    script receives exactly what was typed (``1e-3``, ``-5``, ``007`` and ``1_0`` stay as they are)."""
    value: object = text
    if text in ("True", "False"):
        value = text == "True"
    elif NUMBER.fullmatch(text):
        value = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    return value if str(value) == text else text


def script_hyperparameters(script_args: list[str]) -> tuple[dict, dict[str, str]]:
    """The script's ``--key value`` flags as hyperparameters (numbers typed where exact); data flags become
    channels."""
    args = _split_flags(script_args)
    hyperparameters = {}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        error = _secret_url_error(flag[2:], value)
        if error:
            raise error
        hyperparameters[flag[2:].replace("-", "_")] = _typed(value)  # as argparse (and accelerate) name it
    channels = {CHANNELS[key]: str(hyperparameters.pop(key)) for key in list(hyperparameters) if key in CHANNELS}
    for key in JOB_FOLDER_KEYS:
        if key in hyperparameters:
            raise LaunchError(f"--{key}: a SageMaker job sets it (model -> SM_MODEL_DIR, checkpoints -> "
                              f"{CHECKPOINT_LOCAL_PATH}, TensorBoard -> {TENSORBOARD_LOCAL_PATH}); remove the flag")
    if str(hyperparameters.get("resume", "auto")) != "auto":
        raise LaunchError(f"--resume {hyperparameters['resume']}: a SageMaker job resumes from its own checkpoints "
                          "(--resume auto); remove the flag")
    recipe = str(hyperparameters.get("recipe", ""))
    if Path(recipe).suffix:
        raise LaunchError(f"--recipe {recipe}: only the recipes in endovit/recipes travel to SageMaker; pass a "
                          "recipe name, add your file there, or give its settings as --key value flags")
    return hyperparameters, channels


def check_hyperparameters(hyperparameters: dict, channels: Collection[str]) -> Recipe:
    """The recipe the job would run: the hyperparameters parsed with pretrain.py's own parser in a simulated job."""
    if CHANNELS["train_data"] not in channels:
        raise LaunchError("no training data: pass --train_data (a local folder or an s3:// URI) or give a "
                          f"'{CHANNELS['train_data']}' channel in the config's sagemaker_inputs_file")
    parser = build_parser()
    parser.exit_on_error = False
    try:
        args, unknown = parser.parse_known_args(to_script_args(hyperparameters))
    except argparse.ArgumentError as err:
        raise LaunchError(f"scripts/pretrain.py would reject {err}") from None
    if unknown:
        known = ["--recipe"] + [f"--{f.name}" for f in dataclasses.fields(Recipe)]
        raise LaunchError(f"scripts/pretrain.py has no flag {unknown[0]}{did_you_mean(unknown[0], known)}")
    environ = dict(JOB_ENVIRON, **{f"SM_CHANNEL_{c.upper()}": f"{CHANNEL_ROOT}/{c}" for c in channels})
    try:
        return recipe_from_args(args, environ=environ, job_defaults=job_defaults(environ))
    except RecipeError as err:
        raise LaunchError(f"scripts/pretrain.py would reject {err}") from None


def init_channel(hyperparameters: dict, recipe: Recipe, isolated: bool) -> str | None:
    """The weights ``recipe.init_from`` as the source of input channel ``init`` (a local file or an s3:// URI),
    with ``init_from`` pointing the job at the channel's copy; None when the job needs no channel for them.

    A URL stays a URL (the job downloads it), unless it carries credentials or a query (a presigned URL's token
    would sit in the job's hyperparameters, readable by anyone who may describe the job) or the job has no internet.
    """
    source = recipe.init_from
    if not source:
        return None
    url = urllib.parse.urlsplit(source)
    if url.scheme in ("http", "https"):
        error = _secret_url_error("init_from", source)
        if error:
            raise error
        if isolated:
            raise LaunchError(f"--init_from {source}: a job with enable_network_isolation cannot download it; pass "
                              f"a local file or an s3:// URI (both travel as input channel '{INIT_CHANNEL}')")
        return None
    if url.scheme == "s3":
        if source.endswith("/"):
            raise LaunchError(f"--init_from {source}: give the weights file's s3:// URI, not a prefix")
    elif not Path(source).is_file():
        raise LaunchError(f"--init_from {source}: no such file (give a local .pth/.safetensors file, an s3:// URI "
                          "or an https:// URL)")
    hyperparameters["init_from"] = f"{CHANNEL_ROOT}/{INIT_CHANNEL}/{Path(url.path).name}"
    return source
