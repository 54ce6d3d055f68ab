"""The promotion gate: may the candidate replace the promoted model?

Each rule names one metric and how far it may move the wrong way, measured against the promoted
model on the same test split (both evaluated now, so a changed test split cannot fake a gain):

    retrain.gate.wer: {metric: asr/wer, max_increase: 0.005}      # 0.5 WER points
    retrain.gate.slu_f1: {metric: slu/slu_f1, max_decrease: 0.0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.runtime import PipelineError

# Floating-point noise: the same model evaluated twice may differ in the last bits.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class GateCheck:
    name: str
    metric: str
    rule: str            # max_increase | max_decrease
    limit: float
    candidate: float | None
    incumbent: float | None
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def check_gate(candidate: Mapping[str, Any], incumbent: Mapping[str, Any],
               rules: Mapping[str, Mapping[str, Any]]) -> list[GateCheck]:
    checks = []
    for name, rule in rules.items():
        kinds = [k for k in ("max_increase", "max_decrease") if k in rule]
        if "metric" not in rule or len(kinds) != 1:
            raise PipelineError(f"retrain.gate.{name} must have `metric` and exactly one of "
                                f"max_increase / max_decrease, got {dict(rule)}")
        metric, kind, limit = str(rule["metric"]), kinds[0], float(rule[kinds[0]])
        new, old = _number(candidate.get(metric)), _number(incumbent.get(metric))
        if new is None or old is None:
            which = "candidate" if new is None else "promoted model"
            checks.append(GateCheck(name, metric, kind, limit, new, old, False,
                                    f"{metric} missing or not a number for the {which}"))
            continue
        worse = new - old if kind == "max_increase" else old - new
        passed = worse <= limit + TOLERANCE
        direction = "rose" if kind == "max_increase" else "fell"
        detail = (f"{metric} {old:.4f} -> {new:.4f}: "
                  + (f"{direction} by {worse:.4f}, limit {limit:.4f}" if worse > 0 else "no worse"))
        checks.append(GateCheck(name, metric, kind, limit, new, old, passed, detail))
    return checks
