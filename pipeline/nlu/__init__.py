"""Joint intent classification and BIO entity tagging (the `nlu` stage)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.nlu.model import NLUModel

__all__ = ["NLUModel"]


def __getattr__(name: str) -> Any:
    # NLUModel is loaded on first use: the config checks import pipeline.nlu.config without torch
    if name == "NLUModel":
        from pipeline.nlu.model import NLUModel

        return NLUModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
