"""Run under torchrun with 2 processes: the process group endovit creates carries the recipe's timeout."""
import sys

import torch
import torch.distributed as dist

from endovit.recipe import parse_recipe
from endovit.trainer import process_state


def main(seconds: str) -> None:
    state = process_state(parse_recipe(["--train_data", "unused", "--dist_timeout", seconds]))
    assert state.num_processes == 2, state.num_processes
    group = dist.distributed_c10d._get_default_group()
    timeout = group._get_backend(torch.device("cpu")).options._timeout
    if state.is_main_process:
        print(f"timeout={int(timeout.total_seconds())}")


if __name__ == "__main__":
    main(sys.argv[1])
