"""Module drop-ins: same constructor, attributes and state_dict as the torch modules."""

from fastops.nn.conv import Conv2d, Conv2dReLU
from fastops.nn.linear import LinearReLU
from fastops.nn.loss import CrossEntropyLoss, LinearCrossEntropyLoss

__all__ = ["Conv2d", "Conv2dReLU", "CrossEntropyLoss", "LinearCrossEntropyLoss", "LinearReLU"]

# Modules whose API is fastops's own, not a torch module's. torch >= 2.14 has a torch.nn.LinearCrossEntropyLoss
# that owns its linear layer (constructor (in_features, num_classes, ...), forward(input, target));
# fastops's takes the lm_head weight in forward (input, weight, target, bias), so an existing head and
# tied embeddings stay as they are. fastops.swap has no rule for torch's class yet.
OWN_API = ("LinearCrossEntropyLoss",)
