"""Frozen lower-block states: computed once, kept on disk, shared by every fit and prediction.

With LoRA on the top N blocks (the CPU default) the lower blocks never learn, so a row's states
at the first trained block are the same in every epoch, every CV fold, `kit train` after
`kit cv`, every sweep entry with the same base model and prompt, and every model that predicts
the row (fold models, merged folds). They are computed once and stored in half precision in
memory-mapped shard files under runs/.state-cache/.

A row is found by a key over its exact token ids (they already carry the prompt template, the
instruction, the input and the max-length cut), inside a folder keyed by everything else that
decides its states: the base model's fingerprint, the split point, how the pass is computed
(fp32 weights or int8), the weights' dtype, the attention implementation, the device type and
the library versions. Anything else is never reused.

A shard is a raw .bin file and a .json index written after it. The index holds the .bin's size
and sha256, checked before its first use in a process: a corrupt, truncated or foreign shard is
deleted and its rows computed again, never trusted. The index is JSON, so loading it runs no
code. A long pass writes a shard every SHARD_ROWS rows, so an interrupted one keeps what it
finished. Over the size budget, the least recently used shards are deleted.
"""
import copy
import hashlib
import importlib.metadata as meta
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from torch.ao.quantization import quantize_dynamic
from transformers import DynamicCache

from kit.core.errors import KitError
from kit.core.files import writing
from kit.core.logs import log
from kit.core.progress import progress
from kit.engine.architecture import block_list
from kit.engine.device import available_memory_bytes
from kit.engine.inference import PrefixCache

ROOT = Path(os.environ.get("KIT_STATE_CACHE", "runs/.state-cache"))
FORMAT = 1
SHARD_ROWS = 1024
DEFAULT_BUDGET_GB = 20
BATCH_SIZE = 16       # rows per batch of the frozen pass: 1.05-1.07x the speed of 32, 64 slower (`kit bench`)
_VERIFIED = set()     # shards whose sha256 this process has checked: (path, size)
# The kit writes MARKER in a cache root it creates, and deletes (clear, eviction) only inside a
# root that holds it, and there only its own shard folders (an identity key: 16 hex characters)
MARKER = ".kit-state-cache"
_SHARD_FOLDER = re.compile(r"[0-9a-f]{16}")


def row_key(ids):
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:32]


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_cache(root):
    """root is a state cache the kit made (it holds the marker)."""
    return (Path(root) / MARKER).is_file()


def _entries(root):
    """The kit's own shard folders in root (never a link)."""
    root = Path(root)
    return [p for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink()
            and _SHARD_FOLDER.fullmatch(p.name)] if root.is_dir() else []


def _shard_files(folder):
    """A shard folder's shards (.bin and its .json index) and leftovers of interrupted writes."""
    return [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()
            and (p.suffix in (".bin", ".json") or (p.name.startswith(".") and p.name.endswith(".tmp")))]


def _claim_root(root):
    """Create the cache root with its marker. A folder without the marker is taken only when it
    holds nothing but shard folders (a cache made before the marker existed); any other folder
    (KIT_STATE_CACHE pointed at a user's folder) is refused."""
    root = Path(root)
    if root.is_dir() and not is_cache(root):
        ours = set(_entries(root))
        # a marker that appeared since is another rank's, claiming the same new root
        foreign = [p.name for p in sorted(root.iterdir()) if p not in ours and p.name != MARKER]
        if foreign:
            raise KitError(f"state cache {root}: not a kit state cache (it holds {foreign[0]!r} and no {MARKER}); "
                           "set KIT_STATE_CACHE to a new or empty folder")
    with writing(root):
        root.mkdir(parents=True, exist_ok=True)
        if not is_cache(root):
            (root / MARKER).write_text(json.dumps({"kit": "frozen-state cache", "format": FORMAT}) + "\n")


def cache_size(root=None):
    """Bytes the state cache holds on disk (its shards)."""
    return sum(p.stat().st_size for folder in _entries(root or ROOT) for p in _shard_files(folder))


def describe_cache(root=None):
    """One line per cached identity: its rows, size, base model and split point."""
    root, lines = Path(root or ROOT), []
    for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        metas = []
        for meta_path in folder.glob("*.json"):
            try:
                metas.append(json.loads(meta_path.read_text()))
            except (OSError, ValueError):
                continue
        if not metas:
            continue
        identity = metas[0].get("identity", {})
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        lines.append(f"{folder}: {sum(len(m.get('rows', {})) for m in metas)} rows, {size / 2**30:.2f} GB; base "
                     f"{identity.get('base')}, blocks 1-{identity.get('split')}, {identity.get('frozen_states')}")
    return lines


def clear_cache(root=None):
    """Delete the cached states; returns the bytes freed. Only in a root the kit made (it holds
    the marker), and there only its shard folders' files: anything else stays."""
    root = Path(root or ROOT)
    if not root.exists():
        return 0
    if not is_cache(root):
        raise KitError(f"state cache {root}: not a kit state cache (no {MARKER} in it); nothing deleted")
    freed = 0
    for folder in _entries(root):
        for path in _shard_files(folder):
            freed += path.stat().st_size
            path.unlink()
        try:
            folder.rmdir()
        except OSError:            # it holds something the kit did not write: left there
            pass
    return freed


def default_budget(root=None):
    """20 GB, or half the free disk where the cache lives when that is less."""
    root = Path(root or ROOT)
    probe = next((p for p in [root, *root.parents] if p.exists()), Path("."))
    return min(DEFAULT_BUDGET_GB * 2**30, shutil.disk_usage(probe).free // 2 + cache_size(root))


# -- the pass ------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _int8_blocks(blocks, split):
    """Copies of the lower blocks with int8 dynamic-quantised linear layers (CPU only: the
    weights are int8, activations are quantised per batch). They never train, so their
    precision matters only through the score."""
    return [quantize_dynamic(copy.deepcopy(block), {torch.nn.Linear}, dtype=torch.qint8)
            for block in list(blocks)[:split]]


def lower_pass(backbone, attribute, blocks, split, sequences, batch_size=BATCH_SIZE, int8=False, desc=None,
               share_prefix=True):
    """Yield (row indices, their states at the input of block `split`, fp32 numpy) per
    length-sorted batch: the backbone runs up to block split - 1 and stops there. The prompt
    prefix every row shares (template + instruction) is computed once: its lower blocks' KV
    cache serves every batch, and its states (the same for every row: attention is causal)
    open each row's states."""
    captured = {}

    def grab(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    def run(**inputs):
        try:
            backbone(**inputs)
        except _Stop:
            pass
        return captured["h"].float().cpu().numpy()
    device = next(blocks[split].parameters()).device
    if int8 and device.type != "cpu":
        raise KitError("--frozen-states int8: int8 dynamic quantisation runs on a CPU only; use fp16 on a GPU")
    lower = _int8_blocks(blocks, split) if int8 else list(blocks)[:split]
    if int8:
        setattr(backbone, attribute, torch.nn.ModuleList(lower + list(blocks)[split:]))
    hook = lower[-1].register_forward_hook(grab)
    order = np.argsort([len(s) for s in sequences], kind="stable")
    try:
        with torch.no_grad():
            prefix = PrefixCache(_Forward(run, backbone, device), sequences, share_prefix and len(sequences) > 1)
            head = captured["h"].float().cpu().numpy()[0] if prefix.length else None
            for start in progress(range(0, len(order), batch_size), desc=desc or f"frozen blocks 1-{split}",
                                  unit="batch"):
                rows = order[start:start + batch_size]
                states = run(**prefix.inputs([sequences[i] for i in rows], 0, device))
                tails = [states[j, states.shape[1] - len(sequences[i]) + prefix.length:] for j, i in enumerate(rows)]
                yield rows, [np.concatenate([head, t]) if prefix.length else t for t in tails]
    finally:
        hook.remove()
        if int8:
            setattr(backbone, attribute, blocks)


class _Forward:
    """What PrefixCache needs of a model, for a backbone that stops at the split: the prefix's
    KV cache of the lower blocks (the blocks above never run)."""

    def __init__(self, run, backbone, device):
        self.run, self.device, self.config = run, device, backbone.config

    def __call__(self, input_ids, use_cache=True):
        cache = DynamicCache(config=self.config)
        self.run(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return _Cached(cache)


class _Cached:
    def __init__(self, cache):
        self.past_key_values = cache


# -- what a fit or a prediction reads --------------------------------------------------------------

class RowStates:
    """The states of a list of rows, one (tokens, hidden) array each (memory-mapped or in RAM)."""

    def __init__(self, arrays, hidden):
        self.arrays, self.hidden = arrays, hidden

    def batch(self, rows, dtype, device):
        """(left-padded states, attention mask) for these rows."""
        lengths = [len(self.arrays[i]) for i in rows]
        width = max(lengths)
        states = torch.zeros(len(rows), width, self.hidden, dtype=dtype)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, (i, n) in enumerate(zip(rows, lengths)):
            states[j, width - n:] = _as_tensor(self.arrays[i])
            mask[j, width - n:] = 1
        return states.to(device, non_blocking=True), mask.to(device)


def _as_tensor(array):
    if array.dtype == np.uint16:            # bf16 kept as its bit pattern (numpy has no bf16)
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))      # a copy: memory-mapped states are read-only


def _to_storage(arrays, storage):
    """A shard's fp32 states -> (the stored form, its name). Half precision keeps about three
    significant digits; a shard with a value beyond fp16's range is kept in fp32 instead."""
    if storage == "bf16":
        return [torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16) for a in arrays], storage
    if storage == "fp16" and max(float(np.abs(a).max(initial=0)) for a in arrays) < 60000:
        return [a.astype(np.float16) for a in arrays], storage
    return arrays, "fp32"


class MemoryStates:
    """States computed for one fit or prediction and dropped after it (--no-state-cache): the
    kit's behaviour before the disk cache, and what the cache is checked against."""

    def __init__(self, budget_bytes=0, frozen_states="fp32"):
        self.budget, self.frozen_states, self.last = budget_bytes, frozen_states, {}

    def states(self, model, split, sequences, desc=None):
        attribute, backbone, blocks = block_list(model)
        hidden = model.config.get_text_config().hidden_size
        need = sum(len(s) for s in sequences) * hidden * 4
        budget = self.budget or available_memory_bytes() // (2 * int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        if need > budget:
            log(f"frozen blocks: keeping blocks 1-{split}'s states would take {need / 2**30:.2f} GB, over the "
                f"{budget / 2**30:.2f} GB budget (--frozen-cache-gb); running every block")
            return None
        arrays, start = [None] * len(sequences), time.time()
        for rows, states in lower_pass(backbone, attribute, blocks, split, sequences,
                                       int8=self.frozen_states == "int8", desc=desc):
            for i, state in zip(rows, states):
                arrays[i] = state.copy()
        self.last = {"reused": 0, "computed": len(sequences), "seconds": round(time.time() - start, 1)}
        return RowStates(arrays, hidden)


class DiskStates:
    """The shared cache: rows already computed under the same identity are read from disk,
    the others computed (in shards of SHARD_ROWS rows) and added."""

    def __init__(self, identity, frozen_states="fp16", budget_bytes=0, root=None):
        self.identity = dict(identity, frozen_states=frozen_states, format=FORMAT,
                             torch=torch.__version__, transformers=_version("transformers"))
        self.frozen_states, self.root, self.last = frozen_states, Path(root or ROOT), {}
        self.budget = budget_bytes or default_budget(self.root)

    def folder(self, split):
        identity = dict(self.identity, split=split)
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.root / key, identity

    def states(self, model, split, sequences, desc=None):
        attribute, backbone, blocks = block_list(model)
        hidden = model.config.get_text_config().hidden_size
        folder, identity = self.folder(split)
        keys = [row_key(s) for s in sequences]
        found = self._index(folder, identity, hidden)
        missing = {}
        for i, key in enumerate(keys):
            if key not in found:
                missing.setdefault(key, i)
        storage = self._storage(model, split)
        need = sum(len(sequences[i]) for i in missing.values()) * hidden * np.dtype(
            np.float32 if storage == "fp32" else np.float16).itemsize
        if need > self.budget:
            log(f"frozen blocks: caching blocks 1-{split}'s states would take {need / 2**30:.2f} GB, over the "
                f"{self.budget / 2**30:.2f} GB budget (--frozen-cache-gb); running every block")
            return None
        start = time.time()
        if missing:
            self._compute(folder, identity, backbone, attribute, blocks, split, hidden, storage,
                          [sequences[i] for i in missing.values()], list(missing), desc)
            found = self._index(folder, identity, hidden)
        arrays = [found[key][1]() for key in keys]
        in_use = {found[key][0] for key in keys}
        self._touch(in_use)
        self._evict(in_use)
        counts = self.last = {"reused": len(keys) - len(missing), "computed": len(missing),
                              "seconds": round(time.time() - start, 1)}
        log(f"state cache: blocks 1-{split}, {counts['reused']} row(s) reused, {counts['computed']} computed ({folder})")
        return RowStates(arrays, hidden)

    def _storage(self, model, split):
        if self.frozen_states == "fp32":
            return "fp32"
        dtype = next(block_list(model)[2][split].parameters()).dtype
        return "bf16" if dtype == torch.bfloat16 else "fp16"

    # -- shards ----------------------------------------------------------------------------
    def _index(self, folder, identity, hidden):
        """key -> (its shard's index file, a function returning the row's memory-mapped states),
        over every valid shard."""
        found = {}
        for meta_path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            meta = self._valid_shard(meta_path, identity, hidden)
            if meta is None:
                continue
            dtype = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}[meta["storage"]]
            array = np.memmap(meta_path.with_suffix(".bin"), dtype=dtype, mode="r").reshape(-1, hidden)
            for key, (offset, length) in meta["rows"].items():
                found[key] = (meta_path, lambda a=array, o=offset, n=length: a[o:o + n])
        return found

    def _valid_shard(self, meta_path, identity, hidden):
        data = meta_path.with_suffix(".bin")
        try:
            meta = json.loads(meta_path.read_text())
            ok = (meta.get("format") == FORMAT and meta.get("identity") == json.loads(json.dumps(identity, default=str))
                  and meta.get("hidden") == hidden and meta.get("storage") in ("fp32", "fp16", "bf16")
                  and data.is_file() and data.stat().st_size == meta.get("bytes") and _rows_fit(meta, hidden))
            if ok and (str(data), meta["bytes"]) not in _VERIFIED:
                ok = _sha256(data) == meta.get("sha256")
        except (OSError, ValueError, AttributeError, TypeError):
            ok = False
        if not ok:
            log(f"{meta_path}: a corrupt or foreign state-cache shard; deleted, its rows are computed again")
            meta_path.unlink(missing_ok=True)
            data.unlink(missing_ok=True)
            return None
        _VERIFIED.add((str(data), meta["bytes"]))
        return meta

    def _compute(self, folder, identity, backbone, attribute, blocks, split, hidden, storage, sequences, keys,
                 desc):
        _claim_root(self.root)
        folder.mkdir(parents=True, exist_ok=True)
        pending = []       # (key, states) not yet in a shard

        def flush():
            if pending:
                self._write_shard(folder, identity, hidden, storage, pending)
                pending.clear()
        passes = lower_pass(backbone, attribute, blocks, split, sequences, int8=self.frozen_states == "int8",
                            desc=desc or f"frozen blocks 1-{split} ({len(sequences)} rows to compute)")
        for rows, states in passes:
            pending += [(keys[i], state) for i, state in zip(rows, states)]
            if len(pending) >= SHARD_ROWS:
                flush()
        flush()

    @staticmethod
    def _write_shard(folder, identity, hidden, storage, pending):
        """The .bin first, then its index: a shard without a finished index is never read."""
        name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        data, meta_path = folder / f"{name}.bin", folder / f"{name}.json"
        rows, offset = {}, 0
        tmp = folder / f".{name}.bin.tmp"
        arrays, storage = _to_storage([states for _, states in pending], storage)
        with open(tmp, "wb") as handle:
            for (key, _), states in zip(pending, arrays):
                handle.write(np.ascontiguousarray(states).tobytes())
                rows[key] = [offset, len(states)]
                offset += len(states)
        os.replace(tmp, data)
        meta = {"format": FORMAT, "identity": identity, "hidden": hidden, "storage": storage,
                "bytes": data.stat().st_size, "sha256": _sha256(data), "rows": rows}
        tmp_meta = folder / f".{name}.json.tmp"
        tmp_meta.write_text(json.dumps(meta, default=str))
        os.replace(tmp_meta, meta_path)
        _VERIFIED.add((str(data), meta["bytes"]))

    @staticmethod
    def _touch(shards):
        now = time.time()
        for meta_path in shards:
            os.utime(meta_path, (now, now))

    def _evict(self, in_use):
        """Delete the least recently used shards (never those this request reads) until under
        budget; leftovers of interrupted writes go first. Only in a root the kit made, and only
        in its shard folders."""
        if not is_cache(self.root):
            return
        folders = _entries(self.root)
        for tmp in (p for folder in folders for p in folder.glob(".*.tmp")):
            if time.time() - tmp.stat().st_mtime > 3600:
                tmp.unlink(missing_ok=True)
        total = cache_size(self.root)
        shards = sorted((p for folder in folders for p in folder.glob("*.json") if p not in in_use),
                        key=lambda p: p.stat().st_mtime)
        for meta_path in shards:
            if total <= self.budget:
                break
            data = meta_path.with_suffix(".bin")
            total -= (data.stat().st_size if data.exists() else 0) + meta_path.stat().st_size
            data.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            log(f"state cache over its {self.budget / 2**30:.1f} GB budget: deleted {data}")


def _rows_fit(meta, hidden):
    """Every row's [offset, length] lies inside the shard's data."""
    size = {"fp32": 4, "fp16": 2, "bf16": 2}[meta["storage"]]
    total = meta["bytes"] // (size * hidden)
    rows = meta.get("rows")
    return isinstance(rows, dict) and all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) for v in r) and r[0] >= 0 and r[1] > 0
        and r[0] + r[1] <= total for r in rows.values())


def _version(package):
    try:
        return meta.version(package)
    except meta.PackageNotFoundError:
        return None
