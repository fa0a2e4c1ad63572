"""convnn: Convolutional Nearest Neighbours (arXiv 2511.14137) for PyTorch.

Convolution and self-attention are both "select k neighbours, then aggregate". This package
implements the operator (:mod:`convnn.ops`), layers that are drop-ins for ``nn.Conv2d`` and
multi-head self-attention (:mod:`convnn.layers`), and the attention baselines of the paper
(:mod:`convnn.attention`).

The main entry points of the rest are here too, imported on first use so that ``import
convnn`` stays light: :func:`build_model` and :class:`ModelConfig` (:mod:`convnn.models`),
:class:`TrainConfig` and ``train`` (:mod:`convnn.train`; the module is callable as
:func:`convnn.train.train`), :func:`get_preset` (:mod:`convnn.experiments`) and
:func:`run_preset` (:mod:`convnn.runner`).
"""

from importlib import import_module

from . import ops
from .layers import BranchingConv2d, ConvNN2d, ConvNNAttention, HybridTokenMixer

__version__ = "0.1.0"

_LAZY = {"build_model": "models", "ModelConfig": "models", "TrainConfig": "train",
         "get_preset": "experiments", "run_preset": "runner"}


def __getattr__(name: str):
    if name == "train":  # the module, callable as the function (see convnn.train)
        return import_module(".train", __name__)
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
           "BranchingConv2d",
           "ConvNN2d",
           "ConvNNAttention",
           "HybridTokenMixer",
           "ModelConfig",
           "TrainConfig",
           "__version__",
           "build_model",
           "get_preset",
           "ops",
           "run_preset",
           "train",
]
