"""Vendor file formats: declarative TOML files, not code.

Built-in formats live in ``builtin/``; a user adds one by writing a TOML file
into ``K2_FORMATS_DIR`` (or passing its path to ``--format``). See docs/ingestion.md
for the keys; :mod:`k2_etl.formats.model` validates them.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from k2_etl.errors import ConfigError
from k2_etl.formats.model import Format, RecordSpec

__all__ = ["Format", "RecordSpec", "available_formats", "exchange_zones", "load_format"]


def _builtin_dir() -> Path:
    return Path(str(resources.files(__package__).joinpath("builtin")))


def _search_dirs(formats_dir: Path | None) -> list[Path]:
    return ([formats_dir] if formats_dir else []) + [_builtin_dir()]


def available_formats(formats_dir: Path | None = None) -> dict[str, Path]:
    """Format name -> file; a user's file shadows a built-in of the same name."""
    found: dict[str, Path] = {}
    for folder in reversed(_search_dirs(formats_dir)):
        if folder.is_dir():
            found.update({p.stem: p for p in sorted(folder.glob("*.toml"))})
    return found


def read_format(path: Path) -> Format:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Format.model_validate(data)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"format file {path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'format'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(f"format file {path}: {problems}") from None


def load_format(name_or_path: str, formats_dir: Path | None = None) -> Format:
    """A format by name (user formats first, then built-in) or by path to a .toml file."""
    if name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"format file {path} does not exist")
        return read_format(path)
    formats = available_formats(formats_dir)
    if name_or_path not in formats:
        raise ConfigError(f"unknown format {name_or_path!r}; known formats: {', '.join(sorted(formats))}")
    return read_format(formats[name_or_path])


def exchange_zones(formats_dir: Path | None = None) -> dict[str, str]:
    """Each exchange's time zone, as the formats declare it (``exchange_timezones``, or the
    ``timezone`` of a format of one constant ``exchange``): the zone its trading days, and bars
    in ``tz=exchange``, go by. Formats are read in name order; the first to name an exchange wins."""
    zones: dict[str, str] = {}
    for path in available_formats(formats_dir).values():
        fmt = read_format(path)
        for exchange, zone in fmt.exchange_timezones.items():
            zones.setdefault(exchange, zone)
        if fmt.exchange is not None:
            zones.setdefault(fmt.exchange, fmt.timezone)
    return zones
