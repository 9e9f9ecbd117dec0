"""Exact per-example gradients of a batch, layer by layer, handed over as backward produces them.

DMin needs one gradient per (sample, timestep) example. Running a batch of R examples and summing their losses
gives, at every layer, each example's own output gradient (examples never mix in a diffusion model: no batch norm);
a layer's per-example weight gradient follows from its input and that output gradient:

    Linear       Σ_t g[t]ᵀ·x[t]                     (a batched matmul over the token dims)
    Conv2d       conv2d_weight with the batch as groups (cuDNN/oneDNN's own weight-gradient kernel; 1×1 as a matmul)
    GroupNorm, LayerNorm, RMSNorm   Σ g·x̂ and Σ g  (x̂ recomputed from the input)
    Embedding    the output gradients scattered to the rows each example looked up
    anything else  the module re-run example by example, and autograd's vector-Jacobian product (slow, exact)

The rules cover PEFT's LoRA layers (their lora_A / lora_B are Linear or Conv2d) and every module that owns
parameters in the SD, SDXL, SD3/3.5, FLUX, DiT and DDPM denoisers. Selected parameters do *not* require grad, so
autograd computes activation gradients only and never the summed weight gradient it would otherwise throw away; a
hooked module whose output needs no gradient (nothing upstream does) gets a detached output that does. Each
parameter's (R, *shape) gradient goes to `sink` and is freed at once: memory holds R × one parameter at a time
(plus what a layer called several times accumulates), never R × n.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight
from torch.utils._pytree import tree_flatten, tree_unflatten

Sink = Callable[[str, torch.Tensor], None]  # (parameter name, per-example gradient (R, *shape))


def _rms_norm_classes() -> tuple[type, ...]:
    classes: list[type] = [torch.nn.RMSNorm] if hasattr(torch.nn, "RMSNorm") else []
    try:
        from diffusers.models.normalization import RMSNorm
    except ImportError:  # an older diffusers without its own RMSNorm
        return tuple(classes)
    return (*classes, RMSNorm)


def _tokens(t: torch.Tensor) -> torch.Tensor:
    """(R, …, features) → (R, tokens, features)."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


def linear_grads(m: torch.nn.Linear, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    gt = _tokens(g).float()
    out = {"weight": torch.bmm(gt.transpose(1, 2), _tokens(x).float())}
    if m.bias is not None:
        out["bias"] = gt.sum(1)
    return out


def conv_grads(m: torch.nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    R, cin, h, w = x.shape
    cout = g.shape[1]
    x, g = x.float(), g.float()
    pointwise = m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0) and m.groups == 1
    if pointwise:
        weight = torch.bmm(g.flatten(2), x.flatten(2).transpose(1, 2)).view(R, *m.weight.shape)
    else:
        weight = conv2d_weight(
            x.reshape(1, R * cin, h, w),
            (R * cout, cin // m.groups, *m.kernel_size),
            g.reshape(1, R * cout, *g.shape[2:]),
            m.stride,
            m.padding,  # type: ignore[arg-type]
            m.dilation,
            R * m.groups,
        ).view(R, *m.weight.shape)
    out = {"weight": weight}
    if m.bias is not None:
        out["bias"] = g.sum((2, 3))
    return out


def _affine(g: torch.Tensor, x_hat: torch.Tensor, channels_last: bool, has_bias: bool) -> dict[str, torch.Tensor]:
    """Σ g·x̂ and Σ g over every dim but the examples' and the channels'."""
    g, x_hat = g.float(), x_hat.float()
    if channels_last:
        prod, gs = _tokens(g * x_hat).sum(1), _tokens(g).sum(1)
    else:
        prod, gs = (g * x_hat).flatten(2).sum(2), g.flatten(2).sum(2)
    return {"weight": prod, "bias": gs} if has_bias else {"weight": prod}


def group_norm_grads(m: torch.nn.GroupNorm, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    x_hat = F.group_norm(x.float(), m.num_groups, None, None, m.eps)
    return _affine(g, x_hat, channels_last=False, has_bias=m.bias is not None)


def layer_norm_grads(m: torch.nn.LayerNorm, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    shape = m.normalized_shape
    x_hat = F.layer_norm(x.float(), shape, None, None, m.eps)
    R = x.shape[0]
    g2, x2 = g.float().reshape(R, -1, *shape), x_hat.reshape(R, -1, *shape)
    out = {"weight": (g2 * x2).sum(1)}
    if m.bias is not None:
        out["bias"] = g2.sum(1)
    return out


def rms_norm_grads(m: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    xf = x.float()
    eps = getattr(m, "eps", None) or torch.finfo(x.dtype).eps  # torch.nn.RMSNorm's default: the input's epsilon
    x_hat = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return _affine(g, x_hat, channels_last=True, has_bias=getattr(m, "bias", None) is not None)


def embedding_grads(m: torch.nn.Embedding, idx: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    R = idx.shape[0]
    rows = idx.reshape(R, -1)
    gt = g.float().reshape(R, rows.shape[1], -1)
    out = torch.zeros(R, *m.weight.shape, dtype=torch.float32, device=g.device)
    out.scatter_add_(1, rows.unsqueeze(-1).expand_as(gt), gt)
    if m.padding_idx is not None:
        out[:, m.padding_idx] = 0  # the padding row never receives a gradient
    return {"weight": out}


Rule = Callable[[Any, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def _plain(module: torch.nn.Module, base: type[torch.nn.Module]) -> bool:
    """An instance of `base` (or a subclass) that computes exactly what `base` computes."""
    return isinstance(module, base) and type(module).forward is base.forward


def rule_for(module: torch.nn.Module) -> Rule | None:
    """The closed-form rule for a module's own parameters, or None (the generic fallback applies)."""
    if _plain(module, torch.nn.Linear):
        return linear_grads
    if _plain(module, torch.nn.Conv2d):
        conv: Any = module
        return conv_grads if conv.padding_mode == "zeros" and not isinstance(conv.padding, str) else None
    if _plain(module, torch.nn.GroupNorm):
        return group_norm_grads
    if isinstance(module, torch.nn.LayerNorm):  # diffusers' FP32LayerNorm normalizes the same, in float32
        return layer_norm_grads
    if isinstance(module, _rms_norm_classes()):
        return rms_norm_grads
    if _plain(module, torch.nn.Embedding):
        return embedding_grads
    return None


@dataclass
class _Call:
    """One forward call of a hooked module: its inputs, and its outputs' gradients as backward delivers them."""

    args: Any
    kwargs: Any
    grads: list[torch.Tensor | None]


@dataclass
class _Hooked:
    """One module owning selected parameters: its calls in this pass and what backward has given so far."""

    module: torch.nn.Module
    names: dict[str, str]  # local parameter name → full name
    rule: Rule | None
    calls: list[_Call] = field(default_factory=list)
    answered: int = 0
    acc: dict[str, torch.Tensor] = field(default_factory=dict)


class PerExampleGrads:
    """Hooks on every module that owns selected parameters; after `backward` of the summed per-example losses,
    `sink(name, grad)` has received each selected parameter's (R, *shape) gradient exactly once (unused ones: none).

    Per pass: forward, `loss.sum().backward()`, then `finish()` (the generic rule runs there)."""

    def __init__(self, model: torch.nn.Module, params: Sequence[tuple[str, torch.nn.Parameter]], sink: Sink) -> None:
        self.sink = sink
        self._replaying = False  # the generic rule re-runs modules: their hooks must stay quiet then
        wanted = {id(p): name for name, p in params}
        self.hooked: list[_Hooked] = []
        self._handles = []
        for module in model.modules():
            own = {local: wanted[id(p)] for local, p in module.named_parameters(recurse=False) if id(p) in wanted}
            if not own:
                continue
            h = _Hooked(module, own, rule_for(module))
            self.hooked.append(h)
            self._handles.append(module.register_forward_hook(self._forward(h), with_kwargs=True))
        covered = {full for h in self.hooked for full in h.names.values()}
        missing = [name for name, _ in params if name not in covered]
        if missing:  # a parameter not owned by any module of `model` would never be seen
            raise ValueError(f"selected parameters outside the model: {missing[:3]}")
        self._params = list(params)
        for _, p in params:
            p.requires_grad_(False)  # autograd then never computes (and we never discard) summed weight gradients

    def close(self) -> None:
        """Remove the hooks; the parameters require grad again, as they did before."""
        for handle in self._handles:
            handle.remove()
        for _, p in self._params:
            p.requires_grad_(True)

    def reset(self) -> None:
        """Forget a pass (after an error, e.g. out of memory): nothing half-done reaches the next one."""
        for h in self.hooked:
            h.calls.clear()
            h.acc.clear()
            h.answered = 0

    # -- forward: remember inputs, make sure the outputs' gradients will reach us ------------------------------
    def _forward(self, h: _Hooked) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            if self._replaying or not torch.is_grad_enabled():
                return None
            flat, spec = tree_flatten(output)
            call = _Call(_detached(args), _detached(kwargs), [None] * len(flat))
            h.calls.append(call)
            for i, t in enumerate(flat):
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    if not t.requires_grad:
                        flat[i] = t = t.detach().requires_grad_(True)
                    t.register_hook(self._backward(h, call, i))
            return tree_unflatten(flat, spec)

        return hook

    # -- backward: a call's output gradient is in; finish the module when every call has answered ---------------
    def _backward(self, h: _Hooked, call: _Call, i: int) -> Callable[..., None]:
        def hook(grad: torch.Tensor) -> None:
            g = grad.detach()
            call.grads[i] = g
            if h.rule is not None:  # a rule's module has one output: compute this call's share now, free its input
                self._add(h, h.rule(h.module, call.args[0], g))
                call.args = call.kwargs = None
                call.grads = []
                h.answered += 1
                if h.answered == len(h.calls):
                    self._flush(h)

        return hook

    def _add(self, h: _Hooked, grads: dict[str, torch.Tensor]) -> None:
        for local, g in grads.items():
            if local in h.names:
                h.acc[local] = h.acc[local] + g if local in h.acc else g

    def _flush(self, h: _Hooked) -> None:
        for local, full in h.names.items():
            g = h.acc.pop(local, None)
            if g is not None:
                self.sink(full, g)
        h.calls.clear()
        h.answered = 0

    def finish(self) -> None:
        """After backward: modules without a rule (and calls whose outputs got no gradient) are settled here."""
        self._replaying = True
        try:
            for h in self.hooked:
                if h.rule is None:
                    for call in h.calls:
                        if any(g is not None for g in call.grads):
                            self._add(h, _vjp_per_example(h, call))
                if h.acc or h.calls:
                    self._flush(h)
        finally:
            self._replaying = False


def _detached(tree: Any) -> Any:
    flat, spec = tree_flatten(tree)
    return tree_unflatten([t.detach() if isinstance(t, torch.Tensor) else t for t in flat], spec)


def _vjp_per_example(h: _Hooked, call: _Call) -> dict[str, torch.Tensor]:
    """The generic rule: re-run the module on each example alone and take autograd's vector-Jacobian product."""
    module, args, kwargs, grads = h.module, call.args, call.kwargs, call.grads
    R = next(g.shape[0] for g in grads if g is not None)
    own = dict(module.named_parameters(recurse=False))
    out: dict[str, list[torch.Tensor]] = {local: [] for local in h.names}

    def one(tree: Any, e: int) -> Any:
        flat, spec = tree_flatten(tree)
        picked = [t[e : e + 1] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == R else t for t in flat]
        return tree_unflatten(picked, spec)

    for e in range(R):
        leaves = {local: own[local].detach().requires_grad_(True) for local in h.names}
        with torch.enable_grad():
            result = torch.func.functional_call(module, {**own, **leaves}, one(args, e), one(kwargs, e))
        flat, _ = tree_flatten(result)
        pairs = [(o, g[e : e + 1]) for o, g in zip(flat, grads, strict=True) if g is not None and o.requires_grad]
        found = torch.autograd.grad(
            [o for o, _ in pairs], list(leaves.values()), [g for _, g in pairs], allow_unused=True
        )
        for (local, p), gp in zip(leaves.items(), found, strict=True):
            out[local].append(torch.zeros_like(p) if gp is None else gp.float())
    return {local: torch.stack(parts) for local, parts in out.items()}
