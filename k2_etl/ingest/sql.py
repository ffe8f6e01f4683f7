"""The DuckDB SQL that turns split CSV rows into validated records: every ingest statement is here.

One statement per block of rows: parse every mapped column, run the checks in
order (the first failing one is the row's reason), compute quality flags,
sequence numbers and the deterministic event id. Everything a user controls
(values, strptime formats, time zone, dates, file names) is a bound
parameter; the statement's shape comes only from the validated format file
(column positions are integers, field names come from the Avro schema).

Input relation ``rows(line_no BIGINT, raw VARCHAR, nf INTEGER, f1 VARCHAR, ... fN VARCHAR)``:
the file's line number, the raw line, its number of fields, and its N fields
(the format's columns, trimmed; NULL when the line has another number of fields).
Rows come out in file order (DuckDB keeps insertion order; the window that
assigns sequence numbers does not, so that statement sorts by line).

Input relation ``seq_base(exchange VARCHAR, symbol VARCHAR, trading_date DATE, base BIGINT)``:
sequence numbers already assigned in earlier blocks of the same file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from k2_etl import records
from k2_etl.formats import Format, RecordSpec

SCHEMA_SCALE = 8
INTEGER_DIGITS = 10  # decimal(18, 8): 10 digits before the point
DECIMAL_FIELDS = {"trade": ("price", "size"), "quote": ("bid_price", "bid_size", "ask_price", "ask_size")}


def csv_sign(record_type: str, column: str) -> records.Sign | None:
    """The sign check of a decimal column's CSV text: the record's rule (k2_etl.records), except
    that a quote file's price of 0 is an empty side (stored as no price), not a wrong price."""
    if column in records.EMPTY_SIDE_PRICES.get(record_type, ()):
        return "not_negative"
    return records.sign_of(record_type, column)


DATE_FIELDS = {"valid_from", "valid_to"}
UTC_ZONES = {"UTC", "Etc/UTC"}
MICROS_PER_DAY = 86_400_000_000


@dataclass
class Statement:
    sql: str
    params: dict[str, Any] = field(default_factory=dict)


class _Builder:
    def __init__(self, fmt: Format, spec: RecordSpec) -> None:
        self.fmt, self.spec = fmt, spec
        self.params: dict[str, Any] = {}
        self.checks: list[tuple[str, str, str, str | None]] = []  # (condition, reason expr, detail expr, column)

    def param(self, name: str, value: Any) -> str:
        self.params[name] = value
        return f"${name}"

    def col(self, column: str) -> str:
        """The text of a column (trimmed); NULL when the row has the wrong number of fields."""
        return f"f{self.spec.columns.index(column) + 1}"

    def check(
        self, condition: str, reason: str, detail: str, column: str | None = None, *, reason_is_sql: bool = False
    ) -> None:
        """Rows meeting ``condition`` (and no earlier check) are rejected for ``reason``, a code or SQL."""
        self.checks.append((condition, reason if reason_is_sql else f"'{reason}'", detail, column))

    def require(self, text: str, column: str) -> None:
        """A check that ``column`` (whose text is ``text``) is not empty."""
        label = self.param(f"label_{len(self.params)}", column)
        self.check(f"coalesce({text}, '') = ''", "missing_value", f"{label} || ' is empty'", column)

    def problem(self) -> str:
        """The first failing check of a row as {reason, detail, field}, NULL when all pass."""
        branches = " ".join(
            f"WHEN {cond} THEN {{'reason': {reason}, 'detail': {detail}, "
            f"'field': {self.param(f'field_{i}', column) if column else 'NULL::VARCHAR'}}}"
            for i, (cond, reason, detail, column) in enumerate(self.checks)
        )
        return f"CASE {branches} END"


def _decimal_checks(b: _Builder, field_name: str, column: str, sign: records.Sign | None, required: bool) -> str:
    """Checks for one decimal column; returns the expression of its value (NULL when empty)."""
    text = f"c_{field_name}"
    scale = b.spec.scales.get(column, SCHEMA_SCALE)
    label = b.param(f"label_{field_name}", column)
    if required:
        b.require(text, column)
    # One regular expression passes every well-formed value; only the rows it fails are told apart.
    well_formed = (
        f"'-?0*[0-9]{{1,{INTEGER_DIGITS}}}(\\.[0-9]{{1,{scale}}})?'"
        if scale
        else (f"'-?0*[0-9]{{1,{INTEGER_DIGITS}}}'")
    )
    decimals = f"length(split_part({text}, '.', 2))"
    why = (
        f"CASE WHEN NOT regexp_full_match({text}, '-?[0-9]+(\\.[0-9]+)?') THEN 'bad_number' "
        f"WHEN {decimals} > {scale} THEN 'too_many_decimals' ELSE 'out_of_range' END"
    )
    detail = (
        f"{label} || ' ' || to_json({text}) || CASE "
        f"WHEN NOT regexp_full_match({text}, '-?[0-9]+(\\.[0-9]+)?') THEN ' is not a decimal number' "
        f"WHEN {decimals} > {scale} THEN ' has ' || {decimals} || ' decimal places; at most {scale}' "
        f"ELSE ' is too large (at most {INTEGER_DIGITS} digits before the point)' END"
    )
    b.check(f"{text} <> '' AND NOT regexp_full_match({text}, {well_formed})", why, detail, column, reason_is_sql=True)
    # TRY_CAST: this is also computed for rows an earlier check rejected. The checks see it by name.
    value = f"TRY_CAST(nullif({text}, '') AS DECIMAL(18, 8))"
    if sign == "positive":
        condition, reason, verdict = f"{text} <> '' AND {field_name} <= 0", "not_positive", "must be positive"
    elif sign == "not_negative":
        condition, reason, verdict = f"{text} <> '' AND {field_name} < 0", "negative", "must not be negative"
    else:
        return value
    b.check(condition, reason, f"{label} || ' ' || to_json({text}) || ' {verdict}'", column)
    return value


def build(
    fmt: Format,
    spec: RecordSpec,
    *,
    load_date: str | None,
    max_event_time: str,
    instrument: str | None = None,
    reference_label: str | None = None,
    known_symbols_label: str | None = None,
) -> Statement:
    """The statement for ``spec``'s rows.

    ``instrument``: when the format takes symbols from file names, the file's instrument id;
    the statement then joins ``symbol_ranges(symbol, valid_from, valid_to)`` (that instrument's
    symbols over time) to give each row the symbol valid on its trading date.
    ``known_symbols_label``: the reference file whose symbols are in ``known_symbols(symbol)``;
    rows whose symbol is not there are rejected.
    """
    symbol_ranges = instrument is not None
    b = _Builder(fmt, spec)
    rtype = spec.type
    n = len(spec.columns)
    delim = b.param("delim", fmt.delimiter)
    b.check(
        f"nf <> {n}",
        "wrong_field_count",
        f"'expected {n} fields separated by ' || to_json({delim}) || ', found ' || nf "
        f"|| CASE WHEN nf = 1 AND regexp_matches(raw, '[;\\t|]') "
        f"THEN ' (is the delimiter right? the line contains ' || to_json(regexp_extract(raw, '[;\\t|]')) || ')' "
        f"ELSE '' END",
    )

    texts = {name: b.col(column) for name, column in spec.fields.items()}
    select_text = ", ".join(f"{expr} AS c_{name}" for name, expr in texts.items())

    # --- event time -------------------------------------------------------------------------
    ts = spec.timestamp
    tz = b.param("tz", fmt.timezone)
    if ts is not None:
        raw_ts = b.col(ts.column) if ts.column else f"{b.col(ts.date or '')} || ' ' || {b.col(ts.time or '')}"
        ts_column = " ".join(ts.columns)
        ts_label = b.param("ts_label", " ".join(ts.columns))
        if ts.format == "iso8601":
            local = "NULL::TIMESTAMP"
            # With a zone offset the text says its instant; without one it is the format's local time.
            event_time = (
                "CASE WHEN ends_with(c_ts, 'Z') OR regexp_matches(c_ts, '[+-][0-9]{2}(:?[0-9]{2})?$') "
                f"THEN TRY_CAST(c_ts AS TIMESTAMPTZ) ELSE timezone({tz}, TRY_CAST(c_ts AS TIMESTAMP)) END"
            )
            fmt_label = b.param("ts_format", "ISO-8601, e.g. 2026-11-25T00:00:01.5Z")
        else:
            fmt_param = b.param("ts_format", ts.format)
            local = f"try_strptime(c_ts, {fmt_param})"
            event_time = f"timezone({tz}, c_local)"
            fmt_label = fmt_param
        select_text += f", {raw_ts} AS c_ts, {local} AS c_local"
        # The trading day is the date in the exchange's zone. Converting instants with ICU
        # (timezone()) costs about 100 ns a row, so it is avoided where the date is known
        # otherwise: the parsed local time's own date, or plain arithmetic in UTC.
        if ts.format != "iso8601":
            trading_date = "CAST(c_local AS DATE)"
        elif fmt.timezone in UTC_ZONES:
            days = f"CAST(epoch_us(c_event_time) // {MICROS_PER_DAY} AS INTEGER)"
            trading_date = f"CAST(DATE '1970-01-01' + {days} AS DATE)"
        else:
            trading_date = f"CAST(timezone({tz}, c_event_time) AS DATE)"
        if fmt.exchange_timezones and "exchange" in spec.fields:  # each exchange's own trading day
            cases = " ".join(
                f"WHEN {b.param(f'xtz_code{i}', code)} "
                f"THEN CAST(timezone({b.param(f'xtz{i}', zone)}, c_event_time) AS DATE)"
                for i, (code, zone) in enumerate(sorted(fmt.exchange_timezones.items()))
            )
            trading_date = f"CASE c_exchange {cases} ELSE {trading_date} END"
        b.check(
            "c_event_time IS NULL",
            "bad_timestamp",
            f"{ts_label} || ' ' || to_json(c_ts) || ' does not match ' || {fmt_label}",
            ts_column,
        )
        if ts.format != "iso8601":
            b.check(
                f"timezone({tz}, c_event_time) <> c_local",
                "nonexistent_local_time",
                f"to_json(c_ts) || ' does not exist in ' || {tz} || ' (daylight-saving change)'",
                ts_column,
            )
        max_ts = b.param("max_ts", max_event_time)
        b.check(
            f"c_event_time < CAST({b.param('min_ts', records.EARLIEST.isoformat())} AS TIMESTAMPTZ) "
            f"OR c_event_time > CAST({max_ts} AS TIMESTAMPTZ)",
            "timestamp_out_of_range",
            f"to_json(c_ts) || ' is outside {records.EARLIEST:%Y-%m-%d} .. ' "
            f"|| {b.param('max_ts_label', max_event_time[:10])}",
            ts_column,
        )
        if load_date is not None:
            b.check(
                f"k_trading_date <> CAST({b.param('load_date', load_date)} AS DATE)",
                "not_load_date",
                f"'trading date ' || k_trading_date || ' is not the load date ' "
                f"|| {b.param('load_date_label', load_date)}",
                ts_column,
            )
    else:
        event_time = "NULL::TIMESTAMPTZ"
        trading_date = "NULL::DATE"

    # --- symbol and constants -------------------------------------------------------------------
    if rtype != "reference_data" and "symbol" not in spec.fields:
        symbol = "sr.symbol"
        ref = fmt.symbol_from_file_name
        assert ref is not None
        instrument_p = b.param("instrument", instrument or "")
        reference_p = b.param("reference_file", reference_label or ref.reference_file)
        b.check(
            "k_symbol IS NULL",
            "unknown_symbol",
            f"'instrument ' || {instrument_p} || ' (from the file name) has no symbol in ' || {reference_p} "
            "|| ' on ' || k_trading_date",
            "file name",
        )
    else:
        symbol = "c_symbol"
        column = spec.fields["symbol"]
        b.require("c_symbol", column)  # records.NOT_EMPTY (the event id is built here, never empty)
        b.check(
            f"NOT regexp_full_match(c_symbol, {b.param('symbol_pattern', fmt.symbol_pattern.strip('^$'))})",
            "bad_symbol",
            "'symbol ' || to_json(c_symbol) || ' is not a valid symbol'",
            column,
        )
        if known_symbols_label is not None and rtype != "reference_data":
            b.check(
                "c_symbol NOT IN (SELECT symbol FROM known_symbols)",
                "unknown_symbol",
                f"'symbol ' || to_json(c_symbol) || ' is not in ' || {b.param('known_label', known_symbols_label)}",
                column,
            )
    exchange = "c_exchange" if "exchange" in spec.fields else f"CAST({b.param('exchange', fmt.exchange)} AS VARCHAR)"
    if "exchange" in spec.fields:
        b.require("c_exchange", spec.fields["exchange"])  # records.NOT_EMPTY
    constant_currency = f"CAST({b.param('currency', fmt.currency)} AS VARCHAR)"
    currency = "nullif(c_currency, '')" if "currency" in spec.fields else constant_currency

    # --- typed values -------------------------------------------------------------------------
    values: dict[str, str] = {}
    for name in DECIMAL_FIELDS.get(rtype, ()):
        if name in spec.fields:
            values[name] = _decimal_checks(b, name, spec.fields[name], csv_sign(rtype, name), name in ("price", "size"))
        else:
            values[name] = "NULL::DECIMAL(18, 8)"
    if "sequence_number" in spec.fields:
        label = b.param("label_seq", spec.fields["sequence_number"])
        b.require("c_sequence_number", spec.fields["sequence_number"])  # the event id is built from it
        b.check(
            "c_sequence_number <> '' AND NOT regexp_full_match(c_sequence_number, '[0-9]{1,18}')",
            "bad_integer",
            f"{label} || ' ' || to_json(c_sequence_number) || ' is not a whole number'",
            spec.fields["sequence_number"],
        )
        if records.sign_of(rtype, "sequence_number") == "positive":
            b.check(
                "regexp_full_match(c_sequence_number, '0+')",
                "not_positive",
                f"{label} || ' ' || to_json(c_sequence_number) || ' must be positive'",
                spec.fields["sequence_number"],
            )
    if rtype == "quote":  # the record rule ONE_OF; a price of 0 is an empty side here (csv_sign)
        first, second = records.ONE_OF[rtype]
        b.check(
            f"coalesce({first}, 0) = 0 AND coalesce({second}, 0) = 0",
            "empty_quote",
            "'quote has neither a bid nor an ask'",
            spec.fields.get(first),
        )
    date_values = {}
    for name in sorted(DATE_FIELDS & set(spec.fields)):
        label = b.param(f"label_{name}", spec.fields[name])
        date_format = b.param("date_format", spec.date_format)
        date_values[name] = f"CAST(try_strptime(nullif(c_{name}, ''), {date_format}) AS DATE)"
        b.check(
            f"c_{name} <> '' AND {date_values[name]} IS NULL",
            "bad_date",
            f"{label} || ' ' || to_json(c_{name}) || ' does not match ' || {date_format}",
            spec.fields[name],
        )

    # --- assemble --------------------------------------------------------------------------------
    typed = ", ".join(f"{expr} AS {name}" for name, expr in values.items())
    symbol_join = ""
    if symbol_ranges:
        symbol_join = (
            "LEFT JOIN symbol_ranges sr ON k_trading_date "
            "BETWEEN coalesce(sr.valid_from, DATE '0001-01-01') AND coalesce(sr.valid_to, DATE '9999-12-31')"
        )
    parsed = f"""
        parsed AS (
            SELECT line_no, raw, nf, {select_text}
            FROM rows
        ),
        timed AS (
            SELECT *, {event_time} AS c_event_time FROM parsed
        ),
        dated AS (
            SELECT *, {trading_date} AS k_trading_date FROM timed
        ),
        typed AS (
            SELECT dated.*, {symbol} AS k_symbol, {exchange} AS k_exchange{", " if typed else ""}{typed}
            FROM dated {symbol_join}
        ),
        checked AS (
            SELECT *, {b.problem()} AS problem FROM typed
        )"""
    if rtype == "reference_data":
        out = _reference_output(spec, exchange, currency, date_values)
    else:
        out = _market_output(fmt, spec, b, exchange, currency)
    text = f"WITH {parsed} {out}"
    # DuckDB refuses parameters a statement does not use; some apply to some record types only.
    used = {name: value for name, value in b.params.items() if re.search(rf"\${name}\b", text)}
    return Statement(text, used)


def _conditions(spec: RecordSpec, b: _Builder) -> str:
    if "conditions" not in spec.fields:
        return "[]::VARCHAR[]"
    sep = b.param("cond_sep", spec.conditions_separator)
    return (
        f"CASE WHEN coalesce(c_conditions, '') = '' THEN []::VARCHAR[] "
        f"ELSE list_filter(string_split(c_conditions, {sep}), x -> x <> '') END"
    )


def _market_output(fmt: Format, spec: RecordSpec, b: _Builder, exchange: str, currency: str) -> str:
    rtype = spec.type
    flags: list[str] = []
    assigned = "sequence_number" not in spec.fields
    if assigned:
        flags.append("'sequence_assigned'")
    if rtype == "trade" and fmt.session is not None:
        open_p = b.param("session_open", fmt.session.open + ":00")
        close_p = b.param("session_close", fmt.session.close + ":00")
        local = spec.timestamp is not None and spec.timestamp.format != "iso8601"  # c_local: the text's own time
        local_time = "CAST(c_local AS TIME)" if local else "CAST(timezone($tz, event_time) AS TIME)"
        flags.append(
            f"CASE WHEN {local_time} < CAST({open_p} AS TIME) OR {local_time} >= CAST({close_p} AS TIME) "
            "THEN 'outside_regular_hours' END"
        )
    if rtype == "quote":
        flags += [
            "CASE WHEN coalesce(bid_price, 0) = 0 OR coalesce(ask_price, 0) = 0 THEN 'one_sided' END",
            "CASE WHEN bid_price > 0 AND ask_price > 0 AND bid_price > ask_price THEN 'crossed' END",
            "CASE WHEN bid_price > 0 AND ask_price > 0 AND bid_price = ask_price THEN 'locked' END",
        ]
    flag_list = f"list_filter([{', '.join(flags)}]::VARCHAR[], x -> x IS NOT NULL)" if flags else "[]::VARCHAR[]"
    if assigned:
        sequence = (
            "CASE WHEN problem IS NULL THEN coalesce(sb.base, 0) + row_number() OVER "
            "(PARTITION BY problem IS NULL, k_exchange, k_symbol, k_trading_date ORDER BY line_no) END"
        )
        seq_join = (
            "LEFT JOIN seq_base sb ON sb.exchange = k_exchange AND sb.symbol = k_symbol "
            "AND sb.trading_date = k_trading_date"
        )
    else:
        sequence = "TRY_CAST(nullif(c_sequence_number, '') AS BIGINT)"
        seq_join = ""
    if rtype == "trade":
        body = f"""
            price, size, {currency} AS currency, sequence_number,
            {_conditions(spec, b)} AS conditions,
            {"nullif(c_venue, '')" if "venue" in spec.fields else "NULL::VARCHAR"} AS venue,
            {"nullif(c_buyer_id, '')" if "buyer_id" in spec.fields else "NULL::VARCHAR"} AS buyer_id,"""
    else:
        body = f"""
            CASE WHEN bid_price = 0 THEN NULL ELSE bid_price END AS bid_price,
            CASE WHEN bid_price = 0 OR bid_price IS NULL THEN NULL ELSE bid_size END AS bid_size,
            CASE WHEN ask_price = 0 THEN NULL ELSE ask_price END AS ask_price,
            CASE WHEN ask_price = 0 OR ask_price IS NULL THEN NULL ELSE ask_size END AS ask_size,
            {currency} AS currency, sequence_number,
            {_conditions(spec, b)} AS conditions,"""
    return f""",
        sequenced AS (
            SELECT checked.*, {sequence} AS sequence_number,
                   c_event_time AS event_time
            FROM checked {seq_join}
        )
        SELECT
            line_no, problem.reason AS reason, problem.detail AS detail, problem.field AS field,
            k_trading_date AS trading_date,
            md5(concat_ws('|', '{rtype}', k_exchange, k_symbol, epoch_us(event_time), sequence_number))
                AS event_id,
            k_symbol AS symbol, k_exchange AS exchange, event_time,{body}
            {flag_list} AS quality_flags
        FROM sequenced
        {"ORDER BY line_no" if assigned else ""}"""


def _reference_output(spec: RecordSpec, exchange: str, currency: str, dates: dict[str, str]) -> str:
    def text(name: str) -> str:
        return f"nullif(c_{name}, '')" if name in spec.fields else "NULL::VARCHAR"

    valid_from = dates.get("valid_from", "NULL::DATE")
    valid_to = dates.get("valid_to", "NULL::DATE")
    return f"""
        SELECT
            line_no, problem.reason AS reason, problem.detail AS detail, problem.field AS field,
            NULL::DATE AS trading_date,
            md5(concat_ws('|', 'reference_data', {exchange}, k_symbol, coalesce({text("instrument_id")}, ''),
                          coalesce(CAST({valid_from} AS VARCHAR), '')))
                AS event_id,
            k_symbol AS symbol, {exchange} AS exchange, {text("instrument_id")} AS instrument_id,
            {text("name")} AS name, {text("isin")} AS isin, {currency} AS currency,
            {valid_from} AS valid_from, {valid_to} AS valid_to
        FROM checked"""
