"""Per-example gradients from one batched pass equal one backward per example, for every rule and the fallback."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.normalization import RMSNorm as DiffusersRMSNorm

from dmin.per_example import PerExampleGrads, rule_for


class Scaled(torch.nn.Module):
    """A module no rule knows: its own parameter multiplies the input (the generic fallback must handle it)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.randn(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * self.scale)


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 6, padding_idx=0)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.down = torch.nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=2)
        self.point = torch.nn.Conv2d(6, 8, 1)
        self.gn = torch.nn.GroupNorm(2, 8)
        self.ln = torch.nn.LayerNorm(8)
        self.rms = torch.nn.RMSNorm(8, eps=1e-6)
        self.drms = DiffusersRMSNorm(8, eps=1e-6)
        self.shared = torch.nn.Linear(8, 8)  # called twice: contributions add up
        self.scaled = Scaled(8)
        self.head = torch.nn.Linear(8, 3, bias=False)
        self.time = torch.nn.Linear(1, 6)  # its input never requires grad (like a timestep embedding)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv(x) + self.embed(labels)[:, :, None, None] + self.time(t[:, None])[:, :, None, None]
        h = self.gn(self.point(self.down(torch.nn.functional.silu(h))))
        tokens = h.flatten(2).transpose(1, 2)  # (R, tokens, 8)
        tokens = self.drms(self.rms(self.ln(tokens)))
        tokens = self.shared(self.scaled(self.shared(tokens)))
        return self.head(tokens)


def _per_example_reference(model: Toy, params: list, inputs: tuple, target: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for e in range(target.shape[0]):
        one = tuple(t[e : e + 1] for t in inputs)
        loss = torch.nn.functional.mse_loss(model(*one), target[e : e + 1])
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [p for _, p in params])]))
    return out


@pytest.mark.parametrize("lora", [False, True])
def test_batched_per_example_gradients_equal_one_backward_each(lora: bool) -> None:
    torch.manual_seed(0)
    model = Toy()
    if lora:
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["shared", "point", "conv"]), model)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    model.eval()
    params = sorted(
        ((n, p) for n, p in model.named_parameters() if ("lora_" in n) == lora), key=lambda kv: kv[0]
    )
    for _, p in model.named_parameters():
        p.requires_grad_(False)
    for _, p in params:
        p.requires_grad_(True)
    R = 5
    inputs = (torch.randn(R, 3, 8, 8), torch.tensor([0, 1, 4, 2, 1]), torch.rand(R))
    target = torch.randn(R, 16, 3)
    want = _per_example_reference(model, params, inputs, target)

    got: dict[str, torch.Tensor] = {}
    engine = PerExampleGrads(model, params, lambda name, g: got.setdefault(name, g))
    pred = model(*inputs)
    ((pred - target) ** 2).flatten(1).mean(1).sum().backward()
    engine.finish()
    assert all(not p.requires_grad and p.grad is None for _, p in params)  # no summed weight gradients were built
    engine.close()
    assert all(p.requires_grad for _, p in params)  # closing gives the parameters back as they were
    assert set(got) == {n for n, _ in params}
    for e in range(R):
        flat = torch.cat([got[n][e].reshape(-1) for n, _ in params])
        torch.testing.assert_close(flat, want[e], rtol=1e-5, atol=1e-6)


def test_rules_cover_the_modules_diffusion_denoisers_own() -> None:
    from peft import LoraConfig, inject_adapter_in_model

    lin = torch.nn.Sequential(torch.nn.Linear(4, 4))
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["0"]), lin)
    for module in [
        torch.nn.Linear(2, 2), torch.nn.Conv2d(2, 2, 3), torch.nn.GroupNorm(1, 2), torch.nn.LayerNorm(2),
        torch.nn.RMSNorm(2), DiffusersRMSNorm(2, eps=1e-6), torch.nn.Embedding(3, 2),
        lin[0].lora_A["default"], lin[0].lora_B["default"],
    ]:
        assert rule_for(module) is not None, type(module).__name__
    assert rule_for(Scaled(2)) is None
    assert rule_for(torch.nn.Conv2d(2, 2, 3, padding="same")) is None  # string padding: the fallback's
