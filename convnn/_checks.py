"""Argument validation shared by the package: every bad argument raises a ValueError (a
TypeError for a value of the wrong type) that names the argument, the value it got and what
is allowed."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence

import torch


def check_choice(name: str, value, allowed: Iterable) -> None:
    """Raise unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_known(what: str, names: Iterable, allowed: Iterable, context: str = "") -> None:
    """Raise unless every one of ``names`` is in ``allowed`` (options, fields, keys: a typo
    must not pass silently)."""
    allowed = list(allowed)
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}{context}; allowed: {allowed}")


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """Raise unless ``value`` is an int (not bool) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


#: The most neighbours a layer takes (``k``): the positions of a 256 x 256 map. Its weights
#: hold ``k`` matrices, so a larger ``k`` is an allocation no machine makes.
MAX_NEIGHBOURS = 2**16


def check_k(k) -> int:
    """``k``, neighbours per position: an int in ``[1, MAX_NEIGHBOURS]``."""
    check_int("k", k, minimum=1)
    if k > MAX_NEIGHBOURS:
        raise ValueError(f"k must be <= {MAX_NEIGHBOURS} (neighbours per position, at most "
                         f"the positions of a 256 x 256 map), got {k}")
    return k


def check_fraction(name: str, value, low: float = 0.0, high: float = 1.0) -> float:
    """Raise unless ``low <= value <= high``."""
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def check_rank(name: str, x: torch.Tensor, rank: int, layout: str) -> None:
    """Raise unless tensor ``x`` has ``rank`` dimensions (``layout`` like '[B, C, H, W]')."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name} must have shape {layout} ({rank} dims), got shape {tuple(x.shape)}")


def check_size(name: str, x: torch.Tensor, dim: int, expected: int, layout: str) -> None:
    """Raise unless ``x.shape[dim] == expected``."""
    if x.shape[dim] != expected:
        raise ValueError(
            f"{name} must have size {expected} in dim {dim} of {layout}, got shape {tuple(x.shape)}"
        )


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    """Raise unless ``value`` is divisible by ``by``."""
    if by <= 0 or value % by != 0:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by}")


def ensure_sequence(value, n: int) -> Sequence:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


class ArgumentTypeError(TypeError, ValueError):
    """A bad argument of the wrong type: both a TypeError and, as every bad argument of the
    package, a ValueError."""


def check_bool(name: str, value, allow_none: bool = False) -> bool | None:
    """Raise unless ``value`` is exactly True or False (a string like 'no' is not; ``None``
    passes with ``allow_none``). The error is an :class:`ArgumentTypeError`."""
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        allowed = "True, False or None" if allow_none else "True or False"
        raise ArgumentTypeError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_float(name: str, value, minimum: float | None = None, maximum: float | None = None,
                allow_none: bool = False) -> float | None:
    """Raise unless ``value`` is a finite real number (not bool) in ``[minimum, maximum]``."""
    if value is None and allow_none:
        return None
    try:
        ok = not isinstance(value, bool) and math.isfinite(value)
    except (TypeError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value!r}")
    return float(value)


def check_tensor(name: str, x, floating: bool = True) -> None:
    """Raise ``TypeError`` unless ``x`` is a ``torch.Tensor`` (a floating one if
    ``floating``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__module__}."
                        f"{type(x).__qualname__}; convert it with torch.as_tensor(...)")
    if floating and not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; "
                        "convert it with .float()")


def check_dtype(name: str, x: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise like ``nn.Conv2d`` when ``x`` and the layer's ``weight`` differ in dtype, except
    under autocast (which, as for ``nn.Conv2d``, decides the compute dtype)."""
    if x.dtype == weight.dtype:
        return
    device_type = x.device.type
    try:
        autocast = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # device types without autocast
        autocast = False
    if not autocast:
        raise TypeError(f"{name} has dtype {x.dtype} but the layer's weights are "
                        f"{weight.dtype}; convert one of them (x.to({weight.dtype}) or "
                        f"layer.to({x.dtype})), or run under torch.autocast")


def _is_fake(x: torch.Tensor) -> bool:
    """A tensor without data (a shape-only trace, as ``convnn.bench.proxy`` makes)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(x, FakeTensor)


def check_index(name: str, index, size: int, dim_name: str, dims: tuple[int, ...] = (1,),
                layout: str = "[m]") -> None:
    """Raise unless ``index`` is an integer tensor of one of ``dims`` dimensions with values
    in ``[0, size)`` (the range is checked on CPU tensors outside torch.compile; on a GPU it
    would wait for the device)."""
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor, got {type(index).__name__}")
    if index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor (torch.long), got {index.dtype}")
    if index.dim() not in dims:
        raise ValueError(f"{name} must have shape {layout}, got shape {tuple(index.shape)}")
    if (index.device.type == "cpu" and index.numel() and not torch.compiler.is_compiling()
            and not _is_fake(index)):
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"{name} must hold indices in [0, {size}) ({dim_name}={size}), "
                             f"got values in [{lo}, {hi}]")


def check_device(name: str, device) -> torch.device | None:
    """``device`` as a ``torch.device`` (``None`` stays None), or a ValueError saying what is
    allowed: 'cpu', 'cuda', 'cuda:N' (with such a GPU present) or 'mps' (where available)."""
    if device is None:
        return None
    if not isinstance(device, (str, int, torch.device)) or isinstance(device, bool):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r} but no CUDA GPU is available here; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r} but this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"{name}={device!r} but MPS is not available here; use 'cpu'")
    elif dev.type != "cpu":
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev


def resolve_device(name: str, device, cuda_index: int | None = None) -> torch.device:
    """``device`` checked by :func:`check_device`, or where it is None the default: CUDA
    (GPU ``cuda_index`` when given) if a GPU is available, else the CPU."""
    if device is not None:
        return check_device(name, device)
    if torch.cuda.is_available():
        return torch.device("cuda") if cuda_index is None else torch.device("cuda", cuda_index)
    return torch.device("cpu")


def renamed_argument(options: dict, old: str, new: str, where: str) -> dict:
    """``options`` with the deprecated key ``old`` moved to ``new``, with a
    ``DeprecationWarning`` naming the new name (both given: a ValueError)."""
    if old not in options:
        return options
    if new in options and options[new] is not None and options[old] is not None:
        raise ValueError(f"{where}: give {new} (the new name of {old}), not both")
    warnings.warn(f"{where}: {old} is deprecated, use {new}", DeprecationWarning, stacklevel=3)
    options = dict(options)
    value = options.pop(old)
    if options.get(new) is None:
        options[new] = value
    return options


def check_path(name: str, value) -> None:
    """Raise unless ``value`` is a non-empty path (``""`` would mean the current folder)."""
    if not isinstance(value, (str, os.PathLike)) or not str(os.fspath(value)).strip():
        raise ValueError(f"{name} must be a folder path, got {value!r}")


def _under_torch_func(*tensors: torch.Tensor) -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jvp, jacrev...) wraps one of these."""
    functorch = torch._C._functorch
    return any(functorch.is_batchedtensor(t) or functorch.is_gradtrackingtensor(t)
               for t in tensors)


def check_layer_input(name: str, x, rank: int, layout: str, weight: torch.Tensor) -> None:
    """A layer's input: a floating ``torch.Tensor`` of ``rank`` dims on the device and with
    the dtype of the layer's ``weight`` (or under autocast), outside ``torch.func``
    transforms."""
    check_tensor(name, x)
    if not torch.compiler.is_compiling() and _under_torch_func(x, weight):
        raise NotImplementedError(
            "ConvNN layers do not support torch.func transforms (vmap, grad, jvp, jacrev, "
            "functional_call under grad): the neighbour selection is data-dependent indexing "
            "with custom autograd functions. Batch the inputs instead of vmap, and use "
            "loss.backward() or torch.autograd.grad for gradients")
    if x.device != weight.device:
        raise RuntimeError(f"{name} is on device {x.device} but the layer's weights are on "
                           f"{weight.device}; move one of them (x.to('{weight.device}') or "
                           f"layer.to('{x.device}'))")
    check_rank(name, x, rank, layout)
    check_dtype(name, x, weight)


def check_layer_options(*, seed=0, bools: dict | None = None, optional_bools: dict | None = None,
                        floats: dict | None = None) -> None:
    """Construction-time checks of a layer's flags (``True``/``False``; ``None`` allowed for
    ``optional_bools``), finite floats and integer ``seed``."""
    check_int("seed", seed, minimum=0)
    for name, value in (bools or {}).items():
        check_bool(name, value)
    for name, value in (optional_bools or {}).items():
        if value is not None:
            check_bool(name, value)
    for name, value in (floats or {}).items():
        check_float(name, value)
