"""Architecture helpers: a model's transformer backbone and its list of blocks, whatever the family names them."""
import torch


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
