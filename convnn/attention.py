"""Token mixers for sequences ``[B, T, D] -> [B, T, D]``: the paper's attention baselines.

ConvNN (arXiv 2511.14137) argues that convolution and attention are both "select k neighbours,
then aggregate". The mixers in this module are the points of comparison the paper uses, each
written as *which keys a query may select* plus softmax aggregation:

==========================  =================================================================
mixer                       neighbours of query ``i``
==========================  =================================================================
``MultiHeadSelfAttention``  every token
``KVTAttention``            the ``k`` keys with the highest score ``q_i . k_j / sqrt(d)``
``LocalAttention``          tokens in the same, previous and next window (of ``window`` tokens)
``SparseAttention``         a fixed band (``'local'``) or every ``context``-th token
                            (``'strided'``)
``NeighborhoodAttention1d`` the ``kernel_size`` tokens nearest in position (NATTEN)
``TokenConv1d``             the ``kernel_size`` tokens nearest in position, fixed learned
                            weights instead of softmax (a convolution over tokens)
==========================  =================================================================

All attention mixers share the parameter names ``q_proj``, ``k_proj``, ``v_proj`` and
``out_proj`` (bias-free by default) with the ConvNN attention layer, so weights can be copied
between them with ``load_state_dict``. Heads are split as ``(B, T, h*d) -> (B, h, T, d)``; masks
are boolean with ``True`` = "may attend" and disallowed scores are set to ``-inf`` (never a
finite constant that a real score could beat).

Example:
    >>> import torch
    >>> from convnn.attention import TOKEN_MIXERS
    >>> x = torch.randn(2, 197, 192)  # [B, T, D]
    >>> mixer = TOKEN_MIXERS["kvt"](192, num_heads=3, k=9)
    >>> mixer(x).shape
    torch.Size([2, 197, 192])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from convnn._checks import (
    check_choice,
    check_divisible,
    check_fraction,
    check_int,
    check_known,
    check_rank,
    check_size,
)

__all__ = [
    "TOKEN_MIXERS",
    "KVTAttention",
    "LocalAttention",
    "MixerSpec",
    "MultiHeadSelfAttention",
    "NeighborhoodAttention1d",
    "SparseAttention",
    "TokenConv1d",
    "apply_rotary",
    "create_mixer",
    "kvt_attention_weights",
    "local_attention_mask",
    "mixer_names",
    "mixer_spec",
    "neighborhood_indices",
    "register_mixer",
    "sparse_attention_mask",
    "unregister_mixer",
]

SPARSE_MODES = ("local", "strided")
# The paper's ViT-Tiny runs: 'local' with a band of 49 tokens, 'strided' with stride 14
# (one row of the 14 x 14 patch grid).
SPARSE_DEFAULT_CONTEXT = {"local": 49, "strided": 14}


# --------------------------------------------------------------------------------------------
# Pure functions: masks, neighbour indices, top-k weights, rotary embedding
# --------------------------------------------------------------------------------------------


def sparse_attention_mask(
    T: int, mode: str, context: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bidirectional Sparse-Transformer mask (Child et al., 2019) as used by the paper.

    Args:
        T: number of tokens.
        mode: ``'local'``: query ``i`` may attend to key ``j`` iff ``|i - j| <= context // 2``
            (a band of ``context`` tokens for odd ``context``); ``'strided'``: iff
            ``|i - j| % context == 0`` (every ``context``-th token, itself included).
        context: band width (``'local'``) or stride (``'strided'``), at least 1.
        device: device of the returned mask.

    Returns:
        Bool tensor ``[T, T]``, ``mask[i, j]`` is True when query ``i`` may attend to key ``j``.
        The diagonal is always True, so no query is left without keys.

    Example:
        >>> sparse_attention_mask(5, "strided", 2).int()
        tensor([[1, 0, 1, 0, 1],
                [0, 1, 0, 1, 0],
                [1, 0, 1, 0, 1],
                [0, 1, 0, 1, 0],
                [1, 0, 1, 0, 1]], dtype=torch.int32)
    """
    check_int("T", T, minimum=1)
    check_choice("mode", mode, SPARSE_MODES)
    check_int("context", context, minimum=1)
    pos = torch.arange(T, device=device)
    dist = (pos[:, None] - pos[None, :]).abs()  # (T, T)
    if mode == "local":
        return dist <= context // 2
    return dist % context == 0


def local_attention_mask(
    T: int, window: int, exact_window: bool = True, device: torch.device | str | None = None
) -> torch.Tensor:
    """Dense ``[T, T]`` view of the pattern :class:`LocalAttention` computes window by window.

    Tokens are grouped into non-overlapping windows of ``window`` tokens; query ``i`` may attend
    to key ``j`` when the windows of ``i`` and ``j`` are equal or adjacent. With
    ``exact_window=True`` (the paper's setting) keys must also satisfy ``|i - j| <= window``;
    that condition implies the window one, so the pattern is then simply a band of half-width
    ``window``.

    Args:
        T: number of tokens.
        window: window size, at least 1.
        exact_window: also require ``|i - j| <= window``.
        device: device of the returned mask.

    Returns:
        Bool tensor ``[T, T]`` (True = may attend).
    """
    check_int("T", T, minimum=1)
    check_int("window", window, minimum=1)
    pos = torch.arange(T, device=device)
    block = pos // window
    mask = (block[:, None] - block[None, :]).abs() <= 1  # (T, T)
    if exact_window:
        mask &= (pos[:, None] - pos[None, :]).abs() <= window
    return mask


def neighborhood_indices(
    T: int, kernel_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Key indices of 1-D neighbourhood attention (NATTEN semantics, dilation 1).

    Query ``i`` attends to the ``kernel_size`` consecutive tokens starting at
    ``clamp(i - kernel_size // 2, 0, T - kernel_size)``: the window centred on ``i``, shifted
    inward at the borders so that every query sees exactly ``kernel_size`` keys.

    Args:
        T: number of tokens.
        kernel_size: odd neighbourhood size with ``1 <= kernel_size <= T``.
        device: device of the returned indices.

    Returns:
        Long tensor ``[T, kernel_size]``, row ``i`` in increasing order.

    Example:
        >>> neighborhood_indices(5, 3)
        tensor([[0, 1, 2],
                [0, 1, 2],
                [1, 2, 3],
                [2, 3, 4],
                [2, 3, 4]])
    """
    check_int("T", T, minimum=1)
    _check_odd_kernel(kernel_size)
    if kernel_size > T:
        raise ValueError(
            f"kernel_size={kernel_size} must be <= the number of tokens T={T}: neighbourhood "
            "attention needs kernel_size distinct keys per query"
        )
    start = (torch.arange(T, device=device) - kernel_size // 2).clamp(0, T - kernel_size)  # (T,)
    return start[:, None] + torch.arange(kernel_size, device=device)  # (T, kernel_size)


def kvt_attention_weights(
    query: torch.Tensor, keys: torch.Tensor, k: int, scale: float | None = None
) -> torch.Tensor:
    """KVT (k-NN attention) weights: softmax over each query's ``k`` best keys only.

    Args:
        query: queries ``[..., T, d]`` (e.g. ``[B, h, T, d]``).
        keys: keys ``[..., S, d]``.
        k: number of keys kept per query, ``1 <= k <= S``. With ``k = S`` this is plain
            softmax attention.
        scale: score scale, default ``d ** -0.5``.

    Returns:
        Weights ``[..., T, S]`` in the dtype of ``query``: exactly ``k`` entries per row come
        from the softmax (ties broken by ``torch.topk``), all others are exactly zero.
    """
    num_keys = keys.shape[-2]
    check_int("k", k, minimum=1)
    if k > num_keys:
        raise ValueError(f"k={k} must be <= the number of tokens T={num_keys}")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = (query @ keys.transpose(-2, -1)) * scale  # (..., T, S)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(-1, scores.topk(k, dim=-1).indices, True)  # (..., T, S)
    scores = scores.masked_fill(~keep, float("-inf"))
    return _softmax(scores)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (half-split / GPT-NeoX convention, as in lucidrains').

    Channel ``c`` and ``c + d/2`` of the vector at position ``p`` are rotated by the angle
    ``p * base ** (-2c / d)``; the dot product of two rotated vectors then depends on their
    positions only through the difference of the positions.

    Args:
        x: ``[..., T, d]`` with ``d`` even.
        positions: ``[T]`` positions (any integers or floats).
        base: frequency base.

    Returns:
        Tensor like ``x``.
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rotary embedding needs an even head width, got {d}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=work) / d)  # (d/2,)
    angles = positions.to(work)[:, None] * inv_freq[None, :]  # (T, d/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, d)
    x1, x2 = x.chunk(2, dim=-1)  # (..., T, d/2) each
    rotated = torch.cat((-x2, x1), dim=-1)  # (..., T, d)
    return x * angles.cos().to(x.dtype) + rotated * angles.sin().to(x.dtype)


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim; accumulated in float32 for half-precision inputs."""
    if scores.dtype in (torch.float16, torch.bfloat16):
        return scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)
    return scores.softmax(dim=-1)


def _check_odd_kernel(kernel_size: int) -> None:
    check_int("kernel_size", kernel_size, minimum=1)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd so the window can be centred on each token, got {kernel_size}"
        )


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def _check_heads(dim: int, num_heads: int) -> int:
    """The width of one head of ``dim`` split evenly over ``num_heads`` (both checked)."""
    check_int("dim", dim, minimum=1)
    check_int("num_heads", num_heads, minimum=1)
    check_divisible("dim", dim, "num_heads", num_heads)
    return dim // num_heads


def _check_tokens(x: torch.Tensor, dim: int) -> None:
    """``x`` is ``[B, T, dim]`` with at least one token: every mixer's input check."""
    check_rank("x", x, 3, "[B, T, D]")
    check_size("x", x, 2, dim, "[B, T, D]")
    if x.shape[1] < 1:
        raise ValueError(f"x must hold at least one token (T >= 1), got shape {tuple(x.shape)}")


class _HeadProjections:
    """Q/K/V/O projections and the head split shared by every attention-style mixer (the
    baselines here and :class:`convnn.layers.ConvNNAttention`), so that parameter names
    (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) and head layout agree and weights copy
    across with ``load_state_dict``. A mixin for an ``nn.Module``: call :meth:`_init_projections`
    after ``nn.Module.__init__``.
    """

    def _init_projections(self, dim: int, num_heads: int, head_dim: int, bias: bool,
                          device=None, dtype=None) -> None:
        check_int("dim", dim, minimum=1)
        check_int("num_heads", num_heads, minimum=1)
        check_int("head_dim", head_dim, minimum=1)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.inner_dim = num_heads * head_dim
        factory = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(dim, self.inner_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(dim, self.inner_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(dim, self.inner_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(self.inner_dim, dim, bias=bias, **factory)

    def _stacked_projections(self, *projections: nn.Linear
                             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weights (and biases) of ``projections`` stacked, for one GEMM over them all
        (the four projections share one bias flag)."""
        weight = torch.cat([p.weight for p in projections])
        bias = None if self.q_proj.bias is None else torch.cat([p.bias for p in projections])
        return weight, bias

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, T, d)

    def _combine_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = t.shape
        return t.transpose(1, 2).reshape(B, T, self.inner_dim)  # (B, T, h*d)


class _ProjectedAttention(_HeadProjections, nn.Module):
    """Shared parts of the attention mixers: Q/K/V/O projections, head split, validation.

    Subclasses implement ``_mix(q, k, v) -> out`` on ``[B, h, T, d]`` tensors and, for the dense
    reference path :meth:`attention_weights`, ``_allowed(scores)`` (a boolean mask broadcastable
    to ``[B, h, T, T]``, or None for "all keys"). ``head_dim=None`` splits ``dim`` evenly over
    the heads (``num_heads`` must divide it); the constructor checks every shared argument.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None,
        attn_dropout: float,
        bias: bool,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if head_dim is None:
            head_dim = _check_heads(dim, num_heads)
        self._init_projections(dim, num_heads, head_dim, bias, device, dtype)
        self.attn_dropout = check_fraction("attn_dropout", attn_dropout)

    # -- helpers -------------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        _check_tokens(x, self.dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values, ``(B, h, T, d)`` each, from one GEMM over the stacked
        q/k/v weights (timm's fused qkv projection; the parameters stay three ``nn.Linear``,
        so weights copy across the layers)."""
        qkv = F.linear(x, *self._stacked_projections(self.q_proj, self.k_proj, self.v_proj))
        q, k, v = (self._split_heads(part) for part in qkv.split(self.inner_dim, dim=-1))
        return q, k, v

    @property
    def _dropout_p(self) -> float:
        return self.attn_dropout if self.training else 0.0

    # -- public --------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix tokens.

        Args:
            x: ``[B, T, D]`` with ``D = dim``.

        Returns:
            ``[B, T, D]``.
        """
        self._check_input(x)
        q, k, v = self._qkv(x)  # (B, h, T, d) each
        out = self._mix(q, k, v)  # (B, h, T, d)
        return self.out_proj(self._combine_heads(out))  # (B, T, D)

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Dense attention weights of the current parameters, without dropout.

        A slow, obviously-correct reference path (``[T, T]`` per head) meant for plots and
        tests; ``forward`` uses the mixer's own fast path.

        Args:
            x: ``[B, T, D]``.

        Returns:
            ``[B, h, T, T]``: row ``i`` holds the softmax weights query ``i`` gives each key,
            exactly zero on keys it may not attend to.
        """
        self._check_input(x)
        q, k, _ = self._qkv(x)  # (B, h, T, d)
        q, k = self._position_encode(q, k)
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, h, T, T)
        allowed = self._allowed(scores)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return _softmax(scores)

    def _position_encode(self, q, k):
        return q, k

    def _allowed(self, scores: torch.Tensor) -> torch.Tensor | None:  # pragma: no cover
        raise NotImplementedError

    def _mix(self, q, k, v) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"attn_dropout={self.attn_dropout}, bias={self.q_proj.bias is not None}"
        )


class MultiHeadSelfAttention(_ProjectedAttention):
    """Multi-head softmax self-attention (the paper's ``Attention`` baseline).

    ``out = W_o · concat_h softmax(Q_h K_h^T / sqrt(d)) V_h`` with ``d = dim / num_heads``,
    computed by ``F.scaled_dot_product_attention``. This is ConvNN attention with ``k = T``.

    Args:
        dim: token width ``D``.
        num_heads: number of heads; must divide ``dim``.
        attn_dropout: dropout on the attention weights (training only).
        bias: bias in the four projections.
        device: factory kwarg for the parameters.
        dtype: factory kwarg for the parameters.

    Shape:
        ``[B, T, D] -> [B, T, D]``, any ``T >= 1``.

    Example:
        >>> attn = MultiHeadSelfAttention(192, num_heads=3)
        >>> attn(torch.randn(2, 197, 192)).shape
        torch.Size([2, 197, 192])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        attn_dropout: float = 0.0,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, num_heads, None, attn_dropout, bias, device, dtype)

    def _allowed(self, scores):
        return None

    def _mix(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self._dropout_p)  # (B, h, T, d)


class KVTAttention(_ProjectedAttention):
    """KVT k-NN attention (Wang et al., 2022): softmax over each query's top-``k`` keys only.

    Per head, each query keeps the ``k`` largest scaled dot-product scores; the others get
    weight exactly zero (``-inf`` before the softmax). With ``k = T`` this is
    :class:`MultiHeadSelfAttention`; it is ConvNN attention with ``k`` neighbours and all-ones
    aggregation weights.

    Args:
        dim: token width ``D``.
        num_heads: number of heads; must divide ``dim``.
        k: keys kept per query, ``1 <= k <= T`` (checked at forward). The paper's default is 9.
        attn_dropout: dropout on the attention weights (training only).
        bias: bias in the four projections.
        device: factory kwarg for the parameters.
        dtype: factory kwarg for the parameters.

    Shape:
        ``[B, T, D] -> [B, T, D]``. Memory is ``O(B h T^2)`` (dense scores, as in KVT).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        k: int = 9,
        attn_dropout: float = 0.0,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, num_heads, None, attn_dropout, bias, device, dtype)
        self.k = check_int("k", k, minimum=1)

    def _check_input(self, x):
        super()._check_input(x)
        if self.k > x.shape[1]:
            raise ValueError(
                f"k={self.k} must be <= the number of tokens T={x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )

    def _allowed(self, scores):
        keep = torch.zeros_like(scores, dtype=torch.bool)
        return keep.scatter_(-1, scores.topk(self.k, dim=-1).indices, True)  # (B, h, T, T)

    def _mix(self, q, k, v):
        weights = kvt_attention_weights(q, k, self.k)  # (B, h, T, T)
        weights = F.dropout(weights, p=self._dropout_p, training=self.training)
        return weights @ v  # (B, h, T, d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}"


class LocalAttention(_ProjectedAttention):
    """Windowed (local) attention, the paper's ``LocalAttention`` baseline (lucidrains'
    ``local-attention``, non-causal, ``look_backward = look_forward = 1``).

    The sequence is padded to a multiple of ``window`` and cut into non-overlapping windows;
    each window's queries attend to the keys of their own, the previous and the next window.
    Padding keys are masked out (the reference leaves its zero padding keys unmasked, so for
    ``T`` not a multiple of ``window`` late queries also spread weight over up to
    ``window - 1`` zero keys; we do not copy that). With ``exact_window=True`` (the paper's setting, the wrapper's
    default) keys further than ``window`` tokens away are masked too, so the pattern is the band
    ``|i - j| <= window`` (see :func:`local_attention_mask`). Note that with the paper's
    ``window=128`` on 197 tokens this excludes only pairs more than 128 tokens apart.

    Unlike the other mixers the inner width is ``num_heads * head_dim`` (independent of
    ``dim``), as in the reference: with one head of 64 the projections hold ``4 * dim * 64``
    parameters (49,152 for ``dim = 192``), a third of plain attention's.

    With ``rotary=True`` (the reference's default) queries and keys get rotary position
    embeddings. As in the reference, whose rotary frame puts a query window ``window``
    positions after its own keys, query ``i`` is rotated as position ``i + window`` and key
    ``j`` as position ``j``: scores depend on ``i - j + window``, still a relative encoding.

    Args:
        dim: token width ``D``.
        num_heads: number of heads (any positive number; ``dim`` need not be divisible).
        window: window size, at least 1.
        head_dim: width of each head.
        attn_dropout: dropout on the attention weights (training only).
        bias: bias in the four projections.
        exact_window: also mask keys with ``|i - j| > window``.
        rotary: apply rotary position embeddings to queries and keys (needs even ``head_dim``).
        device: factory kwarg for the parameters.
        dtype: factory kwarg for the parameters.

    Shape:
        ``[B, T, D] -> [B, T, D]``, any ``T >= 1``. Compute and memory grow as
        ``O(B h T window)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        window: int = 128,
        head_dim: int = 64,
        attn_dropout: float = 0.0,
        bias: bool = False,
        exact_window: bool = True,
        rotary: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        check_int("head_dim", head_dim, minimum=1)
        super().__init__(dim, num_heads, head_dim, attn_dropout, bias, device, dtype)
        self.window = check_int("window", window, minimum=1)
        self.exact_window = bool(exact_window)
        self.rotary = bool(rotary)
        if self.rotary and head_dim % 2:
            raise ValueError(f"rotary=True needs an even head_dim, got head_dim={head_dim}")

    def _position_encode(self, q, k):
        if not self.rotary:
            return q, k
        pos = torch.arange(q.shape[-2], device=q.device)  # (T,)
        return apply_rotary(q, pos + self.window), apply_rotary(k, pos)

    def _allowed(self, scores):
        return local_attention_mask(scores.shape[-1], self.window, self.exact_window, scores.device)

    def _block_mask(self, T: int, device) -> torch.Tensor:
        """Mask ``[W, w, 3w]``: query ``a`` of window ``b`` against look-around key ``c``."""
        w = self.window
        n_windows = -(-T // w)
        query = torch.arange(n_windows * w, device=device).view(n_windows, w, 1)  # (W, w, 1)
        key = (
            torch.arange(n_windows, device=device).view(n_windows, 1, 1) * w
            - w
            + torch.arange(3 * w, device=device).view(1, 1, 3 * w)
        )  # (W, 1, 3w): positions of the previous, own and next window
        mask = (key >= 0) & (key < T)  # (W, 1, 3w)
        if self.exact_window:
            mask = mask & ((query - key).abs() <= w)  # (W, w, 3w)
        return mask.expand(n_windows, w, 3 * w)

    def _mix(self, q, k, v):
        B, h, T, d = q.shape
        w = self.window
        n_windows = -(-T // w)
        pad = n_windows * w - T
        q, k = self._position_encode(q, k)
        q = F.pad(q, (0, 0, 0, pad)).reshape(B * h, n_windows, w, d)  # (B*h, W, w, d)

        def look_around(t: torch.Tensor) -> torch.Tensor:
            t = F.pad(t, (0, 0, w, pad + w))  # (B, h, (W+2) w, d)
            t = t.unfold(2, 3 * w, w)  # (B, h, W, d, 3w)
            return t.transpose(-1, -2).reshape(B * h, n_windows, 3 * w, d)  # (B*h, W, 3w, d)

        out = F.scaled_dot_product_attention(
            q,
            look_around(k),
            look_around(v),
            attn_mask=self._block_mask(T, q.device),  # (W, w, 3w)
            dropout_p=self._dropout_p,
        )  # (B*h, W, w, d)
        return out.reshape(B, h, n_windows * w, d)[:, :, :T]  # (B, h, T, d)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, window={self.window}, "
            f"exact_window={self.exact_window}, rotary={self.rotary}"
        )


class SparseAttention(_ProjectedAttention):
    """Sparse-Transformer attention with a fixed bidirectional mask (the paper's
    ``SparseAttention`` baselines).

    ``mode='local'``: query ``i`` attends to keys with ``|i - j| <= context // 2``;
    ``mode='strided'``: to keys with ``|i - j| % context == 0``. The mask
    (:func:`sparse_attention_mask`) is applied as a boolean ``attn_mask`` of
    ``F.scaled_dot_product_attention``.

    Args:
        dim: token width ``D``.
        num_heads: number of heads; must divide ``dim``.
        mode: ``'local'`` or ``'strided'``.
        context: band width or stride; ``None`` picks the paper's value (49 for ``'local'``,
            14 for ``'strided'``).
        attn_dropout: dropout on the attention weights (training only).
        bias: bias in the four projections.
        device: factory kwarg for the parameters.
        dtype: factory kwarg for the parameters.

    Shape:
        ``[B, T, D] -> [B, T, D]``, any ``T >= 1`` (dense ``[T, T]`` mask).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        mode: str = "local",
        context: int | None = None,
        attn_dropout: float = 0.0,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        check_choice("mode", mode, SPARSE_MODES)
        context = SPARSE_DEFAULT_CONTEXT[mode] if context is None else context
        super().__init__(dim, num_heads, None, attn_dropout, bias, device, dtype)
        self.mode = mode
        self.context = check_int("context", context, minimum=1)

    def _allowed(self, scores):
        return sparse_attention_mask(scores.shape[-1], self.mode, self.context, scores.device)

    def _mix(self, q, k, v):
        mask = sparse_attention_mask(q.shape[-2], self.mode, self.context, q.device)  # (T, T)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self._dropout_p
        )  # (B, h, T, d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}, context={self.context}"


class NeighborhoodAttention1d(_ProjectedAttention):
    """1-D neighbourhood attention (Hassani et al., NATTEN semantics, dilation 1).

    Each query attends to exactly ``kernel_size`` keys: the window centred on it, shifted
    inward at the borders (:func:`neighborhood_indices`). Keys and values are gathered, so
    cost is ``O(B T kernel_size D)`` rather than ``O(B T^2 D)``. It is ConvNN attention with
    selection by position (the ``kernel_size`` nearest tokens) and softmax weighting.

    Args:
        dim: token width ``D``.
        num_heads: number of heads; must divide ``dim``.
        kernel_size: odd neighbourhood size, ``kernel_size <= T`` (checked at forward).
        attn_dropout: dropout on the attention weights (training only).
        bias: bias in the four projections.
        device: factory kwarg for the parameters.
        dtype: factory kwarg for the parameters.

    Shape:
        ``[B, T, D] -> [B, T, D]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        kernel_size: int = 7,
        attn_dropout: float = 0.0,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        _check_odd_kernel(kernel_size)
        super().__init__(dim, num_heads, None, attn_dropout, bias, device, dtype)
        self.kernel_size = kernel_size

    def _check_input(self, x):
        super()._check_input(x)
        if self.kernel_size > x.shape[1]:
            raise ValueError(
                f"kernel_size={self.kernel_size} must be <= the number of tokens "
                f"T={x.shape[1]} (input shape {tuple(x.shape)})"
            )

    def _allowed(self, scores):
        T = scores.shape[-1]
        idx = neighborhood_indices(T, self.kernel_size, scores.device)  # (T, ks)
        mask = torch.zeros(T, T, dtype=torch.bool, device=scores.device)
        return mask.scatter_(1, idx, True)  # (T, T)

    def _mix(self, q, k, v):
        idx = neighborhood_indices(q.shape[-2], self.kernel_size, q.device)  # (T, ks)
        k_nb = k[:, :, idx]  # (B, h, T, ks, d)
        v_nb = v[:, :, idx]  # (B, h, T, ks, d)
        scores = torch.einsum("bhtd,bhtkd->bhtk", q, k_nb) * self.head_dim**-0.5  # (B, h, T, ks)
        weights = _softmax(scores)
        weights = F.dropout(weights, p=self._dropout_p, training=self.training)
        return torch.einsum("bhtk,bhtkd->bhtd", weights, v_nb)  # (B, h, T, d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}"


class TokenConv1d(nn.Module):
    """Convolution over the token axis, the paper's "1-D convolution" token mixer, done right.

    ``out = out_proj(conv(x^T)^T)``: a ``Conv1d`` with ``'same'`` zero padding over the tokens
    of ``x.transpose(1, 2)`` (``[B, D, T]``), channels grouped per head (``groups=num_heads``:
    head ``g`` mixes only its own ``D / h`` channels), followed by a linear projection. Output
    token ``t`` depends only on input tokens ``t - kernel_size//2 ... t + kernel_size//2``
    (the reference implementation mixes tokens and channels in its reshapes; method.md §6.2).

    Args:
        dim: token width ``D``.
        num_heads: channel groups; must divide ``dim``.
        kernel_size: odd kernel size (tokens per output).
        bias: bias in the convolution and the output projection.
        device: factory kwarg for the parameters.
        dtype: factory kwarg for the parameters.

    Shape:
        ``[B, T, D] -> [B, T, D]``, any ``T >= 1``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        kernel_size: int = 3,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        _check_odd_kernel(kernel_size)
        self.dim = dim
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        factory = {"device": device, "dtype": dtype}
        self.conv = nn.Conv1d(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=num_heads, bias=bias, **factory
        )
        self.out_proj = nn.Linear(dim, dim, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix tokens.

        Args:
            x: ``[B, T, D]``.

        Returns:
            ``[B, T, D]``.
        """
        _check_tokens(x, self.dim)
        y = self.conv(x.transpose(1, 2))  # (B, D, T)
        return self.out_proj(y.transpose(1, 2))  # (B, T, D)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"bias={self.out_proj.bias is not None}"
        )


# --------------------------------------------------------------------------------------------
# The token-mixer registry
# --------------------------------------------------------------------------------------------

_FACTORY_ARGS = ("device", "dtype")


@dataclass(frozen=True)
class MixerSpec:
    """One registered token mixer: how :func:`create_mixer` builds it.

    Attributes:
        cls: the module class, built as ``cls(dim, num_heads=..., **fixed, **options)``.
        options: every keyword the mixer accepts besides ``dim``, ``num_heads``, ``device``,
            ``dtype`` and ``fixed`` (``attn_dropout`` included where the mixer has one).
        fixed: keyword arguments the entry always passes (``mode='local'``...); they cannot be
            given again.
        baseline: listed in :data:`TOKEN_MIXERS` (the plain classes of this module).
        vit: listed in :data:`convnn.models.MIXERS` (a ``mixer`` of the ViT).
        candidate_sets: the ViT plans sampled candidate sets for it (ConvNN mixers: fallback to
            all candidates when ``candidates > T`` and one evaluation seed per block).
        token_limits: ``{option: default}`` of options that must be ``<= T`` (checked by the
            ViT when the model is built).
        build: what builds the mixer from its options (default ``cls``), e.g. a
            ``from_config`` classmethod that takes the options flat.
    """

    cls: type[nn.Module]
    options: frozenset[str]
    fixed: Mapping[str, object] = field(default_factory=dict)
    baseline: bool = False
    vit: bool = True
    candidate_sets: bool = False
    token_limits: Mapping[str, int] = field(default_factory=dict)
    build: Callable[..., nn.Module] | None = None

    @property
    def takes_attn_dropout(self) -> bool:
        return "attn_dropout" in self.options


_REGISTRY: dict[str, MixerSpec] = {}


def register_mixer(
    name: str,
    cls: type[nn.Module],
    options: Iterable[str],
    *,
    fixed: Mapping[str, object] | None = None,
    baseline: bool = False,
    vit: bool = True,
    candidate_sets: bool = False,
    token_limits: Mapping[str, int] | None = None,
    build: Callable[..., nn.Module] | None = None,
    replace: bool = False,
) -> MixerSpec:
    """Register a token mixer under ``name`` (the one place a new mixer is added).

    ``cls(dim, num_heads=..., **fixed, **options, device=..., dtype=...)`` must build a module
    ``[B, T, D] -> [B, T, D]``; ``options`` names every keyword it accepts (see
    :class:`MixerSpec` for the other fields). With ``vit=True`` (the default) the mixer is at once
    a ``mixer`` of :class:`convnn.models.ViT` and of :class:`convnn.models.ModelConfig`.

    Raises:
        ValueError: ``name`` already registered (unless ``replace``), or an option that is also
            fixed or is one of ``dim``, ``num_heads``, ``device``, ``dtype``.

    Example:
        >>> spec = register_mixer("my_kvt", KVTAttention, ["k", "bias", "attn_dropout"],
        ...                       token_limits={"k": 9})
        >>> create_mixer("my_kvt", 16, 2, k=3).k
        3
        >>> unregister_mixer("my_kvt")
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"mixer name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"mixer {name!r} is already registered (pass replace=True)")
    options = frozenset(options)
    fixed = dict(fixed or {})
    reserved = options & {"dim", "num_heads", *_FACTORY_ARGS, *fixed}
    if reserved:
        raise ValueError(f"options {sorted(reserved)} of mixer {name!r} are set by "
                         "create_mixer or fixed by the entry")
    spec = MixerSpec(cls, options, fixed, baseline, vit, candidate_sets, dict(token_limits or {}),
                     build)
    _REGISTRY[name] = spec
    return spec


def unregister_mixer(name: str) -> None:
    """Remove a mixer registered with :func:`register_mixer`."""
    mixer_spec(name)
    del _REGISTRY[name]


def mixer_spec(name: str) -> MixerSpec:
    """The :class:`MixerSpec` of ``name``; ``ValueError`` naming the known mixers otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown mixer {name!r}; known mixers: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def mixer_names(*, vit: bool | None = None, baseline: bool | None = None) -> list[str]:
    """Registered mixer names in registration order, optionally only ViT / baseline ones."""
    return [name for name, spec in _REGISTRY.items()
            if (vit is None or spec.vit == vit) and (baseline is None or spec.baseline == baseline)]


def create_mixer(name: str, dim: int, num_heads: int = 1, **options) -> nn.Module:
    """Build the registered token mixer ``name`` (as timm's ``create_attn``).

    Args:
        name: a registered mixer (:func:`mixer_names`).
        dim: token width ``D``.
        num_heads: heads (or channel groups).
        **options: the mixer's options (:attr:`MixerSpec.options`), plus ``device`` and
            ``dtype``.

    Raises:
        ValueError: unknown mixer, or an option the mixer does not accept.

    Example:
        >>> create_mixer("sparse_strided", 192, 3).context
        14
    """
    spec = mixer_spec(name)
    check_known("option(s)", options, sorted(spec.options | set(_FACTORY_ARGS)),
                f" for mixer={name!r}")
    return (spec.build or spec.cls)(dim, num_heads=num_heads, **spec.fixed, **options)


class _RegistryView(Mapping):
    """A live, read-only mapping over part of the registry."""

    def __init__(self, keep, value, doc: str) -> None:
        self._keep, self._value, self.__doc__ = keep, value, doc

    def _names(self) -> list[str]:
        return [name for name, spec in _REGISTRY.items() if self._keep(spec)]

    def __getitem__(self, name: str):
        spec = _REGISTRY.get(name)
        if spec is None or not self._keep(spec):
            raise KeyError(name)
        return self._value(spec)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"


_ATTN = frozenset({"attn_dropout", "bias"})
register_mixer("attention", MultiHeadSelfAttention, _ATTN, baseline=True)
register_mixer("kvt", KVTAttention, _ATTN | {"k"}, baseline=True, token_limits={"k": 9})
register_mixer("local", LocalAttention,
               _ATTN | {"window", "head_dim", "exact_window", "rotary"}, baseline=True)
register_mixer("sparse", SparseAttention, _ATTN | {"mode", "context"}, baseline=True, vit=False)
register_mixer("sparse_local", SparseAttention, _ATTN | {"context"}, fixed={"mode": "local"})
register_mixer("sparse_strided", SparseAttention, _ATTN | {"context"},
               fixed={"mode": "strided"})
register_mixer("neighborhood", NeighborhoodAttention1d, _ATTN | {"kernel_size"}, baseline=True,
               token_limits={"kernel_size": 7})
register_mixer("conv1d", TokenConv1d, {"kernel_size", "bias"}, baseline=True)

TOKEN_MIXERS: Mapping[str, type[nn.Module]] = _RegistryView(
    lambda spec: spec.baseline, lambda spec: spec.cls,
    "Name -> class of the baseline token mixers (a read-only view of the registry); each is "
    "built as ``cls(dim, num_heads=..., ...)``.")
"""Name -> class of the baseline token mixers, a read-only view of the registry (see
:func:`create_mixer`); each is built as ``cls(dim, num_heads=..., ...)``."""
