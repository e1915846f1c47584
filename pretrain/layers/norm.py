import torch
import torch.nn.functional as F
from torch import nn


class _StatsInFloat:
    """Batch norm whose running statistics stay fp32 when the parameters are cast to bf16/fp16
    (DeepSpeed casts parameters, not buffers): it then normalises in fp32 and returns the input's
    dtype. With matching dtypes it is the plain batch norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w is None or self.running_mean is None or (
                w.dtype == self.running_mean.dtype == x.dtype):
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        with torch.autocast(x.device.type, enabled=False):
            out = F.batch_norm(x.float(), self.running_mean, self.running_var, w.float(),
                               self.bias.float(), self.training, momentum, self.eps)
        return out.to(x.dtype)


class BatchNorm2d(_StatsInFloat, nn.BatchNorm2d):
    pass


class BatchNorm3d(_StatsInFloat, nn.BatchNorm3d):
    pass
