"""The training loop: plain PyTorch, readable top to bottom (nanoGPT's lesson).

Length-grouped batches with dynamic padding (little compute spent on pads), loss on answer
tokens only (the generative head never computes full-vocabulary logits for prompt tokens),
checkpoints every N steps with everything needed to resume to the same final weights.
"""
import contextlib
import math
import os
import time

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from kit.core import dist
from kit.core.logs import log
from kit.core.progress import progress
from kit.engine.batching import length_grouped_batches, pad_batch
from kit.engine.frozen import _frozen_bottom


def trainable_parameters(model):
    """Name -> parameter, taken before FrozenBottom swaps the block list (inside the swap the
    top blocks would be renumbered from 0)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _rng_state():
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, key, trainable, optimizer, scheduler, step, loss_log, scaler=None):
    """Plain tensors, numbers and strings only, so loading needs no pickle (weights_only)."""
    state = {"key": key, "trainable": {name: p.detach().clone() for name, p in trainable.items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
             "loss_log": loss_log, "rng": _rng_state(), "scaler": scaler.state_dict() if scaler else None}
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)   # a kill during the save leaves the previous checkpoint whole


def load_checkpoint(path, key, trainable, optimizer, scheduler, scaler=None):
    """Restore a checkpoint made by this exact configuration; anything else starts fresh."""
    try:
        state = torch.load(path, weights_only=True)    # never unpickles code
    except Exception as error:   # a corrupt, foreign or crafted file: never trusted
        log(f"{path}: not a usable checkpoint ({type(error).__name__}); training from the start")
        return 0, []
    if state.get("key") != key or set(state.get("trainable", {})) != set(trainable):
        log(f"{path}: made with other settings; training from the start")
        return 0, []
    with torch.no_grad():
        for name, value in state["trainable"].items():
            trainable[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    if scaler and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    log(f"{path}: resuming at step {state['step']}")
    return state["step"], state["loss_log"]


def total_steps(n_rows, args):
    if args.max_steps:
        return args.max_steps
    return max(1, math.ceil(args.epochs * math.ceil(n_rows / args.batch_size) / args.grad_accum))


def autocast_and_scaler(precision, device_type):
    """bf16: autocast only; fp16: autocast plus a gradient scaler (fp16 gradients underflow
    without one; T4/V100 have no bf16); fp32: neither."""
    if precision == "fp32":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device_type) if precision == "fp16" else None
    return (lambda: torch.autocast(device_type, dtype=dtype)), scaler


def _out_of_time(deadline, ranks, device):
    """Whether the deadline has passed (every rank stops at the same step: one says, all stop)."""
    if deadline is None:
        return False
    late = float(time.monotonic() >= deadline)
    return (float(dist.all_reduce_sum(torch.tensor(late, device=device))) if ranks > 1 else late) > 0


def fit(module, ids, targets, pad_id, args, checkpoint=None, resume=False, desc="train",
        left_pad=True, frozen_bottom=True, checkpoint_key=None, precision="fp32", data_parallel=True,
        state_source=None, on_step=None):
    """Train the trainable parameters of module.model on token sequences; returns the per-step
    loss log. module(inputs, targets_of_batch) -> summed loss (AnswerLoss, ClassifyLoss).
    A checkpoint is resumed only when it carries checkpoint_key (the run's configuration).
    Under torchrun / accelerate launch (and data_parallel) each rank takes its share of every
    global batch and DistributedDataParallel all-reduces the gradients. state_source
    (kit/engine/states.py) gives the frozen lower blocks' states; by default they are kept for this
    fit only. on_step(step) is called as each optimizer step begins and once more, with the step
    count, when the last one ends (benchmarks time steps with it). Returns the per-step loss log."""

    model = module.model
    torch.manual_seed(args.seed)
    trainable = trainable_parameters(module)
    ranks, rank = (dist.world_size(), dist.rank()) if data_parallel and dist.active() else (1, 0)
    if ranks > 1:
        for parameter in trainable.values():     # every rank starts from rank 0's trained weights
            torch.distributed.broadcast(parameter.data, 0)
    net = dist.wrap(module) if ranks > 1 else module
    params = list(trainable.values())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps = total_steps(len(ids), args)
    # linear warm-up from 0, then linear decay to 0 (the library's schedule, as documented)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(round(args.warmup * steps)), steps)
    autocast, scaler = autocast_and_scaler(precision, model.device.type)
    step, loss_log = 0, []
    key = checkpoint_key or "unkeyed"
    if resume and checkpoint and os.path.exists(checkpoint):
        step, loss_log = load_checkpoint(checkpoint, key, trainable, optimizer, scheduler, scaler)
    bottom = _frozen_bottom(model, ids, args, steps, step, state_source) if frozen_bottom and left_pad else None
    if bottom is not None:
        make_inputs = lambda rows: bottom.inputs(rows, pad_id, model.device)   # noqa: E731
    else:
        make_inputs = lambda rows: pad_batch([ids[i] for i in rows], pad_id, left_pad, model.device)  # noqa: E731
    lengths = [len(s) for s in ids]
    schedule = {}                            # epoch -> its batches, built once per epoch
    per_epoch = len(length_grouped_batches(lengths, args.batch_size, args.seed, 0))
    micro = step * args.grad_accum           # micro-batches already consumed
    module.train()
    bar = progress(total=steps, initial=step, desc=desc, unit="step", disable=rank != 0)
    with bottom if bottom is not None else contextlib.nullcontext():
        while step < steps:
            if step and _out_of_time(args.deadline, ranks, model.device):   # at least one step: a model that learned
                log(f"{desc}: the time budget stops training at step {step} of {steps}; the model so far is kept")
                break
            if on_step:
                on_step(step)
            running = 0.0
            for _ in range(args.grad_accum):
                epoch, index = divmod(micro, per_epoch)
                if epoch not in schedule:
                    schedule = {epoch: length_grouped_batches(lengths, args.batch_size, args.seed, epoch)}
                rows = schedule[epoch][index]
                total = module.weight([targets[i] for i in rows])   # of the whole global batch
                share = rows[rank::ranks] or rows[:1]     # an empty share still joins the all-reduce
                with autocast():
                    summed = net(make_inputs(share), [targets[i] for i in share])
                    if not rows[rank::ranks]:
                        summed = summed * 0.0
                # DDP averages gradients over ranks: scale so the average is the global mean
                loss = summed * ranks / (total * args.grad_accum)
                (scaler.scale(loss) if scaler else loss).backward()
                running += float(dist.all_reduce_sum(summed.detach().float().clone())) / (total * args.grad_accum) \
                    if ranks > 1 else loss.item()
                micro += 1
            if scaler:
                scaler.unscale_(optimizer)          # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            if scaler:
                scaler.step(optimizer)              # skips the step when gradients overflowed
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_log.append(round(running, 5))
            bar.set_postfix(loss=f"{np.mean(loss_log[-20:]):.4f}")
            bar.update(1)
            if checkpoint and args.checkpoint_every and step % args.checkpoint_every == 0 and step < steps:
                if rank == 0:                      # one writer; every rank resumes from its file
                    save_checkpoint(checkpoint, key, trainable, optimizer, scheduler, step, loss_log, scaler)
                if ranks > 1:                      # (CV folds side by side train alone: no barrier)
                    dist.barrier()
    bar.close()
    if on_step:
        on_step(step)
    model.eval()
    return loss_log
