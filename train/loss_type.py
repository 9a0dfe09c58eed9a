"""The loss kinds (`--loss`), apart from the loss maths so that kto-train's flags and config
load without torch: the command checks its paths before that import (train/cli.py)."""

from __future__ import annotations

import enum


class LossType(enum.Enum):
    KTO = "kto"
    APO_ZERO_UNPAIRED = "apo_zero_unpaired"

    @property
    def needs_kl(self) -> bool:
        return self is LossType.KTO
