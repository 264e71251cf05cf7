"""The user-facing model class (AnnData in, arrays and AnnData out): outputs, reference
mapping and persistence."""

from scarkids.model.scarkids import SCARKIDS

__all__ = ["SCARKIDS"]
