"""The training loop: plain PyTorch, readable top to bottom (nanoGPT's lesson).

Length-grouped batches with dynamic padding (little compute spent on pads), loss on answer
tokens only (the generative head never computes full-vocabulary logits for prompt tokens),
checkpoints every N steps with everything needed to resume to the same final weights.
"""
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass
class TrainArgs:
    lr: float = 1e-3
    epochs: float = 1.0
    max_steps: int = 0           # 0: derived from epochs
    batch_size: int = 16
    grad_accum: int = 1
    warmup: float = 0.06         # fraction of steps
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 50   # steps; 0 disables
    class_weights: bool = False


def length_grouped_batches(lengths, batch_size, seed, epoch):
    """Shuffle, sort within windows of 50 batches by length, shuffle the batches: similar
    lengths share a batch (little padding) while the order stays random and reproducible."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_right(sequences, value):
    width = max(len(s) for s in sequences)
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in sequences])


def collate(ids, pad_id, targets=None, device="cpu"):
    """Right-padded batch; targets is per-row label index (classify) or answer ids (generate)."""
    batch = {"input_ids": pad_right(ids, pad_id).to(device),
             "attention_mask": pad_right([[1] * len(s) for s in ids], 0).to(device)}
    if targets is not None:
        batch["targets"] = targets
    return batch


def generative_loss(model, batch):
    """Cross-entropy on the answer tokens only: hidden states are gathered at the positions
    that predict answer tokens, and only those go through the (large) output layer."""
    answers, prompt_ids = batch["targets"], batch["input_ids"]
    inputs = [list(p[:n]) + a for p, n, a in zip(prompt_ids.tolist(), batch["attention_mask"].sum(1).tolist(), answers)]
    full = collate(inputs, 0, device=prompt_ids.device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model   # peft or full FT
    hidden = base.model(input_ids=full["input_ids"],
                                          attention_mask=full["attention_mask"]).last_hidden_state
    rows, positions, labels = [], [], []
    for row, (seq, answer) in enumerate(zip(inputs, answers)):
        start = len(seq) - len(answer)
        rows += [row] * len(answer)
        positions += list(range(start - 1, len(seq) - 1))
        labels += answer
    logits = model.get_output_embeddings()(hidden[rows, positions])
    return F.cross_entropy(logits.float(), torch.tensor(labels, device=logits.device))


def classify_loss(model, batch, weights=None):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.float(), torch.tensor(batch["targets"], device=logits.device), weight=weights)


def _trainable_state(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path, model, optimizer, scheduler, step, loss_log):
    state = {"trainable": _trainable_state(model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "loss_log": loss_log,
             "rng": torch.get_rng_state()}
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)   # a kill during the save leaves the previous checkpoint whole


def load_checkpoint(path, model, optimizer, scheduler):
    state = torch.load(path, weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["step"], state["loss_log"]


def total_steps(n_rows, args):
    if args.max_steps:
        return args.max_steps
    return max(1, math.ceil(args.epochs * math.ceil(n_rows / args.batch_size) / args.grad_accum))


def fit(model, ids, targets, pad_id, loss_fn, args, checkpoint=None, resume=False, desc="train"):
    """Train model's trainable parameters; returns the per-step loss log."""
    torch.manual_seed(args.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps = total_steps(len(ids), args)
    warm = max(1, int(args.warmup * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / max(1, steps - warm + 1)))
    step, loss_log = 0, []
    if resume and checkpoint and os.path.exists(checkpoint):
        step, loss_log = load_checkpoint(checkpoint, model, optimizer, scheduler)
    lengths = [len(s) for s in ids]
    schedule = {}                            # epoch -> its batches, built once per epoch
    per_epoch = len(length_grouped_batches(lengths, args.batch_size, args.seed, 0))
    micro = step * args.grad_accum           # micro-batches already consumed
    model.train()
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", dynamic_ncols=True)
    while step < steps:
        running = 0.0
        for _ in range(args.grad_accum):
            epoch, index = divmod(micro, per_epoch)
            if epoch not in schedule:
                schedule = {epoch: length_grouped_batches(lengths, args.batch_size, args.seed, epoch)}
            rows = schedule[epoch][index]
            batch = collate([ids[i] for i in rows], pad_id, [targets[i] for i in rows], model.device)
            loss = loss_fn(model, batch) / args.grad_accum
            loss.backward()
            running += loss.item()
            micro += 1
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_log.append(round(running, 5))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(loss_log[-20:]):.4f}")
        if checkpoint and args.checkpoint_every and step % args.checkpoint_every == 0 and step < steps:
            save_checkpoint(checkpoint, model, optimizer, scheduler, step, loss_log)
    bar.close()
    model.eval()
    return loss_log
