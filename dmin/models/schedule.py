"""The training forward process: how a clean latent x0 and noise ε become the model's input x_t and its target.

DMin's loss is the loss the model was *trained* with, so x_t comes from the training process, never from the
inference scheduler a pipeline happens to ship. diffusers saves pipelines with their inference scheduler (PNDM for
SD 1.5, EulerDiscrete for SDXL, …) and Euler-type schedulers' `add_noise` is the VE form x0 + σ·ε, a different
input scale from √ᾱ·x0 + √(1−ᾱ)·ε. As diffusers' own training scripts do, the schedule is rebuilt from the
scheduler's *config* (betas, T, prediction type) whatever its class:

- DDPM-type (every beta-schedule scheduler): ᾱ_t from `DDPMScheduler.from_config(config)`;
  x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε; target ε (epsilon) or √ᾱ_t·ε − √(1−ᾱ_t)·x0 (v_prediction).
- Flow matching (SD3, FLUX): σ = t / T; x_t = (1 − σ)·x0 + σ·ε; target ε − x0. In diffusers' training scripts the
  timestep fed to the model is σ·T for every σ they sample, so σ = t / T is the relation the model learned. SD3's
  `shift` and FLUX's dynamic shifting only change *which* σ training samples (a density over [0, 1]), not the
  process, so dmin ignores them: a project's K timesteps are stored in dmin.json and collect and query both read
  them from there.

`describe()` names the schedule in dmin.json, so two pipelines differing only in their inference scheduler give the
same identity (and identical vectors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import xxhash

from dmin.errors import ModelLoadError

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler")


@dataclass(frozen=True)
class TrainingSchedule:
    """x_t and the regression target for timesteps t, for one of: epsilon, v_prediction, flow_matching."""

    loss_type: str
    num_train_timesteps: int
    alphas_cumprod: torch.Tensor | None = None  # float64, DDPM-type only
    config_note: str = ""

    def noisy_and_target(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x0, eps: (N, …); t: (N,) timesteps. Computed in float64 and returned as x0's dtype."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        x0d, epsd = x0.double(), eps.double()
        if self.loss_type == "flow_matching":
            sigma = (t.double() / self.num_train_timesteps).to(x0.device).view(shape)
            x_t, target = (1.0 - sigma) * x0d + sigma * epsd, epsd - x0d
        else:
            assert self.alphas_cumprod is not None
            ac = self.alphas_cumprod.to(x0.device)[t.long().to(x0.device)].view(shape)
            a, s = ac.sqrt(), (1.0 - ac).sqrt()
            x_t = a * x0d + s * epsd
            target = a * epsd - s * x0d if self.loss_type == "v_prediction" else epsd
        return x_t.to(x0.dtype), target.to(x0.dtype)

    def describe(self) -> str:
        """What dmin.json records: enough to tell two training processes apart, nothing about inference."""
        if self.loss_type == "flow_matching":
            return f"flow_matching sigma=t/{self.num_train_timesteps}"
        assert self.alphas_cumprod is not None
        digest = xxhash.xxh3_64_hexdigest(self.alphas_cumprod.double().numpy().tobytes())
        return f"ddpm {self.config_note} T={self.num_train_timesteps} alphas_cumprod={digest} {self.loss_type}"


def training_schedule(scheduler_class: str, config: Any, flow: bool = False) -> TrainingSchedule:
    """The training schedule of a pipeline, from its scheduler's class name and config (any scheduler class)."""
    T = int(config.get("num_train_timesteps", 1000))
    if flow or scheduler_class in FLOW_SCHEDULERS:
        return TrainingSchedule("flow_matching", T)
    pred = config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        raise ModelLoadError(
            f"prediction_type {pred!r} is not supported (supported: epsilon, v_prediction, flow matching)"
        )
    from diffusers import DDPMScheduler

    try:
        ddpm = DDPMScheduler.from_config(dict(config))
    except (ValueError, NotImplementedError, TypeError) as exc:
        raise ModelLoadError(f"cannot rebuild the training schedule from the scheduler config: {exc}") from exc
    c = ddpm.config
    note = f"betas={c.beta_schedule}({c.beta_start},{c.beta_end})"
    if c.trained_betas is not None:
        note = "betas=trained"
    if getattr(c, "rescale_betas_zero_snr", False):
        note += " zero_snr"
    return TrainingSchedule(str(pred), T, ddpm.alphas_cumprod.double().clone(), note)
