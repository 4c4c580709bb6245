"""Functional forms of the fused layers, with torch.nn.functional's signatures."""

from fbdl_fast.nn.attention import scaled_dot_product_attention
from fbdl_fast.nn.focal_loss import focal_loss
from fbdl_fast.nn.layer_norm import layer_norm

__all__ = ["focal_loss", "layer_norm", "scaled_dot_product_attention"]
