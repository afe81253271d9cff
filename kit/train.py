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
    frozen_cache_gb: float = 0   # budget for the frozen lower blocks' states: the disk cache's (0: 20 GB or half
                                 # the free disk), or with state_cache off this fit's RAM (0: half the free RAM)
    state_cache: bool = True     # keep those states on disk for every later fit and prediction (kit/states.py)
    # the leaderboard levers (kit/levers.py); the fingerprints are filled in when a run starts,
    # from the probabilities actually used, so retraining a teacher changes the student's key
    pseudo: str = None           # RUN[:SPLIT]: pseudo-labels from RUN's predictions of SPLIT (default test)
    pseudo_threshold: float = 0.9   # a split row is used when its top probability reaches this
    pseudo_soft: bool = False    # train on the probability vector instead of its argmax (classify head)
    pseudo_fingerprint: str = None
    teacher: str = None          # RUN: distil from its probabilities (oof.csv; fold models under kit cv)
    kl_weight: float = 0.5       # W in (1 - W) * CE + W * T^2 * KL(teacher_T || student_T)
    temperature: float = 2.0     # T
    teacher_fingerprint: str = None


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


def available_memory_bytes():
    """Memory this process can still take without swapping (MemAvailable), else total RAM."""
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class _PassThrough(torch.nn.Module):
    """Stands in for a cached lower block: returns its input; keeps the block's attention type."""

    def __init__(self, block):
        super().__init__()
        if hasattr(block, "attention_type"):
            self.attention_type = block.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class FrozenBottom:
    """When only the top blocks learn (LoRA on the top N layers), the lower blocks give the
    same output for a row in every epoch: their states come from a state source (kit/states.py:
    the disk cache shared by folds, runs and predictions, or states kept for this fit only),
    and the top blocks run alone. A step then costs the top blocks' forward and backward, not a
    pass through the whole model; a prediction costs the top blocks' forward.

    The cached states are fed to the first trained block through a forward pre-hook, so
    whatever the backbone does before its blocks (Gemma scales the embeddings) is not applied
    twice: the block sees exactly what it saw in the full pass."""

    def __init__(self, model, split, states):
        self.attribute, self.backbone, self.blocks = block_list(model)
        self.split, self.states, self.pending = split, states, None
        # the dtype hidden states flow in through the full pass (the frozen weights' dtype, bf16 on
        # a GPU; LoRA's own fp32 weights cast their inputs themselves)
        self.dtype = model.get_input_embeddings().weight.dtype

    @staticmethod
    def trainable_split(model):
        """The first trained block when every block below it, and everything before the blocks,
        is frozen; 0 when there is nothing to cache."""
        found = block_list(model)
        if found is None:
            return 0
        _, backbone, blocks = found
        trainable = [any(p.requires_grad for p in block.parameters()) for block in blocks]
        inside = {id(p) for p in blocks.parameters()}
        before = any(p.requires_grad for p in backbone.parameters() if id(p) not in inside)
        if trainable[0] or not any(trainable) or before:
            return 0
        return trainable.index(True)

    def inputs(self, rows, pad_id, device):
        """A left-padded batch for the top blocks: filler ids for the (discarded) embeddings,
        and the cached states waiting for the first trained block's pre-hook."""
        self.pending, mask = self.states.batch(rows, self.dtype, device)
        # any id but the pad: a classification head pools the last non-pad id, which with left
        # padding is the last position, as in the full pass
        filler = 1 if pad_id == 0 else 0
        return {"input_ids": torch.full_like(mask, filler), "attention_mask": mask,
                "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}

    def _feed(self, module, args, kwargs):
        """Replace the first trained block's input with the cached states (once per forward:
        gradient checkpointing wraps the block's forward, inside this hook)."""
        if self.pending is None:
            return None
        if args:
            return (self.pending, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self.pending}

    def __enter__(self):
        """Run only the top blocks, fed from the cache. The lower blocks are replaced by
        pass-throughs rather than removed: Gemma-2 and Qwen pick each block's attention mask
        (sliding or full) by its position in the list."""
        if self.split:
            self.hook = self.blocks[self.split].register_forward_pre_hook(self._feed, with_kwargs=True)
            skipped = [_PassThrough(block) for block in list(self.blocks)[:self.split]]
            setattr(self.backbone, self.attribute, torch.nn.ModuleList(skipped + list(self.blocks)[self.split:]))
        return self

    def __exit__(self, *exc):
        if self.split:
            self.hook.remove()
            self.pending = None
            setattr(self.backbone, self.attribute, self.blocks)


class AnswerLoss(torch.nn.Module):
    """Generative head: cross-entropy on the answer tokens only. The rows end with their answers
    (left padding): only the positions that predict answer tokens go through the (large) output
    layer. The loss is this module's forward, so a DistributedDataParallel wrapper sees it.
    forward returns the SUM over the batch's answer tokens; fit divides by `weight` of the
    whole global batch, so ranks that each hold a share give exactly the one-process mean."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @staticmethod
    def weight(answers):
        return sum(len(a) for a in answers)

    def answer_logits(self, inputs, answers):
        """(vocabulary logits at every position that predicts an answer token, those tokens)."""
        hidden = backbone_of(self.model)(**inputs).last_hidden_state
        width = hidden.shape[1]
        rows, positions, labels = [], [], []
        for row, answer in enumerate(answers):
            rows += [row] * len(answer)
            positions += list(range(width - len(answer) - 1, width - 1))
            labels += answer
        logits = self.model.get_output_embeddings()(hidden[rows, positions])
        return logits.float(), torch.tensor(labels, device=logits.device)

    def forward(self, inputs, answers):
        logits, labels = self.answer_logits(inputs, answers)
        return F.cross_entropy(logits, labels, reduction="sum")


class ClassifyLoss(torch.nn.Module):
    """Classification head: cross-entropy on the head's logits (optionally class-weighted)."""

    def __init__(self, model, weights=None):
        super().__init__()
        self.model, self.weights = model, weights

    def weight(self, labels):
        """What the weighted mean divides by: the rows' class weights (the row count without)."""
        return float(sum(self.weights[y] for y in labels)) if self.weights is not None else len(labels)

    def forward(self, inputs, labels):
        """The sum of the rows' (weighted) losses; see AnswerLoss."""
        logits = self.model(**inputs).logits
        return F.cross_entropy(logits.float(), torch.tensor(labels, device=logits.device), weight=self.weights,
                               reduction="sum")


@dataclass(frozen=True)
class RowTarget:
    """A training row's target when a lever needs more than the label (kit/levers.py): the
    label (its index, a probability vector for a soft pseudo-label, or the generative head's
    answer token ids) and, for distillation, the teacher's probability per label."""
    label: object
    teacher: tuple = None


def distillation_kl(logits, teacher_probs, temperature):
    """Per row KL(teacher_T || student_T) with teacher_T = softmax(log p / T) and student_T =
    softmax(logits / T). Probabilities read from CSV files can be exactly 0: clamped before the log."""
    teacher_t = torch.softmax(torch.log(teacher_probs.clamp_min(1e-12)) / temperature, dim=-1)
    student_t = torch.log_softmax(logits / temperature, dim=-1)
    return F.kl_div(student_t, teacher_t, reduction="none").sum(-1)


def _teacher_tensor(targets, device):
    if any(t.teacher is None for t in targets):
        raise ValueError("distillation: every row needs the teacher's probabilities")
    return torch.tensor([t.teacher for t in targets], dtype=torch.float32, device=device)


class SoftClassifyLoss(ClassifyLoss):
    """Classification head with the levers: a row's label is an index (cross-entropy as
    ClassifyLoss) or a probability vector (a soft pseudo-label: cross-entropy against it), and
    with kl_weight W > 0 each row's loss is (1 - W) * CE + W * T^2 * KL(teacher_T || student_T).
    The T^2 keeps the KL gradients' scale independent of T (Hinton et al.). Class weights weigh
    the whole row (a soft row by its expected class weight). Returns the SUM, like ClassifyLoss;
    with W = 0 it is exactly ClassifyLoss's sum on the same rows."""

    def __init__(self, model, weights=None, kl_weight=0.0, temperature=1.0):
        super().__init__(model, weights)
        self.kl_weight, self.temperature = float(kl_weight), float(temperature)

    def _row_weights(self, targets):
        if self.weights is None:
            return [1.0] * len(targets)
        weights = self.weights.tolist()
        return [float(np.dot(weights, t.label)) if _is_vector(t.label) else weights[t.label] for t in targets]

    def weight(self, targets):
        return float(sum(self._row_weights(targets)))

    def forward(self, inputs, targets):
        logits = self.model(**inputs).logits.float()
        device = logits.device
        hard = [i for i, t in enumerate(targets) if not _is_vector(t.label)]
        soft = [i for i, t in enumerate(targets) if _is_vector(t.label)]
        total = logits.new_zeros(())
        if hard:
            labels = torch.tensor([targets[i].label for i in hard], device=device)
            total = total + F.cross_entropy(logits[hard], labels, weight=self.weights, reduction="sum")
        if soft:
            probs = torch.tensor([targets[i].label for i in soft], dtype=torch.float32, device=device)
            total = total + F.cross_entropy(logits[soft], probs, weight=self.weights, reduction="sum")
        if not self.kl_weight:
            return total
        kl = distillation_kl(logits, _teacher_tensor(targets, device), self.temperature)
        kl = (kl * torch.tensor(self._row_weights(targets), device=device)).sum()
        return (1 - self.kl_weight) * total + self.kl_weight * self.temperature ** 2 * kl


class DistillAnswerLoss(AnswerLoss):
    """Generative head with a teacher: (1 - W) * CE on the answer tokens + W * T^2 * KL between
    the teacher's label probabilities and the student's distribution over the label words'
    first tokens at the position that predicts the answer's first token (the distribution
    `kit predict --mode score` reads). The KL counts once per answer token of the row, so both
    terms share AnswerLoss's token-mean (`weight`); with one-token answers that is per row.
    Targets are RowTarget(answer token ids, teacher probabilities)."""

    def __init__(self, model, first_tokens, kl_weight=0.5, temperature=2.0):
        super().__init__(model)
        self.first_tokens = list(first_tokens)
        self.kl_weight, self.temperature = float(kl_weight), float(temperature)

    @staticmethod
    def weight(targets):
        return sum(len(t.label) for t in targets)

    def forward(self, inputs, targets):
        answers = [t.label for t in targets]
        logits, labels = self.answer_logits(inputs, answers)
        total = F.cross_entropy(logits, labels, reduction="sum")
        if not self.kl_weight:
            return total
        lengths = torch.tensor([len(a) for a in answers], device=logits.device)
        starts = torch.cumsum(lengths, 0) - lengths       # each row's first answer position
        first = logits[starts][:, self.first_tokens]
        kl = distillation_kl(first, _teacher_tensor(targets, logits.device), self.temperature)
        return (1 - self.kl_weight) * total + self.kl_weight * self.temperature ** 2 * (kl * lengths).sum()


def _is_vector(label):
    return isinstance(label, (list, tuple, np.ndarray))


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


def _frozen_bottom(model, ids, args, steps, step, source):
    """FrozenBottom when the lower blocks are frozen, else None. Without the disk cache the states
    pay only when rows are seen more than once; with it they are kept for later fits anyway."""
    from .states import MemoryStates
    split = FrozenBottom.trainable_split(model)
    if not split or step >= steps:
        return None
    kept_on_disk = source is not None and not isinstance(source, MemoryStates)
    if not kept_on_disk and steps * args.batch_size * args.grad_accum <= len(ids):
        log("frozen blocks: every row is seen once, so caching the lower blocks would not pay; "
            "training through all blocks")
        return None
    source = source or MemoryStates(int(args.frozen_cache_gb * 2**30))
    states = source.states(model, split, ids)
    if states is None:
        return None
    return FrozenBottom(model, split, states)


def fit(module, ids, targets, pad_id, args, checkpoint=None, resume=False, desc="train",
        left_pad=True, frozen_bottom=True, checkpoint_key=None, precision="fp32", data_parallel=True,
        state_source=None):
    """Train the trainable parameters of module.model on token sequences; returns the per-step
    loss log. module(inputs, targets_of_batch) -> summed loss (AnswerLoss, ClassifyLoss).
    A checkpoint is resumed only when it carries checkpoint_key (the run's configuration).
    Under torchrun / accelerate launch (and data_parallel) each rank takes its share of every
    global batch and DistributedDataParallel all-reduces the gradients. state_source
    (kit/states.py) gives the frozen lower blocks' states; by default they are kept for this
    fit only. Returns the per-step loss log."""
    from transformers import get_linear_schedule_with_warmup
    from . import dist
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
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", dynamic_ncols=True, disable=rank != 0)
    with bottom if bottom is not None else contextlib.nullcontext():
        while step < steps:
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
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(loss_log[-20:]):.4f}")
            if checkpoint and args.checkpoint_every and step % args.checkpoint_every == 0 and step < steps:
                if rank == 0:                      # one writer; every rank resumes from its file
                    save_checkpoint(checkpoint, key, trainable, optimizer, scheduler, step, loss_log, scaler)
                if ranks > 1:                      # (CV folds side by side train alone: no barrier)
                    dist.barrier()
    bar.close()
    model.eval()
    return loss_log
