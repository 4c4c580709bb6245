"""FacebookPostsCNN: a multi-kernel 1-D convolutional classifier for a padded batch of posts.

token embedding -> for each width k in config.kernel_sizes (3, 4, 5):
Conv1d(k, hidden_dim filters) -> batch norm -> ReLU -> max over time
-> the pooled features of every width, concatenated -> dropout -> linear head.

Padding never changes the output. Padded embeddings are zeroed before the convolution and the
time axis gets k - 1 zeros on the right, so there is one window per token, starting at it: a
window that runs past a post's end sees zeros whatever the padding ids or the padded length, and
posts shorter than a kernel still have windows. Windows starting on padding are left out of the
batch-norm statistics and set to -inf before the max. An empty post pools to zeros. Batch norm
and max run as one masked op on the padded (B, H, L) tensor (fixed shapes, so torch.compile
traces the model whole), with nn.BatchNorm1d's parameters, buffers and arithmetic.

Initialisation: Kaiming (He) normal for the convolutions, which ReLU follows; Xavier for the head.

References: Kim 2014, "Convolutional Neural Networks for Sentence Classification"; Ioffe &
Szegedy 2015 (batch norm); He et al. 2015 (Kaiming init).
"""

from __future__ import annotations

from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from fbdl_fast.config import ModelConfig
from fbdl_fast.models._common import apply_init, check_inputs


class FacebookPostsCNN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        E, H = config.input_dim, config.hidden_dim
        self.embedding = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        # No conv bias: the batch norm right after subtracts any constant shift anyway.
        self.conv_layers = nn.ModuleList(
            [nn.Conv1d(E, H, kernel_size=k, bias=False) for k in config.kernel_sizes]
        )
        self.batch_norms = nn.ModuleList([nn.BatchNorm1d(H) for _ in config.kernel_sizes])
        self.dropout = nn.Dropout(config.dropout)
        self.output_projection = nn.Linear(H * len(config.kernel_sizes), config.num_classes)
        apply_init(self, config.init, self._init_weights)

    def _init_weights(self) -> None:
        for conv in self.conv_layers:
            weight = cast(nn.Conv1d, conv).weight
            nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
        nn.init.xavier_uniform_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """input_ids (B, L) and attention_mask (B, L), True on real tokens -> logits (B, C).

        Without attention_mask, every id other than config.pad_token_id counts as a real token.
        """
        mask = check_inputs(input_ids, attention_mask, self.config)  # (B, L) bool
        x = self.embedding(input_ids).masked_fill(~mask[:, :, None], 0.0)  # (B, L, E)
        x = x.transpose(1, 2)  # (B, E, L), channels first for Conv1d
        pooled = []
        real = mask[:, None, :]  # (B, 1, L)
        for conv, bn in zip(self.conv_layers, self.batch_norms):
            k = cast(nn.Conv1d, conv).kernel_size[0]
            h = conv(F.pad(x, (0, k - 1)))  # (B, H, L): window t covers tokens t .. t+k-1
            # ReLU after the max: the same values (ReLU is monotonic) on a (B, H) tensor, and
            # an empty post's -inf becomes 0.
            norm = cast(nn.BatchNorm1d, bn)
            pooled.append(F.relu(masked_batch_norm_max(norm, h, real)))  # (B, H)
        h = torch.cat(pooled, dim=1)  # (B, H * len(kernel_sizes))
        return self.output_projection(self.dropout(h))  # (B, C)


def masked_batch_norm_max(bn: nn.BatchNorm1d, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Batch norm over the positions where `mask` is True, then the max over time of each row.

    x (B, C, L) and mask (B, 1, L) -> (B, C) in x's dtype, computed in fp32; -inf for a row
    without a True position. The values, gradients and running-statistics update of
    nn.BatchNorm1d applied to the masked positions gathered into rows (momentum, or a cumulative
    average when momentum is None; the unbiased batch variance; num_batches_tracked), with its
    parameters and buffers; but with fixed shapes and no data-dependent branch, so torch.compile
    traces it whole. With fewer than two masked positions in training, where batch statistics
    do not exist (a batch holding a single one-token post), the running statistics stand in and
    are not updated.
    """
    y = x.to(torch.promote_types(x.dtype, torch.float32))
    mean, var = bn.running_mean, bn.running_var
    count = mask.sum()
    n = count.clamp(min=2).to(y.dtype)  # >= 2: no division by 0 where the result goes unused
    batch_stats = torch.zeros_like(n)  # 1 where the normalisation uses this batch's statistics
    if bn.training or mean is None or var is None:  # batch statistics, as nn.BatchNorm1d
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            # Masked sums as (B, C, L) @ (B, L, 1) products: no masked copy of x. The
            # gradient through the statistics is in _BatchNormMax.backward.
            weights = mask.to(y.dtype).transpose(1, 2)  # (B, L, 1)
            batch_mean = torch.matmul(y, weights).sum(0)[:, 0] / n
            centred = (y - batch_mean[:, None]).square_()
            batch_var = torch.matmul(centred, weights).sum(0)[:, 0] / n  # biased, to normalise
            del centred
        if mean is None or var is None:  # track_running_stats=False
            mean, var, batch_stats = batch_mean, batch_var, torch.ones_like(n)
        else:
            enough = count >= 2
            if bn.training and bn.track_running_stats:
                _update_running_stats(bn, batch_mean, batch_var * n / (n - 1), enough)
            mean = torch.where(enough, batch_mean, mean)
            var = torch.where(enough, batch_var, var)
            batch_stats = enough.to(y.dtype)
    weight = bn.weight if bn.weight is not None else torch.ones_like(mean)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    rstd = torch.rsqrt(var + bn.eps)
    out = _BatchNormMax.apply(y, mask, mean, rstd, weight, bias, batch_stats, n)
    return out.to(x.dtype)


class _BatchNormMax(torch.autograd.Function):
    """y = (x - mean) * rstd * weight + bias where mask, -inf elsewhere -> max over time.

    The backward is batch norm's, restricted to the masked positions (n of them; xhat the
    normalised x, g the gradient of y, zero but at each row's argmax), when the statistics are
    the batch's (batch_stats = 1):
        dx = weight * rstd * (g - sum(g) / n - xhat * sum(g * xhat) / n)   where mask, else 0
    and dx = weight * rstd * g with the running statistics (batch_stats = 0). The sums are over
    the argmaxes only, and the dense part is one affine map of x, so the backward reads x once.
    """

    @staticmethod
    def forward(ctx, x, mask, mean, rstd, weight, bias, batch_stats, n):  # type: ignore[override]
        scale = rstd * weight
        y = torch.addcmul((bias - mean * scale)[:, None], x, scale[:, None])  # (B, C, L)
        values, index = y.masked_fill_(~mask, float("-inf")).max(dim=2, keepdim=True)
        ctx.save_for_backward(x, mask, mean, rstd, weight, index, batch_stats, n)
        return values[:, :, 0]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, mask, mean, rstd, weight, index, batch_stats, n = ctx.saved_tensors
        g = grad[:, :, None]  # (B, C, 1): the gradient at each row's argmax
        xhat = (x.gather(2, index) - mean[:, None]) * rstd[:, None]
        grad_bias = g.sum((0, 2))
        grad_weight = (g * xhat).sum((0, 2))
        k = weight * rstd
        f = batch_stats / n
        # -k f (sum(g) + xhat sum(g xhat)) = a x + c, with xhat = (x - mean) rstd
        a = -k * f * grad_weight * rstd
        c = -k * f * grad_bias - a * mean
        dx = torch.addcmul(c[:, None], x, a[:, None]).masked_fill_(~mask, 0.0)
        dx.scatter_add_(2, index, g * k[:, None])
        return dx, None, None, None, grad_weight, grad_bias, None, None


@torch.no_grad()
def _update_running_stats(
    bn: nn.BatchNorm1d, mean: torch.Tensor, unbiased_var: torch.Tensor, enough: torch.Tensor
) -> None:
    """nn.BatchNorm1d's update of its buffers in training, where `enough` (a bool tensor)."""
    assert bn.running_mean is not None and bn.running_var is not None
    assert bn.num_batches_tracked is not None
    bn.num_batches_tracked.add_(enough.to(bn.num_batches_tracked.dtype))
    if bn.momentum is None:  # cumulative moving average
        factor = 1.0 / bn.num_batches_tracked.clamp(min=1).to(mean.dtype)
    else:
        factor = torch.full_like(mean[:1], bn.momentum)
    factor = torch.where(enough, factor, torch.zeros_like(factor))  # too few rows: no update
    for running, batch in ((bn.running_mean, mean), (bn.running_var, unbiased_var)):
        running.copy_(factor * batch + (1 - factor) * running)  # the order of torch's kernel
