"""The prepare settings as command-line flags, defined once: ``scripts/prepare_data.py`` reads them, and
``scripts/launch_prepare.py`` reads the same flags and hands them to each instance of its Processing job, where
``prepare_data.py`` reads them again (flag = ``PrepareSettings`` field, one name per concept)."""
from __future__ import annotations

import argparse
import dataclasses

from endovit.data.prepare import IMAGE_FORMATS, ON_ERROR, PrepareSettings
from endovit.data.splits import CHOLEC80_SPLITS

__all__ = ["add_settings_flags", "settings_from_args", "settings_flags"]


def add_settings_flags(parser: argparse.ArgumentParser, *, split: bool = True) -> None:
    """``--source``, ``--short_side``, ``--image_format``, ``--quality``, ``--shard_size``, ``--on_error``, ``--fps``
    and, with ``split``, ``--split`` (a Cholec80 split: a local folder's choice, not an S3 share's)."""
    defaults = PrepareSettings()
    parser.add_argument("--source", default="", help="source name stored per frame (default: split or folder name)")
    if split:
        parser.add_argument("--split", default="", help=f"keep one Cholec80 split: {', '.join(CHOLEC80_SPLITS)}")
    parser.add_argument("--short_side", type=int, default=defaults.short_side,
                        help="resize (down only) to this short side in pixels; 0 keeps the size "
                             "(default: %(default)s)")
    parser.add_argument("--image_format", choices=IMAGE_FORMATS, default=defaults.image_format,
                        help="jpeg, png (lossless) or keep (original bytes; needs --short_side 0) "
                             "(default: %(default)s)")
    parser.add_argument("--quality", type=int, default=defaults.quality, help="JPEG quality (default: %(default)s)")
    parser.add_argument("--shard_size", type=int, default=defaults.shard_size,
                        help="frames per shard (default: %(default)s)")
    parser.add_argument("--on_error", choices=ON_ERROR, default=defaults.on_error,
                        help="corrupt frames, damaged videos: report and skip (keeping decodable frames), or stop "
                             "(default: %(default)s)")
    parser.add_argument("--fps", type=float, default=defaults.fps,
                        help="videos: frames sampled per second of presentation time; 0 = every frame "
                             "(default: %(default)g, EndoViT's rate)")


def settings_from_args(args: argparse.Namespace) -> PrepareSettings:
    return PrepareSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareSettings)
                              if hasattr(args, f.name)})


def settings_flags(settings: PrepareSettings) -> list[str]:
    """``settings`` as the flags above (``--key value``; an empty split left out), which ``settings_from_args``
    reads back to the same settings."""
    flags = []
    for field in dataclasses.fields(PrepareSettings):
        value = getattr(settings, field.name)
        if not (field.name == "split" and not value):
            flags += [f"--{field.name}", str(value)]  # str() of a float reads back exactly
    return flags
