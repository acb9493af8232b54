"""Settings of the report stage (:func:`tupac.report.html.build_report`): one frozen dataclass,
validated at construction."""

from __future__ import annotations

from dataclasses import dataclass

from tupac.config_check import option
from tupac.errors import ConfigError

__all__ = ["ReportOptions"]


@dataclass(frozen=True)
class ReportOptions:
    """Options of the report stage; each field's description is its ``help``
    (:func:`tupac.config_check.option`)."""

    max_side: int = option(640, help="Longer side of the slide thumbnails in pixels.")
    n_boot: int = option(2000, help="Bootstrap resamples of the kappa / Spearman confidence intervals.")

    def __post_init__(self) -> None:
        for name in ("max_side", "n_boot"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
