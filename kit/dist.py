"""Several processes, one run: the ranks that `torchrun` or `accelerate launch` start.

The launchers set RANK, WORLD_SIZE and LOCAL_RANK; the kit joins their process group (gloo on
CPUs, so all of this runs and is tested on a laptop; NCCL on GPUs). Training wraps the loss
module in DistributedDataParallel, prediction splits the rows, CV runs folds side by side, and
only rank 0 writes files.
"""
import os

import torch
import torch.distributed as dist


def world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank():
    return int(os.environ.get("RANK", "0"))


def is_main():
    return rank() == 0


def active():
    return dist.is_available() and dist.is_initialized()


def init():
    """Join the launcher's process group; nothing for one process."""
    if world_size() > 1 and not active():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def backend():
    return dist.get_backend() if active() else None


def barrier():
    if active():
        dist.barrier()


def gather(obj):
    """Every rank's obj, in rank order, on every rank (one process: [obj])."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor):
    if active():
        dist.all_reduce(tensor)
    return tensor


def wrap(module):
    """DistributedDataParallel around the loss module when ranks are running: the loss is its
    forward, so DDP all-reduces the gradients of everything it computes."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel
    device = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    # every rank built the same weights from the same seed; skip broadcasting gigabytes of them
    return DistributedDataParallel(module, device_ids=device, init_sync=False)
