"""Run under `accelerate launch --num_processes 2`: which frames does each process get in one epoch?"""
import json
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from endovit.data import build_train_loader, load_frames


def main(frames_dir: str, out_path: str) -> None:
    accelerator = Accelerator(cpu=not torch.accelerator.is_available())
    loader = accelerator.prepare(build_train_loader(load_frames(frames_dir), img_size=[32, 32], crop_scale=[0.6, 1.0],
                                                    batch_size=2,
                                                    seed=0, num_workers=1))
    loader.set_epoch(0)
    seen = [i for batch in loader for i in batch["index"].tolist()]
    everyone = gather_object([seen])
    if accelerator.is_main_process:
        with open(out_path, "w") as f:
            json.dump({"num_processes": accelerator.num_processes, "per_process": everyone}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
