"""convnn: Convolutional Nearest Neighbours (arXiv 2511.14137) for PyTorch.

Convolution and self-attention are both "select k neighbours, then aggregate". This package
implements the operator (:mod:`convnn.ops`), layers that are drop-ins for ``nn.Conv2d`` and
multi-head self-attention (:mod:`convnn.layers`), and the attention baselines of the paper
(:mod:`convnn.attention`).
"""

from . import ops
from .layers import BranchingConv2d, ConvNN2d, ConvNNAttention, HybridTokenMixer

__version__ = "0.1.0"

__all__ = [
           "BranchingConv2d",
           "ConvNN2d",
           "ConvNNAttention",
           "HybridTokenMixer",
           "__version__",
           "ops",
]
