"""PLACEHOLDER until the fused attention lands (issue 6): plain torch behaviour."""

import torch
from torch.nn.functional import scaled_dot_product_attention


class MultiheadAttention(torch.nn.MultiheadAttention):
    pass


__all__ = ["MultiheadAttention", "scaled_dot_product_attention"]
