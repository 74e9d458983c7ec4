"""Turn a folder of frames or videos into a prepared dataset (sharded Arrow + manifest) for fast training.

    python scripts/prepare_data.py --input /data/cholec80/frames --out /data/prepared/Cholec80 --num_proc 8
    python scripts/prepare_data.py --input /data/cholec80/frames --split Cholec80_for_Segmentation \\
        --out /data/prepared/Cholec80_for_Segmentation
    python scripts/prepare_data.py --input /data/HeiCo --out /data/prepared/HeiCo --short_side 0 --image_format keep
    python scripts/prepare_data.py --input /data/cholec80 --out /data/prepared/Cholec80 --fps 1   # videos/videoNN.mp4

Re-running with the same arguments resumes an interrupted run (finished shards are kept) and does nothing
when the dataset is complete. Corrupt frames are reported with their path and skipped (--on_error skip,
the default) or stop the run (--on_error stop).
"""
from __future__ import annotations

import argparse
import os
import sys

from endovit.cli import exit_script, parse_bool
from endovit.data import DataError, PrepareSettings, prepare_frames
from endovit.data.prepare import IMAGE_FORMATS, ON_ERROR
from endovit.data.splits import CHOLEC80_SPLITS
from endovit.data.stats import compute_and_store_stats


def main(argv: list[str] | None = None) -> int:
    defaults = PrepareSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--input", required=True,
                        help="folder of frames and/or videos (any nesting; Cholec80: its folder), or one video file")
    parser.add_argument("--out", required=True, help="folder for the prepared dataset")
    parser.add_argument("--source", default="", help="source name stored per frame (default: split or folder name)")
    parser.add_argument("--split", default="", help=f"keep one Cholec80 split: {', '.join(CHOLEC80_SPLITS)}")
    parser.add_argument("--short_side", type=int, default=defaults.short_side,
                        help="resize (down only) to this short side in pixels; 0 keeps the size")
    parser.add_argument("--image_format", choices=IMAGE_FORMATS, default=defaults.image_format,
                        help="jpeg, png (lossless) or keep (original bytes; needs --short_side 0)")
    parser.add_argument("--quality", type=int, default=defaults.quality, help="JPEG quality")
    parser.add_argument("--shard_size", type=int, default=defaults.shard_size, help="frames per shard")
    parser.add_argument("--on_error", choices=ON_ERROR, default=defaults.on_error,
                        help="corrupt frames, damaged videos: report and skip (keeping decodable frames), or stop")
    parser.add_argument("--fps", type=float, default=defaults.fps,
                        help="videos: frames sampled per second of presentation time; 0 = every frame")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--overwrite", type=parse_bool, default=False, help="true: delete an existing --out first")
    parser.add_argument("--stats", type=parse_bool, default=False, help="true: also compute mean/std into the manifest")
    args = parser.parse_args(argv)
    settings = PrepareSettings(source=args.source, split=args.split, short_side=args.short_side,
                               image_format=args.image_format, quality=args.quality, shard_size=args.shard_size,
                               on_error=args.on_error, fps=args.fps)
    try:
        result = prepare_frames(args.input, args.out, settings, num_proc=args.num_proc, overwrite=args.overwrite)
        if args.stats:
            compute_and_store_stats(result.path, num_proc=args.num_proc)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    exit_script(main())
