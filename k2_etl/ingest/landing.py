"""The landing folder: where vendor files wait for their daily load.

Layout: ``<K2_LANDING>/<format>/<YYYY-MM-DD>/...``. The format folder names how to read
the files (a format of ``k2 formats``), the date folder is the trading date they hold: the
day the daily load loads for its run's data interval. Files anywhere below the date folder
count; names starting with ``.`` or ``_``, or ending in ``.tmp``, ``.part`` or ``.partial``,
are transfers in progress (or markers such as ``_SUCCESS``) and are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from k2_etl.config import Settings
from k2_etl.errors import ConfigError
from k2_etl.formats import load_format

IN_PROGRESS = (".tmp", ".part", ".partial")


def landing_folder(settings: Settings) -> Path:
    assert settings.landing is not None  # set from K2_HOME when not configured
    return settings.landing


def day_files(settings: Settings, day: date, formats: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """The files waiting for ``day``, by format (only formats with files; ``formats``: only these).

    Raises ConfigError naming a format folder that is not a known format.
    """
    root = landing_folder(settings)
    names = list(formats) if formats is not None else sorted(p.name for p in root.iterdir() if p.is_dir()) \
        if root.is_dir() else []  # fmt: skip
    found: dict[str, list[Path]] = {}
    for name in names:
        folder = root / name / day.isoformat()
        files = sorted(p for p in folder.rglob("*") if p.is_file() and _ready(p)) if folder.is_dir() else []
        if not files:
            continue
        try:
            load_format(name, settings.formats_dir)
        except ConfigError as exc:
            raise ConfigError(f"landing folder {root / name}: {exc}") from None
        found[name] = files
    return found


def _ready(path: Path) -> bool:
    return not path.name.startswith((".", "_")) and not path.name.endswith(IN_PROGRESS)


@dataclass
class DayLoad:
    """What loading a day's files did: per format, the loader's report (as ``k2 load --json``)."""

    day: date
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def files(self) -> list[dict[str, Any]]:
        return [f for report in self.reports.values() for f in report["files"]]

    @property
    def ok(self) -> bool:
        return all(report["ok"] for report in self.reports.values())

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "ok": self.ok, "reports": self.reports}


def load_day(settings: Settings, day: date, files: dict[str, list[Path]], *, force: bool = False) -> DayLoad:
    """Load ``files`` (from :func:`day_files`) with ``day`` as their trading date. Files already
    loaded are skipped (the load manifest), so loading a day again produces nothing new."""
    from k2_etl.ingest.loader import Loader

    done = DayLoad(day)
    for name, paths in sorted(files.items()):
        loader = Loader(settings, load_format(name, settings.formats_dir), load_date=day, force=force)
        try:
            done.reports[name] = loader.load(paths).to_dict()
        finally:
            loader.close()
    return done
