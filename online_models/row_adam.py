"""Adam for item rows that only moves the rows it is given ("lazy" Adam).

Plain Adam would move every row with non-zero momentum on every step, so a delta of
"touched rows" would be the whole table. Here a step updates exactly the rows that had a
gradient, which keeps deltas small and makes "rows in the delta" mean "rows that changed".
The state grows with the table.
"""

from __future__ import annotations

import torch


class RowAdam:
    """Adam moments per row for a set of row-indexed tensors (table, bias...)."""

    def __init__(
        self,
        tensors: list[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.tensors = tensors
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = 0
        self.m = [torch.zeros_like(t) for t in tensors]
        self.v = [torch.zeros_like(t) for t in tensors]

    def grow(self) -> None:
        """Match the state to tensors that were resized (new rows start with zero moments)."""
        for i, tensor in enumerate(self.tensors):
            old = self.m[i].shape[0]
            if tensor.shape[0] > old:
                pad = (tensor.shape[0] - old, *tensor.shape[1:])
                zeros = torch.zeros(pad, dtype=tensor.dtype, device=tensor.device)
                self.m[i] = torch.cat([self.m[i], zeros])
                self.v[i] = torch.cat([self.v[i], zeros.clone()])

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grads: list[torch.Tensor]) -> None:
        """Update ``rows`` (unique indices) of every tensor with the matching gradients."""
        self.grow()
        self.steps += 1
        correction1 = 1 - self.beta1**self.steps
        correction2 = 1 - self.beta2**self.steps
        step_size = self.lr / correction1
        for tensor, m, v, grad in zip(self.tensors, self.m, self.v, grads, strict=True):
            m_rows = m[rows].mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
            v_rows = v[rows].mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            m[rows] = m_rows
            v[rows] = v_rows
            denom = (v_rows / correction2).sqrt_().add_(self.eps)
            tensor[rows] = tensor[rows] - step_size * m_rows / denom
