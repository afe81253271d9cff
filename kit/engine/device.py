"""Device-aware defaults and the memory estimate that runs before any weight is loaded.

`--lora-layers`, `--precision`, `--gradient-checkpointing` and `--attention` default to `auto`;
`resolve` turns them into concrete values for the device at hand (they are part of a run's
key, so a CPU run and a GPU run of the same settings are different runs), and `check_memory`
refuses, in one line, a configuration whose estimated peak would not fit.
"""
import importlib.util
import os
from dataclasses import dataclass, replace

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM

from kit.core.errors import KitError, remote_code_guard
from kit.core.extras import install_hint
from kit.core.logs import log
from kit.core.settings import QUANTIZE

CPU_LORA_LAYERS = 4          # measured on the 2-core CPU: top 4 of 30 blocks, 2 epochs (README)
BIG_MODEL = 1e9              # gradient checkpointing pays for itself above about 1B parameters


@dataclass
class Shape:
    """What the estimate needs to know about a model, read from its config on the meta device."""
    params: int
    linear_params: int        # inside the blocks: what k-bit quantisation shrinks
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    lora_params_per_layer: int   # LoRA parameters per block at rank 1 (sum of in + out features)


def cuda_info(device="auto"):
    """The GPU a model runs on (None: the CPU). device: auto (a GPU when torch sees one), cuda, cpu."""
    if device == "cuda" and not torch.cuda.is_available():
        raise KitError("device cuda: torch sees no CUDA device here")
    if device == "cpu" or not torch.cuda.is_available():
        return None
    return {"name": torch.cuda.get_device_name(), "bf16": torch.cuda.is_bf16_supported(),
            "total_bytes": torch.cuda.mem_get_info()[1]}


def model_shape(path, trust_remote_code=False):
    """Parameter counts from the config alone: the model is built on the meta device (no memory,
    no weights read), so a 7B estimate costs a second."""

    config = remote_code_guard(path, AutoConfig.from_pretrained, path, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()      # on the meta device the output layer is not tied until asked
    text = config.get_text_config()
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and _block_index(n) is not None]
    layers = text.num_hidden_layers
    return Shape(params=sum(p.numel() for p in model.parameters()),
                 linear_params=sum(m.weight.numel() for m in linears), layers=layers,
                 hidden=text.hidden_size, intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
                 vocab=text.vocab_size,
                 lora_params_per_layer=sum(m.in_features + m.out_features for m in linears) // max(1, layers))


def _block_index(name):
    parts = name.split(".")
    for container, index in zip(parts, parts[1:]):
        if container in ("layers", "layer", "h", "blocks") and index.isdigit():
            return int(index)
    return None


def resolve(model_args, shape, cuda):
    """Concrete values for every `auto` setting on this device; returns (ModelArgs, lines)."""
    on_gpu = cuda is not None
    changes, why = {}, []
    if model_args.lora_layers == "auto":
        changes["lora_layers"] = 0 if on_gpu or not model_args.lora_r else CPU_LORA_LAYERS
        why.append("LoRA on every block (GPU)" if on_gpu else
                   f"LoRA on the top {CPU_LORA_LAYERS} blocks, the lower ones computed once (CPU)")
    if model_args.precision == "auto":
        changes["precision"] = ("bf16" if cuda["bf16"] else "fp16") if on_gpu else "fp32"
        why.append({"bf16": "bf16", "fp16": "fp16 autocast with a gradient scaler (no bf16 on this GPU)",
                    "fp32": "fp32 (CPU)"}[changes["precision"]])
    if model_args.gradient_checkpointing == "auto":
        changes["gradient_checkpointing"] = bool(on_gpu and shape and shape.params > BIG_MODEL)
        why.append("gradient checkpointing " + ("on (over 1B parameters on a GPU)"
                                                if changes["gradient_checkpointing"] else "off"))
    if model_args.attention == "auto":
        flash = importlib.util.find_spec("flash_attn") is not None
        precision = changes.get("precision", model_args.precision)
        changes["attention"] = "flash_attention_2" if on_gpu and flash and precision in ("bf16", "fp16") else "sdpa"
        why.append(f"{changes['attention']} attention")
    elif model_args.attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        # transformers would raise an ImportError with a traceback when the weights load
        raise KitError("--attention flash_attention_2 needs flash-attn: pip install flash-attn "
                       "(or --attention sdpa)")
    if model_args.quantize:
        require_quantization(model_args.quantize, on_gpu)
        why.append(f"{model_args.quantize} base weights (QLoRA)")
    return replace(model_args, **changes), why


def require_quantization(quantize, on_gpu):
    """bitsandbytes runs k-bit weights on CUDA, and (from 0.48) on CPUs too."""
    if quantize not in QUANTIZE:
        raise KitError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZE)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise KitError(f"--quantize {quantize} needs bitsandbytes: {install_hint('bitsandbytes')}"
                       + ("" if on_gpu else " (it runs on CPUs from 0.48; a CUDA GPU is much faster)"))


def bytes_per_weight(precision):
    return 4 if precision == "fp32" else 2


def estimate_peak(shape, model_args, batch_size, max_length, on_gpu):
    """Peak training memory in bytes, by part. Rough and on the high side: weights, LoRA
    weights with their gradients and AdamW state, activations of the longest batch, logits."""
    half = bytes_per_weight(model_args.precision)
    if model_args.quantize:
        per_linear = 0.5 if model_args.quantize == "4bit" else 1.0
        weights = shape.linear_params * per_linear * 1.06 + (shape.params - shape.linear_params) * half
    else:
        weights = shape.params * half
    trained_layers = shape.layers if not model_args.lora_layers else min(shape.layers, model_args.lora_layers)
    if model_args.lora_r:
        trainable = model_args.lora_r * shape.lora_params_per_layer * trained_layers
    else:
        trainable = shape.params
    optimizer = trainable * (4 + 4 + 8)          # fp32 weights, gradients, AdamW's two moments
    tokens = batch_size * max_length
    per_token_layer = shape.hidden if model_args.gradient_checkpointing else 10 * shape.hidden + 3 * shape.intermediate
    layers_backward = trained_layers if model_args.lora_layers else shape.layers
    activations = tokens * half * (layers_backward * per_token_layer + 10 * shape.hidden + 3 * shape.intermediate)
    logits = batch_size * 4 * shape.vocab * 4 * 2 if model_args.head == "generate" else 0
    overhead = 0.6e9 if on_gpu else 0.3e9      # CUDA context and allocator slack / the Python process
    parts = {"weights": weights, "trainable + optimizer": optimizer, "activations": activations,
             "logits": logits, "overhead": overhead}
    return {k: int(v) for k, v in parts.items()}


def check_memory(parts, capacity, where):
    """One-line refusal naming what to change, before anything is loaded."""
    total = sum(parts.values())
    gb = lambda b: f"{b / 2**30:.1f} GB"   # noqa: E731
    detail = ", ".join(f"{k} {gb(v)}" for k, v in parts.items() if v)
    log(f"memory estimate: {gb(total)} peak ({detail}) of {gb(capacity)} on {where}")
    if total > 0.95 * capacity:
        raise KitError(f"estimated peak memory {gb(total)} ({detail}) does not fit the {gb(capacity)} of {where}; "
                       "use --quantize 4bit, a smaller --batch-size or --max-length"
                       + (", or --gradient-checkpointing" if parts["activations"] > parts["weights"] else ""))
    return total


def available_memory_bytes():
    """Memory this process can still take without swapping (MemAvailable), else total RAM."""
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
