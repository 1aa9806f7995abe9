"""The boards' words: Vietnamese by default, English with OPSCENTRE_DASHBOARD_LANGUAGE=en.

Every title, axis label, legend, description and unit text of a board goes through a `Texts`.
Boards are written in English; each English text is the key of its Vietnamese one, in COMMON
below or in the board's own catalogue. A text without a Vietnamese entry fails the build, so a
Vietnamese board never shows a stray English word.
"""

from __future__ import annotations

from collections.abc import Mapping

from grafana_foundation_sdk.models import units

LANGUAGES = ("vi", "en")

# Texts more than one board uses.
COMMON: dict[str, str] = {
    "Operations": "Điều hành",
    "Information security": "An toàn thông tin",
    "Platform": "Vận hành hệ thống",
    "Boards": "Bảng điều khiển",
    "All": "Tất cả",
    "Up": "Hoạt động",
    "Down": "Ngừng",
    "Connected": "Đã kết nối",
    "Disconnected": "Mất kết nối",
}

# Grafana's own unit names are English ("req/s", "ops/s"); rates use a suffix in the board's
# language instead. Durations and plain numbers use Grafana's units, which read alike in both.
_UNITS: dict[str, dict[str, str]] = {
    "per_second": {"vi": "suffix:/giây", "en": "suffix:/s"},
    "per_minute": {"vi": "suffix:/phút", "en": "suffix:/min"},
    "seconds": {"vi": units.Seconds, "en": units.Seconds},
    "count": {"vi": units.LocaleFormat, "en": units.LocaleFormat},
    "short": {"vi": units.Short, "en": units.Short},
    "share": {"vi": units.PercentUnit, "en": units.PercentUnit},
    "hours": {"vi": "h", "en": "h"},
}


class Texts:
    """`texts("English text")` -> the text in the board's language."""

    def __init__(self, language: str, *catalogues: Mapping[str, str]) -> None:
        if language not in LANGUAGES:
            raise ValueError(f"dashboard language {language!r}: one of {', '.join(LANGUAGES)}")
        self.language = language
        self._vietnamese: dict[str, str] = dict(COMMON)
        for catalogue in catalogues:
            self._vietnamese.update(catalogue)

    def __call__(self, english: str) -> str:
        if self.language == "en":
            return english
        try:
            return self._vietnamese[english]
        except KeyError:
            raise KeyError(f"no Vietnamese text for {english!r}: add it to the board's catalogue") from None

    def unit(self, name: str) -> str:
        return _UNITS[name][self.language]

    def with_catalogue(self, catalogue: Mapping[str, str]) -> Texts:
        return Texts(self.language, self._vietnamese, catalogue)
