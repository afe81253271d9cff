"""The training loop: plain PyTorch, readable top to bottom (nanoGPT's lesson).

Length-grouped batches with dynamic padding (little compute spent on pads), loss on answer
tokens only (the generative head never computes full-vocabulary logits for prompt tokens),
checkpoints every N steps with everything needed to resume to the same final weights.
"""
import contextlib
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .logs import log


@dataclass
class TrainArgs:
    lr: float = 1e-3
    epochs: float = 2.0
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


def backbone_of(model):
    """The transformer stack under any head and any peft wrapper (LlamaModel, BertModel, ...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix, base)


def block_list(model):
    """The ModuleList of transformer blocks, or None when the model keeps them elsewhere."""
    backbone = backbone_of(model)
    for name in ("layers", "h", "blocks"):
        blocks = getattr(backbone, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            return name, backbone, blocks
    return None


def pad_batch(sequences, pad_id, left, device):
    """Token ids padded into a batch. Decoders pad on the left, so the last position is every
    row's last real token (the classify head pools it, the answer follows it), with positions
    counted from each row's first real token, exactly as prediction does."""
    width = max(len(s) for s in sequences)
    pads = [[pad_id] * (width - len(s)) for s in sequences]
    ids = [p + list(s) if left else list(s) + p for p, s in zip(pads, sequences)]
    mask = [[0] * len(p) + [1] * len(s) if left else [1] * len(s) + [0] * len(p) for p, s in zip(pads, sequences)]
    batch = {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}
    if left:
        batch["position_ids"] = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
    return batch


class FrozenBottom:
    """When only the top blocks learn (LoRA on the top N layers), the lower blocks give the
    same output for a row in every epoch: compute it once, then train on the top blocks alone.
    A step then costs the top blocks' forward and backward, not a pass through the whole model."""

    def __init__(self, model, sequences, batch_size=32):
        found = block_list(model)
        self.split = 0
        if found is None:
            return
        self.attribute, self.backbone, self.blocks = found
        trainable = [any(p.requires_grad for p in block.parameters()) for block in self.blocks]
        if any(trainable[:1]) or not any(trainable) or any(p.requires_grad for p in self._below_blocks()):
            return            # everything learns: nothing to cache
        self.split = trainable.index(True)
        self.states = [None] * len(sequences)
        self._compute(model, sequences, batch_size)

    def _below_blocks(self):
        skip = {id(p) for p in self.blocks.parameters()}
        return [p for p in self.backbone.parameters() if id(p) not in skip]

    def _compute(self, model, sequences, batch_size):
        class Stop(Exception):
            pass
        captured = {}

        def grab(module, args, output):
            captured["h"] = output[0] if isinstance(output, tuple) else output
            raise Stop
        hook = self.blocks[self.split - 1].register_forward_hook(grab)
        order = np.argsort([len(s) for s in sequences], kind="stable")
        try:
            with torch.no_grad():
                for start in tqdm(range(0, len(order), batch_size), desc=f"frozen blocks 1-{self.split}",
                                  unit="batch", dynamic_ncols=True):
                    rows = order[start:start + batch_size]
                    batch = pad_batch([sequences[i] for i in rows], 0, True, model.device)
                    try:
                        self.backbone(**batch)
                    except Stop:
                        pass
                    for j, i in enumerate(rows):
                        self.states[i] = captured["h"][j, -len(sequences[i]):].clone()
        finally:
            hook.remove()

    def inputs(self, rows, device):
        """A left-padded batch of cached hidden states for the top blocks."""
        states = [self.states[i] for i in rows]
        width = max(len(s) for s in states)
        embeds = torch.zeros(len(states), width, states[0].shape[-1], dtype=states[0].dtype, device=device)
        mask = torch.zeros(len(states), width, dtype=torch.long, device=device)
        for j, s in enumerate(states):
            embeds[j, width - len(s):] = s
            mask[j, width - len(s):] = 1
        return {"inputs_embeds": embeds, "attention_mask": mask,
                "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}

    def __enter__(self):
        """Run only the top blocks: the backbone takes the cached states as its 'embeddings'."""
        if self.split:
            setattr(self.backbone, self.attribute, torch.nn.ModuleList(list(self.blocks)[self.split:]))
        return self

    def __exit__(self, *exc):
        if self.split:
            setattr(self.backbone, self.attribute, self.blocks)


class AnswerLoss(torch.nn.Module):
    """Generative head: cross-entropy on the answer tokens only. The rows end with their answers
    (left padding): only the positions that predict answer tokens go through the (large) output
    layer. The loss is this module's forward, so a DistributedDataParallel wrapper sees it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs, answers):
        hidden = backbone_of(self.model)(**inputs).last_hidden_state
        width = hidden.shape[1]
        rows, positions, labels = [], [], []
        for row, answer in enumerate(answers):
            rows += [row] * len(answer)
            positions += list(range(width - len(answer) - 1, width - 1))
            labels += answer
        logits = self.model.get_output_embeddings()(hidden[rows, positions])
        return F.cross_entropy(logits.float(), torch.tensor(labels, device=logits.device))


class ClassifyLoss(torch.nn.Module):
    """Classification head: cross-entropy on the head's logits (optionally class-weighted)."""

    def __init__(self, model, weights=None):
        super().__init__()
        self.model, self.weights = model, weights

    def forward(self, inputs, labels):
        logits = self.model(**inputs).logits
        return F.cross_entropy(logits.float(), torch.tensor(labels, device=logits.device), weight=self.weights)


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


def save_checkpoint(path, key, trainable, optimizer, scheduler, step, loss_log):
    """Plain tensors, numbers and strings only, so loading needs no pickle (weights_only)."""
    state = {"key": key, "trainable": {name: p.detach().clone() for name, p in trainable.items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
             "loss_log": loss_log, "rng": _rng_state()}
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)   # a kill during the save leaves the previous checkpoint whole


def load_checkpoint(path, key, trainable, optimizer, scheduler):
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
    log(f"{path}: resuming at step {state['step']}")
    return state["step"], state["loss_log"]


def total_steps(n_rows, args):
    if args.max_steps:
        return args.max_steps
    return max(1, math.ceil(args.epochs * math.ceil(n_rows / args.batch_size) / args.grad_accum))


def fit(module, ids, targets, pad_id, args, checkpoint=None, resume=False, desc="train",
        left_pad=True, frozen_bottom=True, checkpoint_key=None):
    """Train the trainable parameters of module.model on token sequences; returns the per-step
    loss log. module(inputs, targets_of_batch) -> scalar loss (AnswerLoss, ClassifyLoss).
    A checkpoint is resumed only when it carries checkpoint_key (the run's configuration)."""
    from transformers import get_linear_schedule_with_warmup
    model = module.model
    torch.manual_seed(args.seed)
    trainable = trainable_parameters(module)
    params = list(trainable.values())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps = total_steps(len(ids), args)
    # linear warm-up from 0, then linear decay to 0 (the library's schedule, as documented)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(round(args.warmup * steps)), steps)
    step, loss_log = 0, []
    key = checkpoint_key or "unkeyed"
    if resume and checkpoint and os.path.exists(checkpoint):
        step, loss_log = load_checkpoint(checkpoint, key, trainable, optimizer, scheduler)
    bottom = FrozenBottom(model, ids) if frozen_bottom and left_pad and step < steps else None
    if bottom is not None and bottom.split:
        make_inputs = lambda rows: bottom.inputs(rows, model.device)   # noqa: E731
    else:
        make_inputs = lambda rows: pad_batch([ids[i] for i in rows], pad_id, left_pad, model.device)  # noqa: E731
    lengths = [len(s) for s in ids]
    schedule = {}                            # epoch -> its batches, built once per epoch
    per_epoch = len(length_grouped_batches(lengths, args.batch_size, args.seed, 0))
    micro = step * args.grad_accum           # micro-batches already consumed
    module.train()
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", dynamic_ncols=True)
    with bottom if bottom is not None else contextlib.nullcontext():
        while step < steps:
            running = 0.0
            for _ in range(args.grad_accum):
                epoch, index = divmod(micro, per_epoch)
                if epoch not in schedule:
                    schedule = {epoch: length_grouped_batches(lengths, args.batch_size, args.seed, epoch)}
                rows = schedule[epoch][index]
                loss = module(make_inputs(rows), [targets[i] for i in rows]) / args.grad_accum
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
                save_checkpoint(checkpoint, key, trainable, optimizer, scheduler, step, loss_log)
    bar.close()
    model.eval()
    return loss_log
