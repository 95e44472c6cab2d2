"""The few attention rows a scorer needs, for any attention implementation.

Scorers need the attention of a handful of queries (an observation window, a draft's lookahead) over
all keys. Asking the model for its attention matrix works only with ``eager`` attention and costs
O(n²) memory. Instead, forward hooks on the attention modules record the *queries* of the last few
positions (recomputed from the module's input with its own ``q_proj``, ``q_norm`` and rotary
embedding), and :func:`attention_rows` computes their attention over the cached keys in float32.
This works the same under ``eager``, ``sdpa`` and ``flash_attention_2``, and copies no model's
attention code.
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a decoder-only model, ordered by ``layer_idx``."""
    found = {}
    for module in model.modules():
        if all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj", "layer_idx", "scaling")):
            found[module.layer_idx] = module
    if not found:
        raise TypeError(
            f"{type(model).__name__} has no attention modules with q_proj/k_proj/v_proj: "
            "draftwise supports Llama-style attention (Llama, Qwen2, Qwen3, Mistral, Gemma 3)"
        )
    return [found[i] for i in sorted(found)]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def project_queries(
    module: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Post-RoPE queries ``[B, H, T, d]`` of ``hidden`` ``[B, T, hidden]`` as ``module`` computes them.

    ``cos``/``sin`` are the rotary tables ``[B, T, d]`` the model passed to this layer.
    """
    batch, length, _ = hidden.shape
    q = module.q_proj(hidden).view(batch, length, -1, module.head_dim)
    q_norm = getattr(module, "q_norm", None)
    if q_norm is not None:  # Qwen3, Gemma 3: RMSNorm over each head
        q = q_norm(q)
    q = q.transpose(1, 2)
    cos, sin = cos.unsqueeze(1).to(q.dtype), sin.unsqueeze(1).to(q.dtype)
    return q * cos + rotate_half(q) * sin


class QueryRecorder:
    """Forward hooks that record, per layer, the post-RoPE queries of the last ``last`` positions.

    Set ``last`` before each forward pass; every forward appends its queries along the position axis.
    ``queries[layer]`` is ``[B, H, T_total, d]``. Use as a context manager so hooks are removed.
    """

    def __init__(self, model: nn.Module, last: int = 0, layers: set[int] | None = None) -> None:
        self.last = last
        self.modules = attention_modules(model)
        self.layers = layers
        self._chunks: dict[int, list[torch.Tensor]] = defaultdict(list)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> QueryRecorder:
        self._thread = threading.get_ident()
        for module in self.modules:
            if self.layers is None or module.layer_idx in self.layers:
                self._handles.append(module.register_forward_hook(self._hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, args: tuple, *kwargs_and_output: object) -> None:
        # Another thread's forward pass fires this hook too, and torch registers and removes a hook with
        # kwargs in two steps: a forward running in between calls it as hook(module, args, output).
        if self.last <= 0 or threading.get_ident() != self._thread:
            return
        kwargs, _ = kwargs_and_output  # our own forward: always hook(module, args, kwargs, output)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cos, sin = kwargs["position_embeddings"] if "position_embeddings" in kwargs else args[1]
        take = min(self.last, hidden.shape[1])
        with torch.no_grad():
            q = project_queries(module, hidden[:, -take:], cos[:, -take:], sin[:, -take:])
        self._chunks[module.layer_idx].append(q)

    def queries(self, layer: int) -> torch.Tensor:
        """The recorded queries ``[B, H, T_total, d]`` of ``layer``."""
        chunks = self._chunks.get(layer)
        if not chunks:
            raise KeyError(f"no queries were recorded for layer {layer}")
        return torch.cat(chunks, dim=2)

    def clear(self) -> None:
        self._chunks.clear()


def attention_rows(
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_positions: torch.Tensor,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention probabilities of a few queries over all keys, in float32.

    Args:
        queries: ``[B, H, q, d]`` post-RoPE queries.
        keys: ``[B, G, k, d]`` post-RoPE keys at positions ``0..k-1``; ``H`` is a multiple of ``G``.
        query_positions: ``[q]`` absolute positions of the queries; a query sees keys at positions
            ``<= `` its own.
        scaling: the attention module's logit scale (``1/sqrt(d)`` for most models).
        softcap: Gemma-2-style logit soft-capping, if the model uses it.
    Returns:
        ``[B, G, H/G, q, k]`` softmax probabilities.
    """
    batch, heads, n_q, dim = queries.shape
    kv_heads, n_k = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    q = queries.float().reshape(batch, kv_heads, group * n_q, dim)
    logits = torch.matmul(q, keys.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.view(batch, kv_heads, group, n_q, n_k)
    key_positions = torch.arange(n_k, device=keys.device)
    future = key_positions[None, :] > query_positions.to(keys.device)[:, None]
    logits = logits.masked_fill(future, float("-inf"))
    return logits.softmax(dim=-1)


def module_attention_rows(
    module: nn.Module, queries: torch.Tensor, keys: torch.Tensor, query_positions: torch.Tensor
) -> torch.Tensor:
    """:func:`attention_rows` with ``module``'s own scaling and soft-capping."""
    softcap = getattr(module, "attn_logit_softcapping", None)
    return attention_rows(queries, keys, query_positions, module.scaling, softcap)


class AttentionOverride:
    """Run ``model``'s attention through :meth:`attention` inside a ``with`` block, then switch back.

    It registers the subclass's ``implementation`` name in transformers' attention interface (the
    sanctioned extension point: no model code is patched) and sets it on the model's config and on
    the configs its attention modules read (a self-draft's modules are the target's, with the target's
    config). Overrides of models sharing modules must not be active at once. An instance may be
    entered again after it exits.
    """

    implementation: str = "draftwise"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.previous: str | None = None
        self._configs: list | None = None
        self._saved: list[tuple[object, str | None]] = []

    def __enter__(self) -> AttentionOverride:
        AttentionInterface.register(self.implementation, _dispatch_override)
        if self._configs is None:
            configs = {id(self.model.config): self.model.config}
            for module in attention_modules(self.model):
                configs.setdefault(id(module.config), module.config)
            self._configs = list(configs.values())
        self.previous = self.model.config._attn_implementation
        self._saved = [(config, config._attn_implementation) for config in self._configs]
        for config in self._configs:
            _OVERRIDES[id(config)] = self
            config._attn_implementation = self.implementation  # transformers' setter, sub-configs too
        return self

    def __exit__(self, *exc: object) -> None:
        for config, previous in self._saved:
            _OVERRIDES.pop(id(config), None)
            config._attn_implementation = previous
        self._saved = []

    def attention(self, module: nn.Module, query, key, value, attention_mask, **kwargs):
        """Same contract as transformers' attention functions: returns ``(output [B, T, H, d], weights)``."""
        raise NotImplementedError


# The attention implementations a :class:`WrappingOverride` can call (it passes them its own masks).
WRAPPED_IMPLEMENTATIONS = ("eager", "sdpa")


class WrappingOverride(AttentionOverride):
    """An override that calls the model's own ``eager`` or ``sdpa`` attention (:meth:`inner`) with changed
    inputs; other implementations are refused with an error naming ``purpose``."""

    purpose = "this override"  # what needs it, for the error under other attention

    def __enter__(self) -> WrappingOverride:
        implementation = self.model.config._attn_implementation
        if implementation not in WRAPPED_IMPLEMENTATIONS:
            raise ValueError(f"{self.purpose} need 'eager' or 'sdpa' attention, not {implementation!r}")
        super().__enter__()
        return self

    def inner(self, module: nn.Module):
        """The attention function the model ran before: SDPA's, or its modeling file's eager one."""
        if self.previous == "sdpa":
            return ALL_ATTENTION_FUNCTIONS["sdpa"]
        return sys.modules[type(module).__module__].eager_attention_forward


_OVERRIDES: dict[int, AttentionOverride] = {}


def _dispatch_override(module: nn.Module, query, key, value, attention_mask, **kwargs):
    active = _OVERRIDES.get(id(module.config))
    if active is None:
        raise RuntimeError("a draftwise attention override was called outside its `with` block")
    return active.attention(module, query, key, value, attention_mask, **kwargs)
