"""convnn: Convolutional Nearest Neighbours (arXiv 2511.14137) for PyTorch.

Convolution and self-attention are both "select k neighbours, then aggregate". This package
implements the operator (:mod:`convnn.ops`), layers that are drop-ins for ``nn.Conv2d`` and
multi-head self-attention (:mod:`convnn.layers`), and the attention baselines of the paper
(:mod:`convnn.attention`).

The main entry points of the rest are here too, imported on first use so that ``import
convnn`` stays light: :func:`build_model` and :class:`ModelConfig` (:mod:`convnn.models`),
:class:`TrainConfig` and :func:`fit` (:mod:`convnn.train`), :func:`get_preset`
(:mod:`convnn.experiments`) and :func:`run_preset` (:mod:`convnn.runner`); the submodules
load on first use as well (``convnn.data.DATASETS`` after ``import convnn``).

Layers. The modules form three products, each importing only from itself and the ones
before it (``tests/test_architecture.py`` enforces it, with no import cycles):

0. shared leaves: ``_checks`` (argument checks), ``_io`` (atomic files), ``_version``,
   ``package_data`` (files shipped with the package), ``paper_vocabulary`` (the paper's words);
1. the operator core: ``kernels``, ``kernels_attention``, ``kernels_conv2d``,
   ``kernels_projection`` (Triton) → ``ops`` → ``attention`` → ``layers`` →
   ``models``; needs only torch;
2. the training stack: ``dataset_base`` (the dataset table) → ``imagenet`` → ``data`` →
   ``checkpoint`` (what a checkpoint holds) → ``run_folder`` → ``train`` →
   ``experiments`` → ``runner``;
3. the project and book tooling: ``stats``, ``viz``, ``results``, ``demo``, ``study``,
   ``campaign``, ``bench`` (with the speed proxy), the command line (``__main__``); only this layer may import
   matplotlib or ipywidgets.
"""

from importlib import import_module

from . import ops
from ._version import __version__
from .layers import (
    PAPER_ATTENTION,
    PAPER_CONVNN2D,
    BranchingConv2d,
    ConvNN2d,
    ConvNN2dOptions,
    ConvNNAttention,
    ConvNNAttentionOptions,
    HybridTokenMixer,
)

_LAZY = {"build_model": "models", "ModelConfig": "models", "TrainConfig": "train",
         "fit": "train", "get_preset": "experiments", "run_preset": "runner"}


_SUBMODULES = ("attention", "campaign", "checkpoint", "data", "dataset_base", "experiments", "imagenet",
               "models", "results", "run_folder", "runner", "stats", "study", "train")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
           "PAPER_ATTENTION",
           "PAPER_CONVNN2D",
           "BranchingConv2d",
           "ConvNN2d",
           "ConvNN2dOptions",
           "ConvNNAttention",
           "ConvNNAttentionOptions",
           "HybridTokenMixer",
           "ModelConfig",
           "TrainConfig",
           "__version__",
           "build_model",
           "fit",
           "get_preset",
           "ops",
           "run_preset",
]
