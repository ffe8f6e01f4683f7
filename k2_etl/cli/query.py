"""``k2 query trades|quotes|bars|summary``: the API's queries on the terminal, as JSON, or every page to a file."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from k2_etl.cli._output import JsonFlag, out, print_json
from k2_etl.config import load_settings
from k2_etl.errors import QueryError

if TYPE_CHECKING:
    import pyarrow as pa

app = typer.Typer(
    help="Query the tables like the REST API does: a table on the terminal, --json, or every page to a file.",
    no_args_is_help=True,
)

Symbols = Annotated[list[str], typer.Argument(help="Symbol(s), e.g. BHP CBA (or BHP,CBA).", show_default=False)]
StartOpt = Annotated[str | None, typer.Option("--start", help="From (ISO-8601 or epoch); default: a day before end.")]
EndOpt = Annotated[str | None, typer.Option("--end", help="To, exclusive (ISO-8601 or epoch); default: now.")]
ExchangeOpt = Annotated[str | None, typer.Option("--exchange", help="Only this exchange, e.g. ASX.")]
AsOfOpt = Annotated[str | None, typer.Option("--as-of", help="Read the tables as they were at this time.")]
SnapshotOpt = Annotated[int | None, typer.Option("--snapshot-id", help="Read this snapshot (time travel).")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Write every page to this file: .parquet, else CSV (with a progress bar).")
]
LimitOpt = Annotated[int, typer.Option("--limit", help="Rows on the terminal or in --json (1..50,000).")]
CursorOpt = Annotated[str | None, typer.Option("--cursor", help="Go on after a previous page (its next cursor).")]


def _time_args(start: str | None, end: str | None, as_of: str | None) -> dict[str, Any]:
    from k2_etl.instants import default_range, parse_time

    begin, finish = default_range(parse_time("--start", start) if start else None,
                                  parse_time("--end", end) if end else None, names=("--start", "--end"))  # fmt: skip
    return {"start": begin, "end": finish, "as_of": parse_time("--as-of", as_of) if as_of else None}


def _show(result: Any, json_output: bool, out_file: Path | None, walk: Callable[[str], Any]) -> None:
    """One page on the terminal or as JSON, or every page (following cursors) to a file."""
    from k2_etl.query.output import json_types, write_pages

    if out_file is not None:
        from rich.progress import Progress, SpinnerColumn, TextColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=Console(stderr=True)) as bar:
            task = bar.add_task(f"writing {out_file}", total=None)

            def pages() -> Iterator[pa.Table]:
                page, written = result, 0
                while True:
                    written += page.rows.num_rows
                    bar.update(task, description=f"writing {out_file}: {written:,} rows")
                    yield page.rows
                    if page.cursor is None:
                        return
                    page = walk(page.cursor)

            rows = write_pages(pages(), out_file)
        out.print(f"{rows:,} rows written to {out_file}")
        return
    if json_output:
        print_json({"count": result.rows.num_rows, "next_cursor": result.cursor, "partial": result.partial,
                    "snapshot_id": result.snapshot_id, "data": json_types(result.rows).to_pylist()})  # fmt: skip
        return
    shown = json_types(result.rows)
    table = Table(*shown.column_names)
    for row in shown.to_pylist():
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    out.print(table)
    more = f"; more with --cursor {result.cursor}" if result.cursor else ""
    out.print(f"{result.rows.num_rows:,} row(s) from snapshot {result.snapshot_id}{more}", markup=False)


def _paged(query: Callable[..., Any], limit: int, cursor: str | None, out_file: Path | None, json_output: bool) -> None:
    """One page (``limit`` rows) to the terminal or as JSON, or with --out every page, 50,000 at a time."""
    from k2_etl.query.engine import MAX_LIMIT

    size = MAX_LIMIT if out_file else limit
    _show(query(limit=size, cursor=cursor), json_output, out_file, lambda c: query(limit=size, cursor=c))


def _rows_command(table_name: str) -> Callable[..., None]:
    def command(
        symbols: Symbols,
        start: StartOpt = None,
        end: EndOpt = None,
        exchange: ExchangeOpt = None,
        limit: LimitOpt = 100,
        fields: Annotated[str | None, typer.Option("--fields", help="Columns, comma-separated.")] = None,
        cursor: CursorOpt = None,
        as_of: AsOfOpt = None,
        snapshot_id: SnapshotOpt = None,
        out_file: OutOpt = None,
        json_output: JsonFlag = False,
    ) -> None:
        from k2_etl.query.engine import QueryEngine
        from k2_etl.query.params import parse_symbols

        engine = QueryEngine(load_settings())
        args = {"symbols": parse_symbols("symbol", symbols), "exchange": exchange, "snapshot_id": snapshot_id,
                "fields": fields.split(",") if fields else None, **_time_args(start, end, as_of)}  # fmt: skip
        _paged(functools.partial(engine.page, table_name, **args), limit, cursor, out_file, json_output)

    command.__doc__ = f"""The {table_name} of symbols in [start, end), in (time, sequence, id) order."""
    return command


app.command("trades")(_rows_command("trades"))
app.command("quotes")(_rows_command("quotes"))


@app.command("bars")
def query_bars(
    symbols: Symbols,
    interval: Annotated[
        str, typer.Option("--interval", help="1s .. 1d dividing a day (1m, 5m, 1h, 1d ...), week or month.")
    ] = "1m",
    start: StartOpt = None,
    end: EndOpt = None,
    exchange: ExchangeOpt = None,
    tz: Annotated[
        str, typer.Option("--tz", help="Time zone bars are cut in: UTC, exchange (the exchange's own), or a name.")
    ] = "UTC",
    origin: Annotated[
        str, typer.Option("--origin", help="Local time of day bars count from, e.g. 10:00 for the ASX's open.")
    ] = "00:00",
    by: Annotated[
        str, typer.Option("--by", help="symbol: the exchanges' trades together; exchange: bars per exchange.")
    ] = "symbol",
    day: Annotated[
        str | None, typer.Option("--day", help="Instead of --start/--end: this day (YYYY-MM-DD) in the bars' zone.")
    ] = None,
    limit: LimitOpt = 100,
    cursor: CursorOpt = None,
    as_of: AsOfOpt = None,
    snapshot_id: SnapshotOpt = None,
    out_file: OutOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """OHLCV bars with exact VWAP and trade count, in (bar start, symbol, exchange) order."""
    from k2_etl.errors import QueryError
    from k2_etl.instants import parse_day
    from k2_etl.query.engine import QueryEngine
    from k2_etl.query.params import parse_by, parse_interval, parse_origin, parse_symbols, parse_zone

    if day and (start or end):
        raise QueryError("--day", day, "give --day, or --start and --end, not both")

    engine = QueryEngine(load_settings())
    args = {"symbols": parse_symbols("symbol", symbols), "exchange": exchange, "snapshot_id": snapshot_id,
            "interval": parse_interval("--interval", interval), "tz": parse_zone("--tz", tz),
            "origin": parse_origin("--origin", origin), "by": parse_by("--by", by),
            "day": parse_day("--day", day) if day else None, **_time_args(start, end, as_of)}  # fmt: skip
    _paged(functools.partial(engine.bars, **args), limit, cursor, out_file, json_output)


@app.command("summary")
def query_summary(
    symbol: Annotated[str, typer.Argument(help="Symbol, e.g. BHP.")],
    day: Annotated[str, typer.Argument(help="Trading date, YYYY-MM-DD (in the exchange's time zone).")],
    exchange: ExchangeOpt = None,
    as_of: AsOfOpt = None,
    snapshot_id: SnapshotOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """A symbol's trading day: open, high, low, close, volume, VWAP, trade and quote counts."""
    import pyarrow as pa

    from k2_etl.instants import parse_day, parse_time
    from k2_etl.query.engine import QueryEngine
    from k2_etl.query.output import json_types
    from k2_etl.query.params import parse_symbols

    engine = QueryEngine(load_settings())
    name = (parse_symbols("symbol", [symbol]) or [""])[0]
    if engine.unknown([name]):
        raise QueryError("symbol", name, "no trade, quote or reference data names it")
    row = engine.summary(name, parse_day("date", day), exchange=exchange, snapshot_id=snapshot_id,
                         as_of=parse_time("--as-of", as_of) if as_of else None)  # fmt: skip
    values = json_types(pa.Table.from_pylist([row])).to_pylist()[0]
    if json_output:
        print_json(values)
        return
    table = Table("field", "value")
    for key, value in values.items():
        table.add_row(key, "" if value is None else str(value))
    out.print(table)
