"""Graph side: load, locate the target and score, differentiate, augment."""
from .augment import augment, list_targets
from .locate import TargetInfo

__all__ = ["augment", "list_targets", "TargetInfo"]
