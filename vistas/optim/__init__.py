"""Optimizers: per-parameter rules, schedules and the optax optimizer builder.

See `vistas.optim.builder` for the update rule, notably the weight decay that is
DECOUPLED from the learning rate (big_vision / "Scaling Vision Transformers").
"""

from vistas.optim.builder import OPTIMIZERS, build_optimizer, current_lr, frozen_labels
from vistas.optim.rules import describe, match_rules, path_str, unused_rules
from vistas.optim.schedules import DECAYS, make_schedule, parse_duration

__all__ = [
    "DECAYS",
    "OPTIMIZERS",
    "build_optimizer",
    "current_lr",
    "describe",
    "frozen_labels",
    "make_schedule",
    "match_rules",
    "parse_duration",
    "path_str",
    "unused_rules",
]
