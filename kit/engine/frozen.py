"""LoRA on the top blocks only: the frozen lower blocks are computed once (FrozenBottom), from memory or the
state cache, and the top blocks train on their states."""

import torch

from kit.core.logs import log
from kit.engine.architecture import block_list
from kit.engine.states import MemoryStates


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
    same output for a row in every epoch: their states come from a state source (kit/engine/states.py:
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


def _frozen_bottom(model, ids, args, steps, step, source):
    """FrozenBottom when the lower blocks are frozen, else None. Without the disk cache the states
    pay only when rows are seen more than once; with it they are kept for later fits anyway."""
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
