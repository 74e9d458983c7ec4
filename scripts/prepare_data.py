"""Turn a folder of frames or videos into a prepared dataset (sharded Arrow + manifest) for fast training.

    python scripts/prepare_data.py --input /data/cholec80/frames --out /data/prepared/Cholec80 --num_proc 8
    python scripts/prepare_data.py --input /data/cholec80/frames --split Cholec80_for_Segmentation \\
        --out /data/prepared/Cholec80_for_Segmentation
    python scripts/prepare_data.py --input /data/HeiCo --out /data/prepared/HeiCo --short_side 0 --image_format keep
    python scripts/prepare_data.py --input /data/cholec80 --out /data/prepared/Cholec80 --fps 1   # videos/videoNN.mp4

Re-running with the same arguments resumes an interrupted run (finished shards are kept) and does nothing
when the dataset is complete. Corrupt frames are reported with their path and skipped (--on_error skip,
the default) or stop the run (--on_error stop). Videos on S3 too large for one machine: scripts/launch_prepare.py
runs this same prepare as a SageMaker Processing job over several instances (it sets --instance_part).
"""
from __future__ import annotations

import argparse
import os
import sys

from endovit.cli import OneLineParser, exit_script, parse_bool
from endovit.data import DataError, prepare_frames
from endovit.data.parts import prepare_part
from endovit.data.prepare_flags import add_settings_flags, settings_from_args
from endovit.data.stats import compute_and_store_stats
from endovit.sagemaker.job import RESOURCE_CONFIG, processing_hosts


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    parser.add_argument("--input", required=True,
                        help="folder of frames and/or videos (any nesting; Cholec80: its folder), or one video file")
    parser.add_argument("--out", required=True, help="folder for the prepared dataset")
    add_settings_flags(parser)
    parser.add_argument("--num_proc", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: this machine's CPUs, %(default)s)")
    parser.add_argument("--overwrite", type=parse_bool, default=False, help="true: delete an existing --out first")
    parser.add_argument("--stats", type=parse_bool, default=False, help="true: also compute mean/std into the manifest")
    parser.add_argument("--instance_part", type=parse_bool, default=False,
                        help="true: this is one instance of a SageMaker Processing job (scripts/launch_prepare.py "
                             "sets it): prepare its share of --input as part --out/<host>, host from "
                             f"/opt/ml/{RESOURCE_CONFIG}")
    parser.add_argument("--resume_record", default=None,
                        help="with --instance_part: the record of an earlier job's complete parts (launch_prepare.py "
                             "--resume_from_job writes it); the files it lists are left out")
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    try:
        if args.instance_part:
            hosts = processing_hosts()
            if hosts is None or args.stats or args.overwrite:
                raise DataError(f"--instance_part true: runs only inside a SageMaker Processing job (no /opt/ml/"
                                f"{RESOURCE_CONFIG} here), without --stats and --overwrite; start it with "
                                "scripts/launch_prepare.py")
            prepare_part(args.input, args.out, settings, host=hosts[0], hosts=hosts[1], resume=args.resume_record,
                         num_proc=args.num_proc)
            return 0
        result = prepare_frames(args.input, args.out, settings, num_proc=args.num_proc, overwrite=args.overwrite)
        if args.stats:
            compute_and_store_stats(result.path, num_proc=args.num_proc)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    exit_script(main())
