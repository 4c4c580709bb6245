"""Drop-in layers: the same signatures and state_dicts as their torch.nn counterparts, running the
fused Triton kernels where they can (see fbdl_fast.ops for the dispatch rules)."""

from fbdl_fast.nn import functional
from fbdl_fast.nn.attention import MultiheadAttention
from fbdl_fast.nn.focal_loss import FocalLoss
from fbdl_fast.nn.layer_norm import LayerNorm

__all__ = ["FocalLoss", "LayerNorm", "MultiheadAttention", "functional"]
