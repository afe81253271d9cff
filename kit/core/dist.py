"""Several processes, one run: the ranks that `torchrun` or `accelerate launch` start.

The launchers set RANK, WORLD_SIZE and LOCAL_RANK; the kit joins their process group (gloo on
CPUs, so all of this runs and is tested on a laptop; NCCL on GPUs). Training wraps the loss
module in DistributedDataParallel, prediction splits the rows, CV runs folds side by side, and
only rank 0 writes files.
"""
import inspect
import os
import sys


def world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank():
    return int(os.environ.get("RANK", "0"))


def is_main():
    return rank() == 0


def _torch_dist():
    # torch is imported here, not at the top: `kit check`, `kit runs` and `kit --help` never load it
    import torch.distributed
    return torch.distributed


def active():
    """A process group is running (a process that never imported torch has none)."""
    if "torch" not in sys.modules:
        return False
    dist = _torch_dist()
    return dist.is_available() and dist.is_initialized()


def init():
    """Join the launcher's process group; nothing for one process."""
    if world_size() > 1 and not active():
        import torch
        dist = _torch_dist()
        if not torch.cuda.is_available():
            dist.init_process_group("gloo")
            return
        # more ranks on this machine than GPUs (two ranks on one GPU): the ranks share the GPUs in
        # turn, over gloo, since NCCL refuses two ranks on one device
        gpus = torch.cuda.device_count()
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % gpus)
        shared = int(os.environ.get("LOCAL_WORLD_SIZE", world_size())) > gpus
        dist.init_process_group("gloo" if shared else "nccl")


def leave(finished=True):
    """Leave the process group while the interpreter is still whole. A gloo group left to be torn
    down at exit can abort a rank (SIGABRT, "terminate called without an active exception": its
    worker threads free tensors after Python has gone). A rank that finished waits for the others
    first, so none closes its sockets while another still reads from them; a rank that failed
    leaves at once (the launcher stops the rest)."""
    if not active():
        return
    if finished:
        barrier()
    _torch_dist().destroy_process_group()


def backend():
    return _torch_dist().get_backend() if active() else None


def barrier():
    if active():
        _torch_dist().barrier()


def gather(obj):
    """Every rank's obj, in rank order, on every rank (one process: [obj])."""
    if not active():
        return [obj]
    out = [None] * _torch_dist().get_world_size()
    _torch_dist().all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor):
    if active():
        _torch_dist().all_reduce(tensor)
    return tensor


def wrap(module):
    """DistributedDataParallel around the loss module when ranks are running: the loss is its
    forward, so DDP all-reduces the gradients of everything it computes."""
    if not active():
        return module
    import torch
    from torch.nn.parallel import DistributedDataParallel
    device = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    # every rank built the same weights from the same seed; skip broadcasting gigabytes of them
    # (where DDP has no init_sync, torch 2.6, it broadcasts them once: the same weights, a slower start)
    skip = {"init_sync": False} if "init_sync" in inspect.signature(DistributedDataParallel).parameters else {}
    return DistributedDataParallel(module, device_ids=device, **skip)
