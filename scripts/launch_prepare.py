"""Prepare videos or frames on S3 as an Amazon SageMaker Processing job over several instances, configured by the
same accelerate SageMaker config as training (role, region, DLC versions, profile; additional_args code_location,
max_run, volume_size, subnets, ...):

    python scripts/launch_prepare.py --config_file accelerate_configs/sagemaker.yaml \
        --input s3://my-bucket/hospital/videos/ --out s3://my-bucket/prepared/Hospital \
        --instance_count 4 --instance_type ml.c5.4xlarge --fps 1 --wait

Each instance gets a disjoint share of the objects under --input (ShardedByS3Key), runs scripts/prepare_data.py on
it (the same prepare as on one machine) and writes its own part under <out>/parts/<job>/<host>/; --wait follows the
job to its end and then merges the parts into one manifest, <out>/endovit_dataset.json, so that
`pretrain.py --train_data s3://my-bucket/prepared/Hospital` reads it like any prepared dataset. Without --wait, merge
when the job has completed (merging again changes nothing):

    python scripts/launch_prepare.py --merge --out s3://my-bucket/prepared/Hospital

--dry_run checks everything and prints the CreateProcessingJob request as JSON on stdout (notes on stderr), offline.
A job that failed or was stopped is continued, keeping its complete parts, by a new job into the same --out:

    python scripts/launch_prepare.py --config_file accelerate_configs/sagemaker.yaml \
        --input s3://my-bucket/hospital/videos/ --out s3://my-bucket/prepared/Hospital \
        --instance_count 4 --instance_type ml.c5.4xlarge --fps 1 --resume_from_job FAILED-JOB-NAME
"""
from __future__ import annotations

import argparse
import json
import sys

from accelerate.commands.config.config_args import default_config_file

from endovit.cli import OneLineParser, exit_script
from endovit.data.prepare_flags import add_settings_flags, settings_from_args
from endovit.errors import LaunchError
from endovit.sagemaker.sdk import prepare_sdk


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    parser.add_argument("--config_file", default=default_config_file,
                        help="accelerate SageMaker config (default: the one `accelerate config` wrote)")
    parser.add_argument("--input", help="s3:// prefix of the videos and/or frames (any nesting)")
    parser.add_argument("--out", required=True, help="s3:// prefix for the prepared dataset (a new one)")
    parser.add_argument("--instance_count", type=int, default=None,
                        help="instances, each preparing about 1/N of the input's objects (default: num_machines)")
    parser.add_argument("--instance_type", default=None,
                        help="Processing instance type (default: the config's ec2_instance_type; prepare uses CPUs)")
    parser.add_argument("--num_proc", type=int, default=None, help="worker processes per instance (default: its CPUs)")
    parser.add_argument("--job_name", default=None, help="Processing job name (default: endovit-prepare + timestamp)")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                        help="print the Processing-job request; upload nothing, start nothing")
    parser.add_argument("--wait", action="store_true", help="stream the job's logs until it ends, then merge")
    parser.add_argument("--resume_from_job", default=None, metavar="JOB",
                        help="continue JOB (failed or stopped) into the same --out: its complete parts are kept and "
                             "their files left out, the rest is prepared again")
    parser.add_argument("--merge", action="store_true",
                        help="only merge the parts under --out (of --job_name, when given) into its manifest")
    add_settings_flags(parser, split=False)
    args = parser.parse_args(argv)
    try:
        prepare_sdk()
        from endovit.sagemaker import processing  # imports SDK v2, so only after the check that names the fix

        if args.merge:
            processing.merge(args.out, job=args.job_name)
            return 0
        if not args.input:
            raise LaunchError("--input: give the s3:// prefix of the videos or frames to prepare")
        plan = processing.plan_prepare(args.config_file, input_uri=args.input, out_uri=args.out,
                                       settings=settings_from_args(args), instance_count=args.instance_count,
                                       instance_type=args.instance_type, job_name=args.job_name,
                                       num_proc=args.num_proc, resume_from_job=args.resume_from_job)
        for note in plan.notes:
            print(note, file=sys.stderr)
        if args.dry_run:
            print(json.dumps(processing.preview_prepare(plan).request, indent=2, sort_keys=True))
            print("dry run: nothing uploaded, no processing job created", file=sys.stderr)
            return 0
        job = processing.submit_prepare(plan, wait=args.wait)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    region = job.region
    if job.reused is not None:
        print(f"continuing job {args.resume_from_job}: {len(job.reused['continues'])} complete part(s) kept, their "
              f"{len(job.reused['inputs'])} file(s) left out", file=sys.stderr)
    print(f"processing job {job.job_name} {'finished' if args.wait else 'started'} in {region}\n"
          f"  console: https://{region}.console.aws.amazon.com/sagemaker/home?region={region}"
          f"#/processing-jobs/{job.job_name}\n"
          f"  logs:    aws logs tail /aws/sagemaker/ProcessingJobs --log-stream-name-prefix {job.job_name} --follow\n"
          f"  parts:   {plan.parts_uri}/<host>/\n"
          + (f"  dataset: {job.out_uri} ({job.manifest['frames']} frames; --train_data {job.out_uri})" if job.manifest
             else f"  merge:   python scripts/launch_prepare.py --merge --out {job.out_uri}  (when it has completed)"))
    return 0


if __name__ == "__main__":
    exit_script(main())
