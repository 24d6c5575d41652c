"""The memory planner: from a budget, model sizes and token counts to per-stage placement and chunking.

A generation runs stages one after another (condition -> sparse structure -> shape latent(s) -> material latent
-> decoding). Each stage needs its models' weights on the compute device plus working memory that grows with its
token count. `plan_memory` is a pure function of those numbers, so it is tested without a GPU:

1. Everything resident (fastest): all models stay on the device; peak = all weights + the largest stage's work.
   Chosen when there is no budget or it fits (plans aim at `HEADROOM` = 90 % of the budget).
2. Otherwise offload: models live in host memory and each stage moves only its own models to the device and
   drops them afterwards (spec 9.5 "low_vram", here decided by the planner, not a flag); peak = the largest
   ``stage weights + stage work``.
3. Where a stage still exceeds the budget:
   * decoders get ``chunk_voxels`` (spatial chunks of the last two stages, `omnivox.models.sc_vae_chunks`),
     the largest of `CHUNK_VOXEL_CHOICES` that fits;
   * flow transformers get feed-forward / attention chunking over tokens (``token_chunk`` rows at a time,
     `omnivox.models.flow` ``token_chunk=``), which bounds the per-token temporaries.
   If nothing fits, the plan says so (``fits=False``) and the run proceeds with the smallest settings.

Working-memory estimates are linear in the token counts; the coefficients were calibrated on the H100
measurements of ``docs/benchmarks/models.md`` (full-size models, bf16 flows, fp16 VAEs) and scale with model
width, so the tiny test models get proportionally tiny estimates. They are estimates: the benchmark
(``docs/benchmarks/pipelines.md``) checks the measured peaks against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

GIB = 1 << 30
# Plans aim at this fraction of the budget: the CUDA context, allocator fragmentation and small tensors the
# estimates leave out take the rest.
HEADROOM = 0.9
CHUNK_VOXEL_CHOICES = (262_144, 131_072, 65_536)
TOKEN_CHUNK_CHOICES = (16_384, 8_192, 4_096)

# Calibration (H100, full-size models): a 1.3B flow call holds ~64 KB per token at width 1536 (measured 0.69 GiB
# for 11,242 tokens and 1.5 GiB for 25,397 in docs/benchmarks/pipelines.md); the SC-VAE decoders (shape, then
# material guided by it) peak at ~380 KB per latent token (4.0 GiB for 11,242 tokens at 1024, 9.0 GiB for 25,397
# at 1536), ~40 % of that with chunk_voxels (docs/benchmarks/models.md: 4.69 -> 1.89 GiB, the stages before the
# chunked tail) plus ~4.6 KB per tail voxel of a chunk (the tail at 512^3 held 4.69 GiB for 1.09 M voxels).
FLOW_BYTES_PER_TOKEN_AT_1536 = 64_000
FLOW_CHUNKED_BYTES_PER_TOKEN_AT_1536 = 24_000  # residual stream, q/k/v and norms stay whole
FLOW_CHUNK_BYTES_PER_ROW_AT_1536 = 40_000
PREPARED_CONDITION_BYTES_PER_TOKEN_AT_1536 = 2 * 1536 * 2 * 30  # bf16 keys and values of 30 blocks
DECODER_BYTES_PER_TOKEN_AT_1024 = 400_000
DECODER_CHUNKED_BYTES_PER_TOKEN_AT_1024 = 170_000
DECODER_TAIL_BYTES_PER_VOXEL_AT_1024 = 7_000  # 4.6 KB times ~1.5 for the halo
ENCODER_BYTES_PER_TOKEN_AT_1024 = 210_000
IMAGE_ENCODER_BYTES_PER_TOKEN_AT_1024 = 48_000
SS_DECODER_BYTES = 160 << 20


@dataclass(frozen=True)
class StageNeed:
    """What one stage needs.

    Attributes:
        name: stage name (``"condition"``, ``"sparse_structure"``, ``"shape_slat"``, ``"decode"``, ...).
        roles: the model roles it runs.
        kind: ``"flow"``, ``"decoder"``, ``"encoder"`` or ``"other"`` (which chunking applies).
        work_bytes: working memory without chunking.
        chunked_work_bytes: for flows and decoders, the part of the work chunking cannot remove.
        chunk_unit_bytes: bytes per chunk unit (token row for flows, tail voxel for decoders).
    """

    name: str
    roles: tuple
    kind: str
    work_bytes: int
    chunked_work_bytes: int = 0
    chunk_unit_bytes: int = 0


@dataclass
class StagePlan:
    """The planner's choice for one stage."""

    name: str
    roles: tuple
    peak_bytes: int
    chunk_voxels: Optional[int] = None
    token_chunk: Optional[int] = None


@dataclass
class MemoryPlan:
    """Per-stage placement and chunking, printable.

    Attributes:
        device: compute device (``"cuda"``, ``"cuda:1"``, ``"cpu"``).
        budget_bytes: the budget (None: unlimited).
        offload: models live in host memory and visit the device per stage.
        stages: one `StagePlan` per stage, in run order.
        weights_bytes: role -> bytes of weights.
        peak_bytes: the estimated peak over the run.
        fits: whether ``peak_bytes`` is within `HEADROOM` of ``budget_bytes`` (True without a budget).
    """

    device: str
    budget_bytes: Optional[int]
    offload: bool
    stages: list
    weights_bytes: dict
    peak_bytes: int
    fits: bool
    notes: list = field(default_factory=list)

    def stage(self, name: str) -> StagePlan:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r} in the plan (stages: {[s.name for s in self.stages]})")

    def __str__(self) -> str:
        budget = "unlimited" if self.budget_bytes is None else format_bytes(self.budget_bytes)
        mode = "offload (models visit the device per stage)" if self.offload else "all models resident"
        lines = [f"memory plan on {self.device}: budget {budget}, {mode}, estimated peak "
                 f"{format_bytes(self.peak_bytes)}{'' if self.fits else ' (OVER BUDGET)'}"]
        for s in self.stages:
            extra = []
            if s.chunk_voxels:
                extra.append(f"chunk_voxels={s.chunk_voxels}")
            if s.token_chunk:
                extra.append(f"token_chunk={s.token_chunk}")
            lines.append(f"  {s.name:<18} {format_bytes(s.peak_bytes):>10}  {', '.join(s.roles)}"
                         + (f"  [{', '.join(extra)}]" if extra else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def format_bytes(count: int) -> str:
    return f"{count / GIB:.2f} GiB" if count >= GIB // 10 else f"{count / (1 << 20):.1f} MiB"


def parse_memory(value) -> Optional[int]:
    """``"16GB"``, ``"16GiB"``, ``"800MB"``, ``"16"`` (GiB) or an int of bytes -> bytes; None stays None.

    Decimal and binary suffixes both mean powers of 1024 (as GPU tools report them).
    """
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        if isinstance(value, int) and value <= 0:
            raise ValueError(f"max_memory must be positive, got {value}")
        return value
    if isinstance(value, float):
        return parse_memory(f"{value}GB")
    text = str(value).strip().upper().replace(" ", "")
    units = {"TIB": 1 << 40, "TB": 1 << 40, "GIB": GIB, "GB": GIB, "G": GIB, "MIB": 1 << 20, "MB": 1 << 20,
             "M": 1 << 20}
    for suffix, scale in units.items():
        if text.endswith(suffix):
            number = text[: -len(suffix)]
            break
    else:
        number, scale = text, GIB
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"max_memory {value!r}: expected a size such as '16GB', '800MB' or a number of GiB") from None
    if amount <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return int(amount * scale)


# --------------------------------------------------------------------------------------------- estimates
def flow_stage(name: str, roles: Sequence[str], tokens: int, width: int = 1536, cond_tokens: int = 0) -> StageNeed:
    """A flow-sampling stage over ``tokens`` tokens (all batch items together) at model width ``width``, whose
    conditional samples hold ``cond_tokens`` image tokens together (their prepared keys and values stay on the
    device for the whole stage, `omnivox.models.flow.PreparedCondition`; not when the tokens are chunked)."""
    scale = width / 1536
    prepared = cond_tokens * PREPARED_CONDITION_BYTES_PER_TOKEN_AT_1536 * scale
    return StageNeed(name, tuple(roles), "flow", int(tokens * FLOW_BYTES_PER_TOKEN_AT_1536 * scale + prepared),
                     int(tokens * FLOW_CHUNKED_BYTES_PER_TOKEN_AT_1536 * scale),
                     int(FLOW_CHUNK_BYTES_PER_ROW_AT_1536 * scale))


def decoder_stage(name: str, roles: Sequence[str], tokens: int, width: int = 1024) -> StageNeed:
    """Decoding ``tokens`` latent tokens with SC-VAE decoders whose widest stage has ``width`` channels."""
    scale = width / 1024
    return StageNeed(name, tuple(roles), "decoder", int(tokens * DECODER_BYTES_PER_TOKEN_AT_1024 * scale),
                     int(tokens * DECODER_CHUNKED_BYTES_PER_TOKEN_AT_1024 * scale),
                     int(DECODER_TAIL_BYTES_PER_VOXEL_AT_1024 * scale))


def encoder_stage(name: str, roles: Sequence[str], tokens: int, width: int = 1024) -> StageNeed:
    return StageNeed(name, tuple(roles), "encoder", int(tokens * ENCODER_BYTES_PER_TOKEN_AT_1024 * width / 1024))


def image_encoder_stage(roles: Sequence[str], tokens: int, width: int = 1024) -> StageNeed:
    work = int(tokens * IMAGE_ENCODER_BYTES_PER_TOKEN_AT_1024 * width / 1024)
    return StageNeed("condition", tuple(roles), "other", work)


def ss_decoder_stage(roles: Sequence[str], scale: float = 1.0) -> StageNeed:
    return StageNeed("ss_decode", tuple(roles), "other", int(SS_DECODER_BYTES * scale))


# ----------------------------------------------------------------------------------------------- planner
def _chunked(need: StageNeed, weights: int, budget: int) -> tuple[int, Optional[int], Optional[int]]:
    """(peak, chunk_voxels, token_chunk) for a stage that does not fit whole."""
    choices = CHUNK_VOXEL_CHOICES if need.kind == "decoder" else TOKEN_CHUNK_CHOICES
    best = None
    for chunk in choices:
        peak = weights + min(need.work_bytes, need.chunked_work_bytes + chunk * need.chunk_unit_bytes)
        best = (peak, chunk)
        if peak <= budget:
            break
    peak, chunk = best
    return (peak, chunk, None) if need.kind == "decoder" else (peak, None, chunk)


def plan_memory(stages: Sequence[StageNeed], weights_bytes: dict, budget_bytes: Optional[int] = None,
                device: str = "cuda") -> MemoryPlan:
    """Choose placement and chunking (module docstring).

    Args:
        stages: the run's stages in order.
        weights_bytes: role -> bytes of that model's weights at its runtime dtypes.
        budget_bytes: peak device memory allowed (None: unlimited).
        device: the compute device; on ``"cpu"`` there is nothing to offload to, so only chunking applies.

    Returns:
        `MemoryPlan`.
    """
    used_roles = []
    for need in stages:
        for role in need.roles:
            if role not in weights_bytes:
                raise KeyError(f"stage {need.name!r} uses role {role!r} with no weights size")
            if role not in used_roles:
                used_roles.append(role)
    target = None if budget_bytes is None else int(budget_bytes * HEADROOM)
    all_weights = sum(weights_bytes[r] for r in used_roles)
    max_work = max((n.work_bytes for n in stages), default=0)
    on_cpu = str(device).startswith("cpu")
    notes = []
    if target is None or all_weights + max_work <= target:
        plans = [StagePlan(n.name, n.roles, all_weights + n.work_bytes) for n in stages]
        return MemoryPlan(str(device), budget_bytes, False, plans, dict(weights_bytes),
                          max((p.peak_bytes for p in plans), default=all_weights), True, notes)
    offload = not on_cpu
    if on_cpu:
        notes.append("on the CPU the weights stay in host memory; only chunking lowers the peak")
    plans = []
    for need in stages:
        weights = sum(weights_bytes[r] for r in need.roles) if offload else all_weights
        peak, chunk_voxels, token_chunk = weights + need.work_bytes, None, None
        if peak > target and need.kind in ("decoder", "flow"):
            peak, chunk_voxels, token_chunk = _chunked(need, weights, target)
        plans.append(StagePlan(need.name, need.roles, peak, chunk_voxels, token_chunk))
    peak = max(p.peak_bytes for p in plans)
    fits = peak <= target
    if not fits:
        worst = max(plans, key=lambda p: p.peak_bytes)
        notes.append(f"stage {worst.name!r} needs about {worst.peak_bytes / GIB:.2f} GiB even with the smallest "
                     "chunks; the run goes ahead with them")
    return MemoryPlan(str(device), budget_bytes, offload, plans, dict(weights_bytes), peak, fits, notes)
