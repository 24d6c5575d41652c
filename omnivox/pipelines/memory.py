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
   If nothing fits, the plan says so (``fits=False``): `MemoryPlan.check_budget` (or ``plan_memory(...,
   strict=True)``) then raises `BudgetError` saying which stage needs how much and the smallest budget that
   would do, so a run can refuse before any work starts.

Weights are counted in the bytes the models really hold (`omnivox.pipelines.placement.ModelStore.weights_bytes`):
with 8-bit flow weights (``weights_dtype="int8"`` / ``"fp8"``) a 1.3B flow is 1.36 GB instead of 2.63 GB, which
halves what an offloading stage copies and leaves more of a small budget for activations. ``weight_formats``
(role -> ``"int8"``, ``"bfloat16"``, ...) only labels the printed plan.

Working-memory estimates are linear in the token counts; the coefficients were calibrated on the H100
measurements of ``docs/benchmarks/models.md`` (full-size models, bf16 flows, fp16 VAEs) and scale with model
width, so the tiny test models get proportionally tiny estimates. They are estimates: the benchmark
(``docs/benchmarks/pipelines.md``) checks the measured peaks against them.
"""

from __future__ import annotations

import math
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
# Flow calls of at most this many rows replay CUDA graphs in resident runs (the pipelines' cuda_graph_max_tokens).
CUDA_GRAPH_ROWS = 8192


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


class BudgetError(ValueError):
    """A memory budget that no plan meets; the message says which stage needs how much."""


@dataclass
class StagePlan:
    """The planner's choice for one stage: its estimated peak, of which ``weights_bytes`` are weights on the device
    (the stage's own models when offloading, all models otherwise)."""

    name: str
    roles: tuple
    peak_bytes: int
    chunk_voxels: Optional[int] = None
    token_chunk: Optional[int] = None
    weights_bytes: int = 0


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
        notes: why the planner chose what it chose, and warnings.
        weight_formats: role -> how its weights are stored (``"int8"``, ``"bfloat16"``, ...), for printing.
    """

    device: str
    budget_bytes: Optional[int]
    offload: bool
    stages: list
    weights_bytes: dict
    peak_bytes: int
    fits: bool
    notes: list = field(default_factory=list)
    weight_formats: dict = field(default_factory=dict)

    @property
    def required_budget_bytes(self) -> int:
        """The smallest budget under which this plan's estimated peak fits (the peak over `HEADROOM`)."""
        return int(math.ceil(self.peak_bytes / HEADROOM))

    def check_budget(self) -> "MemoryPlan":
        """``self`` if it fits its budget; otherwise raise `BudgetError` naming the stage that does not fit, what
        it needs (weights + work, with the smallest chunks) and the smallest budget that would do."""
        if self.fits:
            return self
        worst = max(self.stages, key=lambda p: p.peak_bytes)
        chunks = ", ".join(f"{k}={v}" for k, v in (("chunk_voxels", worst.chunk_voxels),
                                                    ("token_chunk", worst.token_chunk)) if v)
        roles = (", ".join(self._role_label(r) for r in worst.roles) if self.offload
                 else "every model of the run, resident")
        hint = ""
        unquantized = [r for r in self.weights_bytes if "flow" in r and self.weight_formats.get(r, "") not in
                       ("int8", "fp8")]
        if unquantized and self.weight_formats:
            hint = "; 8-bit flow weights (weights_dtype='int8') halve the flows' share"
        raise BudgetError(
            f"max_memory {format_bytes(self.budget_bytes)} cannot be met on {self.device}: stage {worst.name!r} needs "
            f"about {format_bytes(worst.peak_bytes)} ({format_bytes(worst.weights_bytes)} of weights: {roles}; "
            f"{format_bytes(worst.peak_bytes - worst.weights_bytes)} of work"
            f"{', with ' + chunks if chunks else ''}{', models offloaded' if self.offload else ''}); this run needs a "
            f"budget of at least {format_bytes(self.required_budget_bytes)} (plans keep {100 - HEADROOM * 100:.0f} % "
            f"headroom){hint}")

    def _role_label(self, role: str) -> str:
        fmt = self.weight_formats.get(role)
        size = format_bytes(self.weights_bytes[role]) if role in self.weights_bytes else "?"
        return f"{role} ({fmt + ', ' if fmt else ''}{size})"

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
            lines.append(f"  {s.name:<18} {format_bytes(s.peak_bytes):>10}  {', '.join(map(self._role_label, s.roles))}"
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
                device: str = "cuda", weight_formats: Optional[dict] = None, strict: bool = False) -> MemoryPlan:
    """Choose placement and chunking (module docstring).

    Args:
        stages: the run's stages in order.
        weights_bytes: role -> bytes of that model's weights as held (8-bit flows count their 8-bit bytes).
        budget_bytes: peak device memory allowed (None: unlimited).
        device: the compute device; on ``"cpu"`` there is nothing to offload to, so only chunking applies.
        weight_formats: role -> storage format (``"int8"``, ``"bfloat16"``, ...), shown in the printed plan.
        strict: raise `BudgetError` when no plan fits the budget (`MemoryPlan.check_budget`).

    Returns:
        `MemoryPlan`.
    """
    plan = _plan(stages, weights_bytes, budget_bytes, device)
    plan.weight_formats = dict(weight_formats or {})
    return plan.check_budget() if strict else plan


def _plan(stages: Sequence[StageNeed], weights_bytes: dict, budget_bytes: Optional[int], device: str) -> MemoryPlan:
    used_roles = []
    for need in stages:
        for role in need.roles:
            if role not in weights_bytes:
                raise KeyError(f"stage {need.name!r} uses role {role!r} with no weights size")
            if role not in used_roles:
                used_roles.append(role)
    target = None if budget_bytes is None else int(budget_bytes * HEADROOM)
    all_weights = sum(weights_bytes[r] for r in used_roles)
    on_cpu = str(device).startswith("cpu")
    # Resident plans on a GPU replay CUDA graphs, whose memory pool (about one graphed forward) stays allocated
    # across stages; offloading plans capture none.
    pool = 0 if on_cpu else graph_pool_bytes(stages)
    max_work = max((n.work_bytes for n in stages), default=0)
    notes = []
    if target is None or all_weights + pool + max_work <= target:
        if target is not None:
            notes.append(f"all weights ({format_bytes(all_weights)}) plus the largest stage's work "
                         f"({format_bytes(max_work + pool)}) fit in {HEADROOM:.0%} of the budget: everything stays "
                         "resident")
        plans = [StagePlan(n.name, n.roles, all_weights + pool + n.work_bytes, weights_bytes=all_weights)
                 for n in stages]
        return MemoryPlan(str(device), budget_bytes, False, plans, dict(weights_bytes),
                          max((p.peak_bytes for p in plans), default=all_weights), True, notes)
    # Chunking the largest stages with every model resident costs less time than offloading (no copies, CUDA graphs
    # stay on), so it is tried first; offloading comes next.
    resident, resident_notes = _stage_plans(stages, weights_bytes, None, all_weights + pool, target)
    offload = not on_cpu and max(p.peak_bytes for p in resident) > target
    if on_cpu:
        notes.append("on the CPU the weights stay in host memory; only chunking lowers the peak")
    elif offload:
        notes.append(f"all weights ({format_bytes(all_weights)}) plus the largest stage's work "
                     f"({format_bytes(max_work)}) exceed {HEADROOM:.0%} of the budget ({format_bytes(target)}), even "
                     "with chunking: models stay in host memory and visit the device per stage")
    else:
        notes.append(f"all weights ({format_bytes(all_weights)}) stay resident; the largest stages are chunked to "
                     f"fit {HEADROOM:.0%} of the budget ({format_bytes(target)})")
    if offload:
        plans, stage_notes = _stage_plans(stages, weights_bytes, weights_bytes, 0, target)
    else:
        plans, stage_notes = resident, resident_notes
    notes += stage_notes
    peak = max(p.peak_bytes for p in plans)
    fits = peak <= target
    if not fits:
        worst = max(plans, key=lambda p: p.peak_bytes)
        notes.append(f"stage {worst.name!r} needs about {worst.peak_bytes / GIB:.2f} GiB even with the smallest "
                     f"chunks: a budget of at least {math.ceil(worst.peak_bytes / HEADROOM / GIB * 100) / 100:.2f} "
                     "GiB would be needed")
    return MemoryPlan(str(device), budget_bytes, offload, plans, dict(weights_bytes), peak, fits, notes)


def graph_pool_bytes(stages: Sequence[StageNeed]) -> int:
    """Estimated CUDA-graph memory pool of a resident run: the work of one flow call of `CUDA_GRAPH_ROWS` rows at
    the widest flow's width (0 without flow stages)."""
    per_row = max((n.chunk_unit_bytes for n in stages if n.kind == "flow"), default=0)
    return int(CUDA_GRAPH_ROWS * per_row * FLOW_BYTES_PER_TOKEN_AT_1536 / FLOW_CHUNK_BYTES_PER_ROW_AT_1536)


def _stage_plans(stages: Sequence[StageNeed], weights_bytes: dict, own_weights: Optional[dict], shared: int,
                 target: int) -> tuple[list, list]:
    """Per-stage plans (and notes on chunking) when each stage holds ``shared`` bytes plus, with ``own_weights``
    (offloading), its own models' weights."""
    plans, notes = [], []
    for need in stages:
        weights = shared + (sum(own_weights[r] for r in need.roles) if own_weights is not None else 0)
        peak, chunk_voxels, token_chunk = weights + need.work_bytes, None, None
        if peak > target and need.kind in ("decoder", "flow"):
            peak, chunk_voxels, token_chunk = _chunked(need, weights, target)
            notes.append(f"stage {need.name!r}: {format_bytes(weights + need.work_bytes)} whole; chunked "
                         f"({'chunk_voxels' if chunk_voxels else 'token_chunk'}={chunk_voxels or token_chunk}) "
                         f"{format_bytes(peak)}")
        plans.append(StagePlan(need.name, need.roles, peak, chunk_voxels, token_chunk, weights))
    return plans, notes
