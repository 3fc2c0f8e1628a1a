"""Neural-network building blocks: `Module` and layers in PyTorch's shapes, and a GPT."""
from .layers import Dropout, Embedding, LayerNorm, Linear
from .module import Module, ModuleDict
from .quant import QuantCausalSelfAttention, QuantLinear, quantize
from .transformer import GPT, MLP, Block, CausalSelfAttention, attention

__all__ = ["Module", "ModuleDict", "Linear", "Embedding", "LayerNorm", "Dropout",
           "CausalSelfAttention", "MLP", "Block", "GPT", "attention", "QuantLinear",
           "QuantCausalSelfAttention", "quantize"]
