"""A fused one-token decode step for Llama-family models (Llama, Mistral without sliding window, Qwen2).

The same arithmetic as the transformers modules (RMSNorm in float32, rotary embedding from the model's own
`rotary_emb`, so every rope scaling type is covered, grouped-query SDPA, SiLU-gated MLP), written as a few
tensor ops per layer on packed weights and none of the module-call, mask-building and output-capturing machinery
of a transformers forward. On CPU a decode step of a few rows is bound by reading the weights from memory, so
when the linear weights of a float32 or bfloat16 CPU model exceed `ONEDNN_MIN_BYTES` (so they stream from memory
each step)
they are packed in oneDNN's blocked layout (`pack_linear`: ~1.4x faster products at 8 rows than MKL on any
plain layout, docs/rollout.md) and the residual adds, SiLU and gating multiply run as post-ops inside the
matmuls. Otherwise (small models whose weights stay in cache, no oneDNN, other devices) the weights are stored
transposed (in, out) for plain MKL products, gate|up as one matrix. q|k|v are always one matrix.
Prefill still runs the model's own forward.

The packed weights are a copy made at the start of each `generate` call and dropped at its end (the policy
changes between calls in RL, and the copy is not kept while the trainer runs): one extra copy of the linear
weights while generating. Models with anything else in their layers (LoRA, quantized linears, QK-norm, biases on
the MLP) are refused by `fused_unsupported_reason` and decode through the generic path, which calls the model's
forward.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
# oneDNN's blocked layout pays off only when the weights stream from memory each step; when they stay in cache
# (tiny models), its ~20 us per call overhead makes plain MKL faster (docs/rollout.md, performance)
ONEDNN_MIN_BYTES = 32 * 2**20
# bfloat16 (rollout dtype bf16): oneDNN's blocked bf16 products run on AMX, ~2x the float32 speed at 8 rows
ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def fused_unsupported_reason(model: nn.Module) -> str | None:
    """Why `FusedDecoder` cannot run `model` (an unwrapped transformers model), or None."""
    name = type(model).__name__
    if name not in SUPPORTED:
        return f"{name} is not one of {SUPPORTED}"
    cfg = model.config
    if getattr(cfg, "hidden_act", "silu") != "silu" or (getattr(cfg, "pretraining_tp", 1) or 1) != 1:
        return "hidden_act is not silu or pretraining_tp != 1"
    if getattr(cfg, "mlp_bias", False):
        return "MLP biases"
    if type(model.lm_head) is not nn.Linear or model.lm_head.bias is not None:
        return "the LM head is not a plain bias-free nn.Linear"
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(type(m) is not nn.Linear for m in linears):
            return "a layer's projections are not plain nn.Linear (LoRA, quantized)"
        if attn.o_proj.bias is not None or any(hasattr(attn, n) for n in ("q_norm", "k_norm")):
            return "output-projection bias or QK-norm"
        if getattr(attn, "sliding_window", None):
            return "sliding-window attention"
    return None


def pack_linear(weight: Tensor, onednn: bool) -> tuple[Tensor, bool]:
    """`weight` (out, in) packed for few-row products: with `onednn` (float32/bfloat16 CPU weights), oneDNN's blocked
    layout (x @ W^T then reads the weight ~1.4x faster than MKL with any plain layout at 8 rows, where decoding a
    model too big for the caches is bound by memory traffic), else the transpose (in, out), contiguous.
    Returns (packed, is_onednn)."""
    if onednn and weight.device.type == "cpu" and weight.dtype in ONEDNN_DTYPES:
        try:
            return torch.ops.mkldnn._reorder_linear_weight(weight.detach()), True
        except RuntimeError:  # a build without oneDNN kernels for this shape/ISA: the plain layout below
            pass
    return weight.detach().t().contiguous(), False


def linear(x: Tensor, packed: tuple[Tensor, bool], bias: Tensor | None = None, *, post: str = "none",
           other: Tensor | None = None) -> Tensor:
    """y = x (A, in) @ W^T (+ bias) for a weight packed by `pack_linear`, then `post`: "none", "swish" (silu(y)),
    "add" (y + other) or "mul" (y * other); with oneDNN the post-op runs inside the matmul. Returns (A, out)."""
    weight, onednn = packed
    if onednn:
        if other is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, bias, post)
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post, [], "")
    y = torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)
    if post == "swish":
        return F.silu(y)
    return y if post == "none" else y.add_(other) if post == "add" else y.mul_(other)


class FusedDecoder:
    """Packed weights of one model and its decode step."""

    def __init__(self, model: nn.Module):
        self.model = model
        cfg, first = model.config, model.model.layers[0].self_attn
        self.head_dim = first.head_dim
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        linears = [m for layer in model.model.layers for m in layer.modules() if isinstance(m, nn.Linear)]
        size = sum(m.weight.numel() * m.weight.element_size() for m in linears + [model.lm_head])
        weight = model.lm_head.weight
        self.onednn = ONEDNN and weight.device.type == "cpu" and weight.dtype in ONEDNN_DTYPES and (
            size >= ONEDNN_MIN_BYTES)
        pack = functools.partial(pack_linear, onednn=self.onednn)
        self.layers = []
        with torch.no_grad():
            for layer in model.model.layers:
                attn, mlp = layer.self_attn, layer.mlp
                qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
                bias = None if qkv[0].bias is None else torch.cat([m.bias for m in qkv])
                # oneDNN: gate and up apart (SiLU and the product run as post-ops); plain: gate|up in one matmul
                w_mlp = ((pack(mlp.gate_proj.weight), pack(mlp.up_proj.weight)) if self.onednn else
                         (pack(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])),))
                self.layers.append((layer.input_layernorm, pack(torch.cat([m.weight for m in qkv])), bias,
                                    pack(attn.o_proj.weight), layer.post_attention_layernorm, w_mlp,
                                    pack(mlp.down_proj.weight)))
            self.head = pack(model.lm_head.weight)  # (V, H) packed

    @staticmethod
    def _rms(norm: nn.Module, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:  # one fused kernel, same arithmetic as the module's float32 path
            return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
        # bf16 (rollout dtype): normalize in float32, cast, then scale, as the transformers module does
        return norm.weight * F.rms_norm(x.float(), norm.weight.shape, None, norm.variance_epsilon).to(x.dtype)

    def step(self, tokens: Tensor, positions: Tensor, bias: Tensor, cache) -> Tensor:
        """Logits (A, V) of the token after `tokens` (A,) at `positions` (A, 1); `bias` (A, 1, 1, L) additive
        attention mask over the cache + this token; `cache` a `SlabCache` filled by the prefill."""
        inner = self.model.model
        rows, dim, n_q, n_kv = tokens.shape[0], self.head_dim, self.n_heads, self.n_kv
        x = inner.embed_tokens(tokens)  # (A, H)
        cos, sin = inner.rotary_emb(x, positions)  # (A, 1, D) each
        cos, sin, half = cos[:, None], sin[:, None], dim // 2
        for i, (norm1, w_qkv, b_qkv, w_o, norm2, w_mlp, w_down) in enumerate(self.layers):
            qkv = linear(self._rms(norm1, x), w_qkv, b_qkv).view(rows, n_q + 2 * n_kv, 1, dim)  # (A, heads, 1, D)
            qk, v = qkv.split([n_q + n_kv, n_kv], dim=1)
            # rotary embedding of q and k in one go: x * cos + rotate_half(x) * sin
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin
            q, k = qk.split([n_q, n_kv], dim=1)
            keys, values = cache.layers[i].update(k, v)  # (A, Hkv, L, D)
            # query heads of one kv head attend to the same keys: fold them into the query length (no repeat)
            q = q.reshape(rows, n_kv, n_q // n_kv, dim)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)  # (A, Hkv, G, D)
            x = linear(out.reshape(rows, n_q * dim), w_o, post="add", other=x)  # x + attention output
            h = self._rms(norm2, x)
            if len(w_mlp) == 2:  # silu(h W_g^T) * (h W_u^T) with post-ops
                act = linear(h, w_mlp[1], post="mul", other=linear(h, w_mlp[0], post="swish"))
            else:
                gate, up = linear(h, w_mlp[0]).chunk(2, dim=-1)
                act = F.silu(gate) * up
            x = linear(act, w_down, post="add", other=x)
        return linear(self._rms(inner.norm, x), self.head)  # (A, V)
