"""Classical baselines returning probcat's catalog types."""

from probcat.baselines.sep import SepConfig, sep_detect

__all__ = ["SepConfig", "sep_detect"]
