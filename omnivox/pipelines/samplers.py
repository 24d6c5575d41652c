"""Rectified-flow Euler sampling with classifier-free guidance, guidance rescale and a guidance interval.

Spec models.md 8. The flow convention is ``x_t = (1 - t) x_0 + (sigma_min + (1 - sigma_min) t) eps`` with t = 1 the
noise end; the networks predict the velocity ``v = (1 - sigma_min) eps - x_0``. The time grid is computed in
float64 (``numpy.linspace`` then the ``rescale_t`` warp) and handed to the Euler update as Python floats, so the
grid points match the reference exactly (``0.6`` is exactly ``0.6`` for ``rescale_t = 3``, and the step that
starts there is guided: the interval test is inclusive). Latents stay float32 between steps.

The pieces are plain functions and two small classes, composed explicitly:

* `SamplerParams`  -- one stage's settings (``pipeline.json`` ``params`` plus ``sigma_min``);
* `euler_timesteps` -- the float64 grid;
* `Guidance`       -- CFG arithmetic (strength, rescale, interval), given the two velocity predictions;
* `FlowEulerSampler` -- the loop; it calls a ``velocity(x, t, cond)`` function and reports progress through
  an optional ``callback(step, total)``;
* `FlowEulerSampler.sample_views` -- the same loop conditioned on several views of one object, training-free
  (`MULTIVIEW_MODES`): ``"stochastic"`` conditions step ``i`` on view ``stochastic_schedule(steps, V)[i] =
  i mod V`` only; ``"multidiffusion"`` guides every view on its own (strength, interval and rescale per view,
  against the one shared unconditional prediction) and steps along the mean of the guided velocities.

Batch layout: a dense latent is ``(B, ...)``; a sparse latent is the ``(N, C)`` feature matrix of a
`SparseTensor` plus its ``batch_index`` (which item each row belongs to). The rescale standard deviation is
taken per item: unbiased over all non-batch elements for dense latents, population (``sqrt(E[f^2] - E[f]^2)``
over the item's tokens and channels) for sparse ones, exactly as the reference does for each stage
(spec 8.3). Where the guidance strength is 1 the unconditional pass is skipped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

SIGMA_MIN = 1e-5

Velocity = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]
VelocityPair = Callable[[torch.Tensor, float, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
ProgressCallback = Callable[[int, int], None]
# ``views_velocity(x, t, views, unconditional) -> ([v_cond of each view in views], v_uncond or None)``.
ViewsVelocity = Callable[[torch.Tensor, float, Sequence[int], bool],
                         Tuple[Sequence[torch.Tensor], Optional[torch.Tensor]]]

MULTIVIEW_MODES = ("stochastic", "multidiffusion")


def check_multiview_mode(mode: str) -> str:
    """``mode`` if it is one of `MULTIVIEW_MODES`; a ValueError naming them otherwise."""
    if mode not in MULTIVIEW_MODES:
        raise ValueError(f"multiview_mode must be one of {MULTIVIEW_MODES}, got {mode!r}")
    return mode


def stochastic_schedule(steps: int, num_views: int) -> list[int]:
    """The view that conditions each step of a ``"stochastic"`` multi-view stage: step ``i`` (from 0) uses view
    ``i mod num_views``, so the views take turns in the order given and each conditions ``steps / num_views``
    steps (rounded: the first ``steps mod num_views`` views get one more). Every stage restarts at view 0."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    return [i % num_views for i in range(steps)]


@dataclass
class SamplerParams:
    """One stage's sampler settings (spec 8.4; the defaults are the texture stage's, which uses no CFG).

    Attributes:
        steps: Euler steps.
        guidance_strength: CFG scale ``g``; ``v = g * v_cond + (1 - g) * v_uncond``. 1 disables CFG.
        guidance_rescale: blend towards the conditional prediction's standard deviation (0 disables).
        guidance_interval: ``(lo, hi)``: guidance applies on steps whose start time ``t`` is in ``[lo, hi]``.
        rescale_t: time-warp factor of the grid (1 = uniform).
        sigma_min: noise floor of the flow convention.
    """

    steps: int = 12
    guidance_strength: float = 1.0
    guidance_rescale: float = 0.0
    guidance_interval: Tuple[float, float] = (0.0, 1.0)
    rescale_t: float = 1.0
    sigma_min: float = SIGMA_MIN

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"steps must be a positive int, got {self.steps!r}")
        interval = tuple(float(v) for v in self.guidance_interval)
        if len(interval) != 2 or interval[0] > interval[1]:
            raise ValueError(f"guidance_interval must be (lo, hi) with lo <= hi, got {self.guidance_interval!r}")
        self.guidance_interval = interval
        if self.rescale_t <= 0:
            raise ValueError(f"rescale_t must be > 0, got {self.rescale_t!r}")
        if not 0 <= self.sigma_min < 1:
            raise ValueError(f"sigma_min must be in [0, 1), got {self.sigma_min!r}")
        if not 0 <= self.guidance_rescale <= 1:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {self.guidance_rescale!r}")

    def replace(self, **overrides) -> "SamplerParams":
        """A copy with ``overrides`` merged over these values (``{**defaults, **overrides}`` as in spec 8.4).

        Raises:
            ValueError: an unknown key (the message lists the valid ones).
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown sampler parameters {unknown}; valid: {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_json(cls, entry: dict, source: str = "sampler") -> "SamplerParams":
        """Read a ``pipeline.json`` sampler entry ``{"name", "args": {"sigma_min"}, "params": {...}}``.

        Unknown ``params`` keys are ignored (the released files carry none we know of); the sampler ``name``
        must be one of the flow-Euler samplers.
        """
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(entry).__name__}")
        name = entry.get("name", "FlowEulerGuidanceIntervalSampler")
        if name not in ("FlowEulerGuidanceIntervalSampler", "FlowEulerCfgSampler", "FlowEulerSampler"):
            raise ValueError(f"{source}: unsupported sampler {name!r} (expected FlowEulerGuidanceIntervalSampler)")
        params = dict(entry.get("params", {}))
        values = {k: params[k] for k in ("steps", "guidance_strength", "guidance_rescale", "rescale_t") if k in params}
        if "guidance_interval" in params:
            values["guidance_interval"] = tuple(params["guidance_interval"])
        if "sigma_min" in entry.get("args", {}):
            values["sigma_min"] = float(entry["args"]["sigma_min"])
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from error

    def to_json(self, name: str = "FlowEulerGuidanceIntervalSampler") -> dict:
        """The ``pipeline.json`` entry for these settings."""
        return {"name": name, "args": {"sigma_min": self.sigma_min},
                "params": {"steps": self.steps, "guidance_strength": self.guidance_strength,
                           "guidance_rescale": self.guidance_rescale,
                           "guidance_interval": list(self.guidance_interval), "rescale_t": self.rescale_t}}


def euler_timesteps(steps: int, rescale_t: float = 1.0) -> list[float]:
    """The ``steps + 1`` times from 1 to 0 (spec 8.2), computed in float64.

    ``t = linspace(1, 0, steps + 1)``, then ``t <- r t / (1 + (r - 1) t)`` with ``r = rescale_t``.
    """
    ts = np.linspace(1.0, 0.0, steps + 1, dtype=np.float64)
    ts = rescale_t * ts / (1.0 + (rescale_t - 1.0) * ts)
    return [float(t) for t in ts]


def x0_from_velocity(x: torch.Tensor, t: float, v: torch.Tensor, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """``x_0 = (1 - sigma_min) x_t - (sigma_min + (1 - sigma_min) t) v`` (spec 8.1)."""
    return (1 - sigma_min) * x - (sigma_min + (1 - sigma_min) * t) * v


def velocity_from_x0(x: torch.Tensor, t: float, x0: torch.Tensor, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """``v = ((1 - sigma_min) x_t - x_0) / (sigma_min + (1 - sigma_min) t)`` (spec 8.1)."""
    return ((1 - sigma_min) * x - x0) / (sigma_min + (1 - sigma_min) * t)


def item_std(x: torch.Tensor, batch_index: Optional[torch.Tensor] = None,
             batch_size: Optional[int] = None) -> torch.Tensor:
    """Per-item standard deviation, shaped to broadcast against ``x``.

    Dense (``batch_index`` None): ``x`` is ``(B, ...)``; unbiased (N - 1) std over all non-batch elements,
    returned as ``(B, 1, ..., 1)``.
    Sparse: ``x`` is ``(N, C)`` rows of ``batch_size`` items; population std ``sqrt(E[f^2] - E[f]^2)`` of each
    item, computed from per-token channel means, returned per row as ``(N, 1)``.
    """
    if batch_index is None:
        return x.flatten(1).std(dim=1).view(-1, *([1] * (x.dim() - 1)))
    if batch_size is None:
        batch_size = int(batch_index.max()) + 1 if batch_index.numel() else 0
    # index_add_ rather than bincount: bincount reads the maximum back from the device (a host sync per step).
    counts = torch.zeros(batch_size, dtype=torch.float32, device=x.device).index_add_(
        0, batch_index, torch.ones(len(batch_index), dtype=torch.float32, device=x.device)).clamp(min=1).to(x.dtype)
    mean = torch.zeros(batch_size, dtype=x.dtype, device=x.device).index_add_(0, batch_index, x.mean(dim=1)) / counts
    mean_sq = torch.zeros(batch_size, dtype=x.dtype, device=x.device).index_add_(
        0, batch_index, x.square().mean(dim=1)) / counts
    std = (mean_sq - mean.square()).clamp(min=0).sqrt()
    return std.index_select(0, batch_index)[:, None]


@dataclass
class Guidance:
    """Classifier-free guidance with guidance rescale and a guidance interval (spec 8.3).

    Attributes:
        strength: ``g``; inside the interval ``v = g v_cond + (1 - g) v_uncond``, outside it ``g = 1``.
        rescale: ``phi``; the guided ``x_0`` is pulled towards the conditional one's standard deviation:
            ``x_0 <- phi * x_0 * std(x_0_cond) / std(x_0) + (1 - phi) * x_0``.
        interval: inclusive ``(lo, hi)`` range of step start times where guidance applies.
        sigma_min: of the flow convention (for the ``x_0`` conversions).
    """

    strength: float = 1.0
    rescale: float = 0.0
    interval: Tuple[float, float] = (0.0, 1.0)
    sigma_min: float = SIGMA_MIN

    @classmethod
    def from_params(cls, params: SamplerParams) -> "Guidance":
        return cls(params.guidance_strength, params.guidance_rescale, params.guidance_interval, params.sigma_min)

    def strength_at(self, t: float) -> float:
        """The CFG scale used on a step starting at ``t``."""
        lo, hi = self.interval
        return self.strength if lo <= t <= hi else 1.0

    def needs_unconditional(self, t: float) -> bool:
        """Whether the step at ``t`` calls the network without the condition (False where ``g == 1``)."""
        return self.strength_at(t) != 1.0

    def combine(self, x: torch.Tensor, t: float, v_cond: Optional[torch.Tensor], v_uncond: Optional[torch.Tensor],
                batch_index: Optional[torch.Tensor] = None, batch_size: Optional[int] = None) -> torch.Tensor:
        """The guided velocity from the conditional and unconditional predictions at time ``t``.

        Args:
            x: current latent (dense ``(B, ...)`` or sparse features ``(N, C)``).
            v_cond, v_uncond: predictions; either may be None where ``strength_at(t)`` makes it unused
                (``v_uncond`` at g = 1, ``v_cond`` at g = 0).
            batch_index, batch_size: sparse layout (see `item_std`); None for dense latents.
        """
        g = self.strength_at(t)
        if g == 1.0:
            return v_cond
        if g == 0.0:
            return v_uncond
        v = g * v_cond + (1 - g) * v_uncond
        if self.rescale > 0:
            x0_cond = x0_from_velocity(x, t, v_cond, self.sigma_min)
            x0_cfg = x0_from_velocity(x, t, v, self.sigma_min)
            std_cond = item_std(x0_cond, batch_index, batch_size)
            std_cfg = item_std(x0_cfg, batch_index, batch_size)
            x0 = self.rescale * (x0_cfg * std_cond / std_cfg) + (1 - self.rescale) * x0_cfg
            v = velocity_from_x0(x, t, x0, self.sigma_min)
        return v


class FlowEulerSampler:
    """Euler integration of a rectified flow from noise (t = 1) to data (t = 0), with `Guidance`.

    Example:
        >>> sampler = FlowEulerSampler()
        >>> params = SamplerParams(steps=2)
        >>> x = sampler.sample(lambda x, t, c: x * 0 + 1, torch.zeros(1, 2), torch.zeros(1, 1), None, params)
        >>> x.tolist()
        [[-1.0, -1.0]]
    """

    def sample(self, velocity: Velocity, noise: torch.Tensor, cond: torch.Tensor, neg_cond: Optional[torch.Tensor],
               params: SamplerParams, *, batch_index: Optional[torch.Tensor] = None,
               batch_size: Optional[int] = None, callback: Optional[ProgressCallback] = None,
               velocity_pair: Optional[VelocityPair] = None) -> torch.Tensor:
        """Integrate ``noise`` to a sample.

        Args:
            velocity: ``velocity(x, t, cond) -> v``: the network, with ``t`` a Python float in [0, 1] (the
                caller passes ``1000 t`` to the model, spec 8.1). ``x`` and ``v`` are float32 tensors of the
                latent's shape.
            noise: starting latent ``x_1``.
            cond, neg_cond: the condition and the unconditional (zero) condition; ``neg_cond`` may be None
                when no step needs it.
            params: steps, guidance and time warp.
            batch_index, batch_size: the sparse layout for the rescale statistics (None for dense latents).
            callback: called as ``callback(step, steps)`` after each step (steps counted from 1).
            velocity_pair: optional ``velocity_pair(x, t, cond, neg_cond) -> (v_cond, v_uncond)`` computing both
                predictions in one network call (a batch of two); used on guided steps instead of two calls.
                On a GPU this halves the kernel launches of a guided step; the arithmetic is unchanged.

        Returns:
            ``x_0`` as float32.
        """
        guidance = Guidance.from_params(params)
        ts = euler_timesteps(params.steps, params.rescale_t)
        x = noise.float()
        for i in range(params.steps):
            t, t_prev = ts[i], ts[i + 1]
            g = guidance.strength_at(t)
            if g not in (0.0, 1.0) and neg_cond is None:
                raise ValueError(f"step {i} (t={t:.4f}) is guided with strength {g} but neg_cond is None")
            if g not in (0.0, 1.0) and velocity_pair is not None:
                v_cond, v_uncond = velocity_pair(x, t, cond, neg_cond)
            else:
                v_cond = velocity(x, t, cond) if g != 0.0 else None
                v_uncond = velocity(x, t, neg_cond) if g != 1.0 else None
            v = guidance.combine(x, t, v_cond, v_uncond, batch_index, batch_size)
            x = x - (t - t_prev) * v.float()
            if callback is not None:
                callback(i + 1, params.steps)
        return x

    def sample_views(self, views_velocity: ViewsVelocity, noise: torch.Tensor, num_views: int,
                     params: SamplerParams, mode: str, *, batch_index: Optional[torch.Tensor] = None,
                     batch_size: Optional[int] = None, callback: Optional[ProgressCallback] = None
                     ) -> torch.Tensor:
        """Integrate ``noise`` to a sample conditioned on ``num_views`` views of one object (training-free).

        Args:
            views_velocity: ``views_velocity(x, t, views, unconditional) -> (v_conds, v_uncond)``: the
                conditional prediction for each view index in ``views`` (a list, in that order) and, when
                ``unconditional``, the unconditional one (else None). ``views`` is empty on steps of guidance
                strength 0.
            noise, params, batch_index, batch_size, callback: as `sample`.
            num_views: how many views there are (indices ``0 .. num_views - 1``).
            mode: ``"stochastic"``: step ``i`` is an ordinary guided step conditioned on view
                ``stochastic_schedule(steps, num_views)[i]`` alone. ``"multidiffusion"``: every step asks for
                all views; each view's prediction is guided on its own (`Guidance.combine`, so CFG strength,
                interval and rescale apply per view, all against the one unconditional prediction, which the
                views share because it sees no image) and the step follows the mean of the guided velocities.
                The mean is taken in view order; the pipelines sort the views by content first, so the order
                the user gives them in does not matter.

        Returns:
            ``x_0`` as float32. With one view both modes do exactly what `sample` does.
        """
        check_multiview_mode(mode)
        guidance = Guidance.from_params(params)
        ts = euler_timesteps(params.steps, params.rescale_t)
        schedule = stochastic_schedule(params.steps, num_views)
        x = noise.float()
        for i in range(params.steps):
            t, t_prev = ts[i], ts[i + 1]
            g = guidance.strength_at(t)
            views = [] if g == 0.0 else [schedule[i]] if mode == "stochastic" else list(range(num_views))
            v_conds, v_uncond = views_velocity(x, t, views, g != 1.0)
            if g == 0.0:
                v = v_uncond
            else:
                guided = [guidance.combine(x, t, v_cond, v_uncond, batch_index, batch_size) for v_cond in v_conds]
                v = guided[0]
                for other in guided[1:]:
                    v = v + other
                if len(guided) > 1:
                    v = v / len(guided)
            x = x - (t - t_prev) * v.float()
            if callback is not None:
                callback(i + 1, params.steps)
        return x


def guided_steps(params: SamplerParams) -> int:
    """How many steps of ``params`` run the unconditional pass too (for cost estimates)."""
    guidance = Guidance.from_params(params)
    return sum(guidance.needs_unconditional(t) for t in euler_timesteps(params.steps, params.rescale_t)[:-1])


def network_calls(params: SamplerParams) -> int:
    """Network evaluations one sampling run makes (one per step plus one per guided step)."""
    return params.steps + guided_steps(params)


__all__: Sequence[str] = ["SIGMA_MIN", "MULTIVIEW_MODES", "check_multiview_mode", "stochastic_schedule",
                          "SamplerParams", "euler_timesteps", "x0_from_velocity", "velocity_from_x0",
                          "item_std", "Guidance", "FlowEulerSampler", "guided_steps", "network_calls"]
