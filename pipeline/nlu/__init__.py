"""Joint intent classification and BIO entity tagging (the `nlu` stage)."""

from pipeline.nlu.model import NLUModel

__all__ = ["NLUModel"]
