"""Format files: the shipped ones are valid, and a broken one is one clear error."""

from __future__ import annotations

from pathlib import Path, PurePath

import pytest

from k2_etl.errors import ConfigError
from k2_etl.formats import available_formats, load_format


def test_builtin_formats_load_and_match_their_files() -> None:
    assert set(available_formats()) >= {"k2", "asx"}
    k2 = load_format("k2")
    assert k2.spec_for(PurePath("in/2026-11-02/trades_ASX.csv")).type == "trade"  # type: ignore[union-attr]
    assert k2.spec_for(PurePath("quotes_CXA.csv.gz")).type == "quote"  # type: ignore[union-attr]
    assert k2.spec_for(PurePath("reference_data.csv")).type == "reference_data"  # type: ignore[union-attr]
    assert k2.spec_for(PurePath("notes.txt")) is None
    asx = load_format("asx")
    assert asx.spec_for(PurePath("land/asx/2026-11-02/trades/7001.csv")).type == "trade"  # type: ignore[union-attr]
    assert asx.spec_for(PurePath("land/asx/company_info.csv")).type == "reference_data"  # type: ignore[union-attr]
    assert asx.timezone == "Australia/Sydney" and asx.symbol_from_file_name is not None


def test_user_format_dir_shadows_builtin(tmp_path: Path) -> None:
    (tmp_path / "k2.toml").write_text((Path(__file__).parents[2] / "k2_etl/formats/builtin/asx.toml").read_text())
    assert load_format("k2", tmp_path).name == "asx"  # the user's file wins


REF = 'type = "reference_data"\nmatch = ["*"]\ncolumns = ["s"]\nfields = {symbol = "s"}\n'
TRADE = 'type = "trade"\nmatch = ["*"]\n'


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('name = "v"\n[[record]]\n' + TRADE + 'columns = ["p"]\nfields = {price = "p"}\n', "size"),
        ('name = "v"\ntimezone = "Mars/Olympus"\n[[record]]\n' + REF, "Mars/Olympus"),
        ('name = "v"\n[[record]]\n' + TRADE + 'columns = ["p", "q"]\nfields = {price = "p", size = "zz"}\n', "zz"),
        ('name = "v"\nunknown_key = 1\n[[record]]\n' + REF, "unknown_key"),
        ("name = [broken", "format file"),
    ],
)
def test_broken_format_files(tmp_path: Path, toml: str, needle: str) -> None:
    path = tmp_path / "vendor.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_format(str(path))
    assert needle in str(info.value) and str(path) in str(info.value)


def test_unknown_format_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown format 'nope'; known formats: asx, k2"):
        load_format("nope")
