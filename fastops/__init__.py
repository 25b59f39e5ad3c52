"""fastops: fused C++/CUDA/Triton kernels as drop-ins for PyTorch ops.

    import fastops
    import fastops.functional as FF
    FF.cross_entropy(logits, target)          # like torch.nn.functional.cross_entropy
    FF.linear_cross_entropy(hidden, lm_head.weight, target)   # the LM loss head, no (N, V) logits
    fastops.nn.CrossEntropyLoss()             # like torch.nn.CrossEntropyLoss
    fastops.nn.LinearCrossEntropyLoss()       # forward(hidden, lm_head.weight, target, bias=None)
    fastops.optim.AdamW(model.parameters())   # like torch.optim.AdamW, one fused step
    fastops.backends()                        # which backends run here, and why not
    torch.ops.fastops.*                       # the registered ops

Importing works without the compiled extension: ``backends()`` then says why ``native`` is out.
"""

from fastops import _backend
from fastops import functional as functional
from fastops import nn as nn
from fastops import ops as _ops
from fastops import optim as optim
from fastops import reference as reference
from fastops._backend import backends
from fastops.hf import UnsupportedModelError as UnsupportedModelError
from fastops.hf import patch_causal_lm as patch_causal_lm
from fastops.hf import unpatch_causal_lm as unpatch_causal_lm
from fastops.swap import SwapReport, swap

__version__ = "0.1.0"
__all__ = ["SwapReport", "backends", "functional", "nn", "optim", "reference", "swap", "__version__"]

NATIVE_LOADED = _backend.NATIVE_LOADED

# Every op's registrations (fake kernels, autograd, autocast) at import: a first fastops call inside
# torch.compile(fullgraph=True) must not import modules (Dynamo refuses importlib). The Triton
# backend's modules stay lazy (importing triton is slow); its first call loads them.
_ops.namespace("native")
