"""Start scripts/pretrain.py as an Amazon SageMaker training job, configured by an accelerate SageMaker config.

    python scripts/launch_sagemaker.py --config_file accelerate_configs/sagemaker.yaml scripts/pretrain.py \
        --recipe endovit_seg --train_data s3://my-bucket/endovit/data/train --val_data data/cholec80/val

Use it instead of `accelerate launch` for SageMaker configs (accelerate 1.15 cannot start them); a file written
by `accelerate config` works as it is (its default DLC versions 4.17.0 / 1.10.2 / py38 are replaced by the newest
image that runs endovit, a role name is expanded to its ARN). Script flags become hyperparameters; --train_data /
--val_data become the job's input channels, and a local or s3:// --init_from becomes channel "init" (a local folder
or file is uploaded first, next to the job's output).

--dry-run checks everything and prints the CreateTrainingJob request as one JSON document on stdout (notes go to
stderr, so `| jq` works), offline: what only AWS knows shows as <account-id> (role ARN, default bucket).
--wait streams the job's CloudWatch log until it ends: every instance's stream (pip install, torchrun and
pretrain.py's lines), then its status. Ctrl-C stops following, not the job (aws sagemaker stop-training-job).

--resume_from_job OLD_JOB continues a job that ended before its last step (it failed, reached max_run, was
stopped) in a new job: the new job's checkpoint_s3_uri is OLD_JOB's checkpoint prefix, restored into the job, and
it resumes from the newest complete checkpoint there with the same flags (a spot interruption needs no new job:
SageMaker restarts the same one). The instance type may change if the number of processes stays the same (the
checkpoint refuses another world size); give the same script flags.

Network: the job needs the internet at start (pip install of the shipped requirements.txt) and for an https://
--init_from such as endovit_seg's MAE weights (a VPC config needs a NAT gateway). With enable_network_isolation
in additional_args, give an image_uri that already holds the requirements (none are shipped then) and a local or
s3:// --init_from.
"""
from __future__ import annotations

import argparse
import json
import sys

from accelerate.commands.config.config_args import default_config_file

from endovit.cli import exit_script
from endovit.errors import LaunchError
from endovit.sagemaker.sdk import prepare_sdk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", default=default_config_file,
                        help="accelerate SageMaker config (default: the one `accelerate config` wrote)")
    parser.add_argument("--job_name", default=None, help="training job name (default: base_job_name + timestamp)")
    parser.add_argument("--resume_from_job", default=None, metavar="JOB",
                        help="continue JOB's training: the new job uses JOB's checkpoint prefix under "
                             "checkpoint_s3_uri and resumes from its newest complete checkpoint (after a failure, "
                             "max_run, a manual stop, or to change the instance type with the same process count)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print the training-job request; upload nothing, start nothing")
    parser.add_argument("--wait", action="store_true", help="stream the job's logs until it ends")
    parser.add_argument("training_script", help="the entry script, scripts/pretrain.py")
    parser.add_argument("training_script_args", nargs=argparse.REMAINDER, help="its --key value flags")
    args = parser.parse_args(argv)
    try:
        prepare_sdk()
        from endovit.sagemaker import launch  # imports SDK v2, so only after the check that names the fix

        plan = launch.plan_job(args.config_file, args.training_script, args.training_script_args,
                               job_name=args.job_name, resume_from_job=args.resume_from_job)
        for note in plan.notes:
            print(note, file=sys.stderr)
        job = launch.preview(plan) if args.dry_run else launch.submit(plan, wait=args.wait)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(job.request, indent=2, sort_keys=True))
        for channel, (folder, uri) in job.uploads.items():
            print(f"would upload {folder} -> {uri} (channel {channel})", file=sys.stderr)
        print("dry run: nothing uploaded, no training job created", file=sys.stderr)
        return 0
    print(f"training job {job.job_name} {'finished' if args.wait else 'started'} in {job.region}\n"
          f"  console: https://{job.region}.console.aws.amazon.com/sagemaker/home?region={job.region}"
          f"#/jobs/{job.job_name}\n"
          f"  logs:    aws logs tail /aws/sagemaker/TrainingJobs --log-stream-name-prefix {job.job_name} --follow\n"
          f"  model:   {job.model_uri} (model.safetensors, encoder.safetensors, endovit_config.json)")
    return 0


if __name__ == "__main__":
    exit_script(main())
