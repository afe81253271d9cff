"""Batches: length-grouped training batches, length-sorted prediction batches, and padding (left for decoders)."""
import numpy as np
import torch


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


def batches_by_length(ids, batch_size, sort=True):
    order = np.argsort([len(s) for s in ids], kind="stable") if sort else np.arange(len(ids))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
