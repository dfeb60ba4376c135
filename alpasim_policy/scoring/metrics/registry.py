"""The metric protocol and registry: each sub-metric is one ``compute(ctx) -> MetricResult``; PDMS / EPDMS are derived from the entries' roles and weights.

Why: scores used to be wired by hand in ``openloop.py`` and PDMS / EPDMS repeated each other. An
entry says what a metric is (a multiplier of a score, or a weighted term with a weight per score),
so adding or re-weighting a metric is one line here (Waymax's ``compute(state) ->
MetricResult(value, valid)`` idea, with the roles NAVSIM's aggregation needs).

EP is in the registry like the others but needs the whole batch (or a reference) to normalise its
raw progress, so its ``compute`` reads what :func:`compute_all` has already filled in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from alpasim_policy.scoring.metrics import comfort as C
from alpasim_policy.scoring.metrics._common import AgentWindow, EgoGeometry
from alpasim_policy.scoring.metrics.dac import drivable_area_compliance
from alpasim_policy.scoring.metrics.ddc import driving_direction_compliance
from alpasim_policy.scoring.metrics.ec import extended_comfort
from alpasim_policy.scoring.metrics.ep import ego_progress, raw_progress
from alpasim_policy.scoring.metrics.lk import lane_keeping
from alpasim_policy.scoring.metrics.nc import Contacts, first_contacts, no_at_fault_collisions
from alpasim_policy.scoring.metrics.tlc import traffic_light_compliance
from alpasim_policy.scoring.metrics.ttc import time_to_collision


@dataclass(frozen=True)
class MetricResult:
    """One metric over B proposals: ``value`` (B,) and ``valid`` (B,) -- False where the metric
    could not be evaluated and ``value`` is its neutral 1 (e.g. EC without a previous plan)."""

    value: np.ndarray
    valid: np.ndarray

    @classmethod
    def of(cls, value: np.ndarray, valid: bool | np.ndarray = True) -> MetricResult:
        v = np.asarray(value, dtype=np.float64)
        return cls(v, np.broadcast_to(np.asarray(valid, bool), v.shape).copy())


@dataclass
class MetricContext:
    """Everything a metric may read for one batch of simulated proposals."""

    ego: EgoGeometry
    win: AgentWindow
    dt: float = 0.1
    history: np.ndarray | None = None  # (H, 7|9) logged past for HC
    previous: np.ndarray | None = None  # (B|1, S', 7|9) previous plan's states for EC
    previous_offset: int = 0  # steps the previous plan started earlier
    #: EP normalisation: (progress, multiplier) of the reference, or None -> the batch's best
    ep_reference: tuple[float, float] | None = None
    results: dict[str, MetricResult] = field(default_factory=dict)

    @cached_property
    def contacts(self) -> Contacts:
        return first_contacts(self.ego, self.win)

    @cached_property
    def progress(self) -> np.ndarray:
        return raw_progress(self.ego.world, self.ego.center)

    @property
    def rear_axle_to_center(self) -> float:
        return float(self.ego.world.rear_axle_to_center)


@dataclass(frozen=True)
class MetricSpec:
    """A registry entry. ``weights`` maps score name -> weight; for a multiplier the weight is
    unused (1) and the keys say which scores it multiplies."""

    name: str
    role: str  # "multiplier" | "weighted"
    weights: Mapping[str, float]
    compute: Callable[[MetricContext], MetricResult]
    doc: str = ""


def _nc(ctx: MetricContext) -> MetricResult:
    return MetricResult.of(no_at_fault_collisions(ctx.ego, ctx.win, contacts=ctx.contacts))


def _dac(ctx: MetricContext) -> MetricResult:
    return MetricResult.of(drivable_area_compliance(ctx.ego))


def _ddc(ctx: MetricContext) -> MetricResult:
    return MetricResult.of(driving_direction_compliance(ctx.ego, ctx.dt))


def _tlc(ctx: MetricContext) -> MetricResult:
    return MetricResult.of(traffic_light_compliance(ctx.ego, ctx.win))


def _ttc(ctx: MetricContext) -> MetricResult:
    return MetricResult.of(time_to_collision(ctx.ego, ctx.win, ctx.dt))


def _c(ctx: MetricContext) -> MetricResult:
    shift = ctx.ego.profile.centre_shift
    return MetricResult.of(C.comfort(ctx.ego.states, ctx.dt, ctx.rear_axle_to_center, shift))


def _hc(ctx: MetricContext) -> MetricResult:
    shift = ctx.ego.profile.centre_shift
    no_history = ctx.history is None or len(ctx.history) == 0
    if no_history and ctx.ego.profile.hc_needs_history:
        return MetricResult.of(np.ones(ctx.ego.shape[0]), False)
    if no_history and "C" in ctx.results:  # HC of a trajectory without a past is its C
        return ctx.results["C"]
    return MetricResult.of(
        C.history_comfort(ctx.ego.states, ctx.history, ctx.dt, ctx.rear_axle_to_center, shift)
    )


def _lk(ctx: MetricContext) -> MetricResult:
    return MetricResult.of(lane_keeping(ctx.ego, ctx.dt))


def _ec(ctx: MetricContext) -> MetricResult:
    value = extended_comfort(ctx.ego.states, ctx.previous, ctx.dt, ctx.previous_offset)
    return MetricResult.of(value, ctx.previous is not None)


def _ep(ctx: MetricContext) -> MetricResult:
    mult = multiplier(ctx.results, "EPDMS")
    prog = ctx.progress
    if ctx.ep_reference is None:  # NAVSIM's score_proposals: the best safe progress of the batch
        ref_prog, ref_mult = (float(np.max(prog * mult)) if len(prog) else 0.0), 1.0
    else:
        ref_prog, ref_mult = ctx.ep_reference
    return MetricResult.of(ego_progress(prog, mult, ref_prog, ref_mult))


#: order matters: multipliers first (EP reads them), C before HC (HC reuses it without a history);
#: the weighted terms of each score are summed in this order (NAVSIM's)
REGISTRY: tuple[MetricSpec, ...] = (
    MetricSpec("NC", "multiplier", {"PDMS": 1, "EPDMS": 1}, _nc, "no at-fault collisions {0, 1/2, 1}"),
    MetricSpec("DAC", "multiplier", {"PDMS": 1, "EPDMS": 1}, _dac, "drivable-area compliance {0, 1}"),
    MetricSpec("DDC", "multiplier", {"EPDMS": 1}, _ddc, "driving-direction compliance {0, 1/2, 1}"),
    MetricSpec("TLC", "multiplier", {"EPDMS": 1}, _tlc, "traffic-light compliance {0, 1}"),
    MetricSpec("EP", "weighted", {"PDMS": 5.0, "EPDMS": 5.0}, _ep, "ego progress [0, 1]"),
    MetricSpec("TTC", "weighted", {"PDMS": 5.0, "EPDMS": 5.0}, _ttc, "time to collision within bound {0, 1}"),
    MetricSpec("C", "weighted", {"PDMS": 2.0}, _c, "comfort {0, 1}"),
    MetricSpec("LK", "weighted", {"EPDMS": 2.0}, _lk, "lane keeping {0, 1}"),
    MetricSpec("HC", "weighted", {"EPDMS": 2.0}, _hc, "history comfort {0, 1}"),
    MetricSpec("EC", "weighted", {"EPDMS": 2.0}, _ec, "extended comfort {0, 1}"),
)
BY_NAME: dict[str, MetricSpec] = {m.name: m for m in REGISTRY}
SCORES = ("PDMS", "EPDMS")
SUB_METRICS = tuple(m.name for m in REGISTRY)


def multipliers_of(score: str) -> tuple[str, ...]:
    return tuple(m.name for m in REGISTRY if m.role == "multiplier" and score in m.weights)


def weights_of(score: str) -> dict[str, float]:
    return {m.name: float(m.weights[score]) for m in REGISTRY if m.role == "weighted" and score in m.weights}


def _values(m: Mapping[str, MetricResult | np.ndarray], k: str) -> np.ndarray:
    v = m[k]
    return np.asarray(v.value if isinstance(v, MetricResult) else v, dtype=np.float64)


def multiplier(m: Mapping[str, MetricResult | np.ndarray], score: str = "EPDMS") -> np.ndarray:
    """Product of the score's multiplier metrics (B,)."""
    return np.prod([_values(m, k) for k in multipliers_of(score)], axis=0)


def score(m: Mapping[str, MetricResult | np.ndarray], name: str) -> np.ndarray:
    """A score from sub-metrics: product of its multipliers x weighted mean of its terms."""
    w = weights_of(name)
    total = sum(v * _values(m, k) for k, v in w.items()) / sum(w.values())
    return multiplier(m, name) * total


def compute_all(ctx: MetricContext, names: tuple[str, ...] = SUB_METRICS) -> dict[str, MetricResult]:
    """Run the registry's metrics (in registry order) into ``ctx.results`` and return it."""
    for spec in REGISTRY:
        if spec.name in names:
            ctx.results[spec.name] = spec.compute(ctx)
    return ctx.results
