"""Building blocks of the decoder: norms, RoPE, attention with a static KV cache, MLPs, block.

Speed notes (CPU, where a training step is ~75% matmuls and the rest is memory traffic):
  * one fused QKV matmul (and one fused [gate; up] matmul) whose output is only viewed into heads;
  * RMSNorm, RoPE, SwiGLU and the LM-head loss have hand-written backward passes that allocate
    fewer full-size temporaries than autograd would (big fresh allocations cost page faults);
  * attention is `F.scaled_dot_product_attention` (`is_causal`, no mask tensor), except bf16
    training with short contexts, where an explicit-softmax kernel beats the CPU flash backward;
  * dropout modules are skipped entirely at p=0; generation takes plain no-autograd paths.
Each custom autograd function is checked against autograd in tests/test_model.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fromzero.model.config import ModelConfig


class RMSNorm(nn.Module):
    """y = x / rms(x) * w, computed in fp32. Hand-written backward: ~2x faster on CPU than autograd
    through the textbook formula or F.rms_norm, because it allocates fewer full-size temporaries."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return _RMSNormFn.apply(x, self.weight, self.eps)
        if x.dtype == self.weight.dtype and x.numel() <= 65536:  # decoding: one call, least overhead
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return _rms_norm(x, self.weight, _rstd(_up(x), self.eps))


def _up(x: Tensor) -> Tensor:
    """bf16/fp16 -> fp32 for the norm's arithmetic; fp32/fp64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _rstd(x: Tensor, eps: float) -> Tensor:
    # vector_norm avoids materialising x**2
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()


def _rms_norm(x: Tensor, weight: Tensor, rstd: Tensor) -> Tensor:
    y = torch.mul(_up(x), rstd).to(x.dtype)
    return y.mul_(weight) if y.dtype == weight.dtype else y * weight


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        rstd = _rstd(_up(x), eps)
        ctx.save_for_backward(x, weight, rstd)
        return _rms_norm(x, weight, rstd)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        xhat = _up(x) * rstd
        g = _up(grad)
        gw = g * weight.to(g.dtype)
        # d/dx of xhat*w = rstd * (gw - xhat * mean(gw * xhat))
        c = torch.linalg.vecdot(gw, xhat, dim=-1).unsqueeze(-1).div_(x.shape[-1])
        dx = torch.addcmul(gw, xhat, c, value=-1).mul_(rstd)
        dweight = (g * xhat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        return dx.to(x.dtype), None if dweight is None else dweight.to(weight.dtype), None


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "llama":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.has_bias)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables [max_len, 1, head_dim] for the rotate-half layout Hugging Face Llama uses.

    The sin table carries the sign of rotate_half: x*cos + swap_halves(x)*sin == HF's
    x*cos + rotate_half(x)*sin, so HF weights map 1:1 with no permutation.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # [T, hd/2]
    cos = torch.cat([freqs.cos(), freqs.cos()], dim=-1)
    sin = torch.cat([-freqs.sin(), freqs.sin()], dim=-1)
    return cos.unsqueeze(1), sin.unsqueeze(1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, T, heads, head_dim]; cos/sin: [T, 1, head_dim] (already in x's dtype)."""
    if torch.is_grad_enabled():
        return _RopeFn.apply(x, cos, sin)
    return torch.mul(x, cos).addcmul_(_swap_halves(x), sin)


def _swap_halves(x: Tensor) -> Tensor:
    B, T, N, D = x.shape
    return x.reshape(B, T, N, 2, D // 2).flip(-2).view(B, T, N, D)


class _RopeFn(torch.autograd.Function):
    """out = x*cos + swap(x)*sin in two kernels; the rotation's transpose is a rotation by -angle."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(cos, sin)
        return torch.mul(x, cos).addcmul_(_swap_halves(x), sin)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return torch.mul(grad, cos).addcmul_(_swap_halves(grad), sin, value=-1), None, None


class KVCache:
    """Static per-layer key/value buffers [batch, n_kv_head, max_len, head_dim], allocated once.

    Decoding writes position `start_pos` in place and attends over the prefix: no per-step
    allocation or concatenation.
    """

    def __init__(self, batch_size: int, max_len: int, n_layer: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        self.batch_size, self.max_len = batch_size, max_len
        self.data = torch.zeros(n_layer, 2, batch_size, n_kv_head, max_len, head_dim, dtype=dtype, device=device)
        self.layers = [(self.data[i, 0], self.data[i, 1]) for i in range(n_layer)]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=cfg.has_qkv_bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=cfg.has_bias)
        self.dropout = cfg.dropout
        self.gqa = self.n_kv_head != self.n_head
        # Prefix tuning (fromzero.peft) sets learned keys/values [n_kv_head, P, head_dim] here; they
        # take no position, are never rotated or cached, and every query may attend to them.
        self.prefix_kv: tuple[Tensor, Tensor] | None = None

    def target_parts(self) -> dict[str, tuple[str, tuple[int, int] | None]]:
        """Where q, k and v sit in the fused qkv output, so peft targets such as q_proj find them
        (role -> (child, output rows), see fromzero.modules.targets)."""
        q, kv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        return {"q": ("qkv", (0, q)), "k": ("qkv", (q, q + kv)), "v": ("qkv", (q + kv, q + 2 * kv)),
                "qkv": ("qkv", None), "o": ("proj", None)}

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None,
                kv: tuple[Tensor, Tensor] | None = None, start_pos: int = 0) -> Tensor:
        B, T, _ = x.shape
        H, KV = self.n_head, self.n_kv_head
        # split (not slicing) so the backward is one concatenation instead of zero-fill + adds
        qk, v = self.qkv(x).view(B, T, H + 2 * KV, self.head_dim).split([H + KV, KV], dim=2)
        if rope is not None:
            qk = apply_rope(qk, *rope)
        q, k = qk.split([H, KV], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, hd] views
        dropout = self.dropout if self.training else 0.0
        if self.prefix_kv is not None:
            y = self._attend_with_prefix(q, k, v, kv, start_pos, dropout)
        elif kv is None:
            if dropout == 0.0 and q.requires_grad and _use_matmul_attention(q):
                y = _CausalMatmulAttnFn.apply(q, k, v)
            else:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=self.gqa)
        else:
            cache_k, cache_v = kv
            end = start_pos + T
            cache_k[:, :, start_pos:end] = k
            cache_v[:, :, start_pos:end] = v
            k, v = cache_k[:, :, :end], cache_v[:, :, :end]
            if T == 1:  # one new token attends to the whole prefix: no mask needed
                y = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.gqa)
            elif start_pos == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.gqa)
            else:  # several new tokens after a cached prefix: query i sees keys <= start_pos + i
                mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start_pos)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.gqa)
        # SDPA's output is [B, T, H, hd] in memory on CPU, so this reshape is usually a free view.
        return self.proj(y.transpose(1, 2).reshape(B, T, H * self.head_dim))

    def _attend_with_prefix(self, q: Tensor, k: Tensor, v: Tensor, kv: tuple[Tensor, Tensor] | None,
                            start_pos: int, dropout: float) -> Tensor:
        B, _, T, _ = q.shape
        if kv is not None:
            cache_k, cache_v = kv
            cache_k[:, :, start_pos:start_pos + T] = k
            cache_v[:, :, start_pos:start_pos + T] = v
            k, v = cache_k[:, :, :start_pos + T], cache_v[:, :, :start_pos + T]
        pk, pv = self.prefix_kv
        P, S = pk.shape[1], k.shape[2]
        k = torch.cat([pk.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1), k], dim=2)
        v = torch.cat([pv.to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1), v], dim=2)
        mask = torch.ones(T, P + S, dtype=torch.bool, device=q.device)
        mask[:, P:] = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=self.gqa)


_MATMUL_ATTN_BYTES = 64 << 20  # per-layer budget for the saved [B, H, T, T] probabilities


def _use_matmul_attention(q: Tensor) -> bool:
    """Training in bf16/fp16 on CPU with short contexts: materialising the softmax is ~2x faster
    than the CPU flash-attention backward (and ~3x with grouped-query attention)."""
    B, H, T, _ = q.shape
    return (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
            and B * H * T * T * q.element_size() <= _MATMUL_ATTN_BYTES)


class _CausalMatmulAttnFn(torch.autograd.Function):
    """Causal attention as softmax(q k^T * scale + mask) v with a hand-written backward.

    q: [B, H, T, D], k/v: [B, KV, T, D]. With grouped-query attention the G = H/KV query heads
    that share a key head are stacked along the row axis, so each step is one batched matmul
    per key head and k/v are never repeated.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # type: ignore[override]
        B, H, T, D = q.shape
        KV = k.shape[1]
        G = H // KV
        scale = D**-0.5
        qf = q.reshape(B * KV, G * T, D)
        kf, vf = k.reshape(B * KV, T, D), v.reshape(B * KV, T, D)
        bias = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
        if G > 1:
            bias = bias.repeat(G, 1)
        probs = torch.softmax(torch.baddbmm(bias, qf, kf.transpose(1, 2), alpha=scale), dim=-1)
        ctx.save_for_backward(qf, kf, vf, probs)
        ctx.scale = scale
        return torch.bmm(probs, vf).view(B, H, T, D)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        qf, kf, vf, probs = ctx.saved_tensors
        B, H, T, D = grad.shape
        gf = grad.reshape(qf.shape)
        dv = torch.bmm(probs.transpose(1, 2), gf)
        dprobs = torch.bmm(gf, vf.transpose(1, 2))
        dscores = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype)
        dq = torch.bmm(dscores, kf).mul_(ctx.scale)
        dk = torch.bmm(dscores.transpose(1, 2), qf).mul_(ctx.scale)
        n_kv = qf.shape[0] // B
        return dq.view(B, H, T, D), dk.view(B, n_kv, T, D), dv.view(B, n_kv, T, D)


class GeluMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.has_bias)
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.has_bias)

    def target_parts(self) -> dict[str, tuple[str, tuple[int, int] | None]]:
        return {"up": ("up", None), "down": ("down", None)}

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))  # GPT-2's "gelu_new", one fused kernel


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul ([gate; up] rows)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.ffn_dim, bias=cfg.has_bias)
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.has_bias)

    def target_parts(self) -> dict[str, tuple[str, tuple[int, int] | None]]:
        f = self.down.in_features
        return {"gate": ("gate_up", (0, f)), "up": ("gate_up", (f, 2 * f)), "down": ("down", None)}

    def forward(self, x: Tensor) -> Tensor:
        return self.down(gated_activation(self.gate_up(x), "silu"))


def gated_activation(gate_up: Tensor, kind: str) -> Tensor:
    """act(gate) * up on a fused [gate; up] activation; kind "silu" (SwiGLU) or "gelu_tanh" (T5 v1.1)."""
    if torch.is_grad_enabled() and gate_up.requires_grad:
        return _GatedMulFn.apply(gate_up, kind)
    gate, up = gate_up.chunk(2, dim=-1)
    return _act(gate, kind).mul_(up)


def _act(x: Tensor, kind: str) -> Tensor:
    return F.silu(x) if kind == "silu" else F.gelu(x, approximate="tanh")


class _GatedMulFn(torch.autograd.Function):
    """act(gate) * up with a backward that reuses the forward's act(gate) (no recompute) and writes
    both halves of one gradient buffer directly (no per-half temporaries, no concatenation)."""

    @staticmethod
    def forward(ctx, gate_up: Tensor, kind: str) -> Tensor:  # type: ignore[override]
        gate, up = gate_up.chunk(2, dim=-1)
        act = _act(gate, kind)
        ctx.save_for_backward(gate_up, act)
        ctx.kind = kind
        return act * up

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        gate_up, act = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        out = torch.empty_like(gate_up)
        d_gate, d_up = out.chunk(2, dim=-1)
        torch.mul(grad, act, out=d_up)
        if ctx.kind == "silu":
            torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=d_gate)
        else:
            torch.ops.aten.gelu_backward.grad_input(grad * up, gate, approximate="tanh", grad_input=d_gate)
        return out, None


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = SwiGLU(cfg) if cfg.arch == "llama" else GeluMLP(cfg)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None,
                kv: tuple[Tensor, Tensor] | None = None, start_pos: int = 0) -> Tensor:
        a = self.attn(self.norm1(x), rope, kv, start_pos)
        if self.drop is not None:
            a = self.drop(a)
        x = x + a
        m = self.mlp(self.norm2(x))
        if self.drop is not None:
            m = self.drop(m)
        return x + m


def lm_head_loss(h: Tensor, weight: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """logits = h @ weight.T and mean cross-entropy vs labels (-100 ignored), fused.

    Same result as F.cross_entropy(logits.float(), labels), but it never materialises the
    [tokens, vocab] log-softmax, its gradient, or an fp32 copy of bf16 logits. When gradients
    are needed they are computed right here, a block of rows at a time (softmax - onehot is
    formed once, in fp32, in a small reused buffer), so backward is just a rescale.
    h: [N, D], weight: [V, D] (same dtype), labels: [N].
    """
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _LinearCrossEntropyFn.apply(h, weight, labels, need_grad)


_CHUNK_ELEMS = 1 << 22  # 16 MB of fp32 per temporary: small enough for malloc to reuse
_MIN_ROWS = 64  # ...but with huge vocabularies keep the matmuls reasonably tall


class _LinearCrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, labels: Tensor, need_grad: bool):  # type: ignore[override]
        with torch.autocast(h.device.type, enabled=False):
            N, V = h.shape[0], weight.shape[0]
            acc = torch.promote_types(h.dtype, torch.float32)  # fp32 math for bf16 operands
            logits = torch.empty(N, V, dtype=h.dtype, device=h.device)
            valid = labels != -100
            safe = labels.masked_fill(~valid, 0)
            n_valid = valid.sum().clamp_(min=1).to(acc)
            row_losses = torch.empty(N, dtype=acc, device=h.device)
            if need_grad:
                dh = torch.empty(N, h.shape[1], dtype=h.dtype, device=h.device)
                dweight = torch.zeros(weight.shape, dtype=acc, device=h.device)
            rows = max(_MIN_ROWS, _CHUNK_ELEMS // V)
            for s in range(0, N, rows):
                e = min(s + rows, N)
                chunk = torch.mm(h[s:e], weight.t(), out=logits[s:e])
                top = chunk.amax(dim=-1, keepdim=True).to(acc)
                probs = (chunk - top).exp_()  # fp32 even for bf16 chunks (type promotion)
                total = probs.sum(-1, keepdim=True)
                target = chunk.gather(1, safe[s:e, None]).to(acc)
                row_losses[s:e] = (total.log() + top - target).squeeze(1)
                if need_grad:
                    # probs <- (softmax - onehot) / n_valid on valid rows, 0 elsewhere
                    scale = valid[s:e, None].to(acc) / n_valid
                    probs.mul_(scale / total)
                    probs.scatter_add_(1, safe[s:e, None], -scale)
                    g = probs.to(h.dtype)
                    torch.mm(g, weight, out=dh[s:e])
                    if g.dtype == acc:
                        dweight.addmm_(g.t(), h[s:e])
                    else:
                        dweight.add_(g.t() @ h[s:e])
            loss = torch.where(valid, row_losses, 0.0).sum() / n_valid
        if need_grad:
            ctx.save_for_backward(h, weight, dh, dweight.to(weight.dtype))
        ctx.set_materialize_grads(False)  # unused logits get grad None, not a [N, V] zero tensor
        return logits, loss

    @staticmethod
    def backward(ctx, grad_logits: Tensor | None, grad_loss: Tensor | None, *_):  # type: ignore[override]
        h, weight, dh, dweight = ctx.saved_tensors
        if grad_loss is not None:
            dh, dweight = dh * grad_loss.to(dh.dtype), dweight * grad_loss.to(dweight.dtype)
        else:
            dh, dweight = torch.zeros_like(dh), torch.zeros_like(dweight)
        if grad_logits is not None:  # the logits were also used elsewhere (e.g. distillation)
            dh.addmm_(grad_logits, weight)
            dweight.addmm_(grad_logits.t(), h)
        return dh, dweight, None, None
