"""Per-channel mean/std of a dataset (exact, streamed, in parallel), stored in a prepared dataset's manifest.

    python scripts/compute_stats.py /data/prepared/Cholec80 --num_proc 8
    accelerate launch scripts/pretrain.py --train_data /data/prepared --train_sources Cholec80_for_Segmentation \\
        --stats_from_data true ...

Works on a prepared dataset (local or s3://; the stats are written into its manifest, per video, so a
Cholec80 split or a weighted mix is pooled exactly at training time) or a plain folder of frames
(the values are only printed).
"""
from __future__ import annotations

import argparse
import os
import sys

from endovit.cli import OneLineParser, exit_script
from endovit.data import DataError, compute_and_store_stats


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    parser.add_argument("data", help="prepared dataset (folder or s3:// URL) or folder of frames")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count() or 1, help="worker processes")
    args = parser.parse_args(argv)
    try:
        compute_and_store_stats(args.data, num_proc=args.num_proc)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    exit_script(main())
