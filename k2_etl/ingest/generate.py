"""`k2 generate`: realistic synthetic trades and quotes in the `k2` format, deterministic by seed.

Per symbol and day: prices follow a random walk on the tick grid (so they move
and stay exact), trade arrivals are denser at the open and close and come in
bursts, quotes straddle the price with a spread of a few ticks, sizes are
lognormal in round lots, and each (exchange, symbol, day) carries its own
sequence numbers. With ``anomalies``, a few deliberate oddities are mixed in:
trades outside regular hours, one-sided, crossed and locked quotes, and in
every (exchange, symbol, day) with at least 21 trades one sequence gap,
out-of-order pair, reset and duplicate (see :func:`_sequence_anomalies`).
Everything is numpy-vectorized, so millions of rows take seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from k2_etl.errors import K2Error
from k2_etl.formats import load_format


@dataclass(frozen=True)
class Venue:
    code: str
    open: str
    close: str
    currency: str

    @property
    def timezone(self) -> str:
        """As the `k2` format (which reads what this writes) defines the exchange's trading day."""
        return _EXCHANGE_TIMEZONES[self.code]


_EXCHANGE_TIMEZONES = load_format("k2").exchange_timezones
VENUES = {
    v.code: v
    for v in (
        Venue("ASX", "10:00", "16:00", "AUD"),
        Venue("CXA", "10:00", "16:00", "AUD"),
        Venue("XNAS", "09:30", "16:00", "USD"),
        Venue("XNYS", "09:30", "16:00", "USD"),
        Venue("XLON", "08:00", "16:30", "GBP"),
    )
}
TICK = 1  # prices are in cents: one tick
CONDITIONS = np.array(["", "", "", "", "", "", "", "", "XT", "OS", "BP", "XT OS"])


@dataclass
class GenerateReport:
    files: list[str]
    trades: int
    quotes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _symbols(count: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    seen: dict[str, None] = {}
    while len(seen) < count:
        seen.setdefault("".join(rng.choice(letters, size=int(rng.integers(3, 5)))), None)
    return sorted(seen)


def _money(cents: np.ndarray) -> pa.Array:
    """Exact decimal strings ("45.12") from integer cents."""
    text = pc.utf8_lpad(pa.array(cents.astype(np.int64)).cast(pa.string()), 3, "0")
    return pc.binary_join_element_wise(pc.utf8_slice_codeunits(text, 0, -2), pc.utf8_slice_codeunits(text, -2), ".")


def _times(day: date, venue: Venue, n: int, rng: np.random.Generator) -> np.ndarray:
    """n sorted arrival times (UTC, microseconds): U-shaped over the session, with bursts."""
    tz = ZoneInfo(venue.timezone)
    open_h, open_m = map(int, venue.open.split(":"))
    close_h, close_m = map(int, venue.close.split(":"))
    start = datetime(day.year, day.month, day.day, open_h, open_m, tzinfo=tz)
    end = datetime(day.year, day.month, day.day, close_h, close_m, tzinfo=tz)
    t0, span = int(start.timestamp() * 1e6), int((end - start).total_seconds() * 1e6)
    u_shaped = rng.beta(0.6, 0.6, size=n - n // 3)
    centers = rng.random(max(1, n // 500))
    bursts = np.clip(rng.choice(centers, size=n // 3) + rng.normal(0, 0.002, size=n // 3), 0, 0.999999)
    fractions = np.sort(np.concatenate([u_shaped, bursts]))
    return t0 + (fractions * span).astype(np.int64)


def _iso(micros: np.ndarray) -> pa.Array:
    return pa.array(np.char.add(np.datetime_as_string(micros.astype("datetime64[us]"), unit="us"), "Z"))


SEQUENCE_ANOMALIES_MIN_TRADES = 21  # (exchange, symbol, day)s with fewer trades keep clean sequences


def _sequence_anomalies(seq: np.ndarray, t: np.ndarray) -> None:
    """One of each sequence anomaly, in place, in arrival (time) order; ``len(seq) >= 21``.

    Rows 5 and 6 swap numbers (a gap of 1, then 6 out of order); from the middle
    row on, numbers skip 3 (a gap of 3); from row 3n/4 they restart at 1 (a
    reset); the last row repeats the one before it (a duplicate, a microsecond
    later so that it is a different record, not a re-sent one).
    """
    n = len(seq)
    seq[5], seq[6] = seq[6], seq[5]
    seq[n // 2 :] += 3
    restart = 3 * n // 4
    seq[restart:] = np.arange(1, n - restart + 1)
    seq[-1] = seq[-2]
    t[-1] = max(t[-1], t[-2] + 1)


def _time_ordered(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """All symbols' columns joined, rows in time order (a file is one venue's day, as it happened)."""
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(joined["t"], kind="stable")
    return {k: v[order] for k, v in joined.items()}


def _write(path: Path, columns: dict[str, pa.Array]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({k: (v if isinstance(v, pa.Array) else pa.array(v)) for k, v in columns.items()})
    pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(quoting_style="none"))


def generate(
    out: Path,
    *,
    symbols: int,
    days: int,
    start: date,
    seed: int = 0,
    exchanges: tuple[str, ...] = ("ASX", "CXA"),
    trades_per_day: int = 1000,
    quotes_per_trade: float = 2.0,
    anomalies: bool = False,
) -> GenerateReport:
    """Write ``<out>/reference_data.csv`` and ``<out>/<day>/{trades,quotes}_<exchange>.csv``."""
    if not exchanges:
        raise K2Error("--exchanges needs at least one exchange code")
    unknown = [e for e in exchanges if e not in VENUES]
    if unknown:
        raise K2Error(f"unknown exchange(s) {', '.join(unknown)}; known: {', '.join(VENUES)}")
    if not 1 <= symbols <= 100_000 or days < 1 or trades_per_day < 1:
        raise K2Error("--symbols must be 1..100000; --days and --trades-per-day at least 1")
    rng = np.random.default_rng(seed)
    names = _symbols(symbols, rng)
    primary = VENUES[exchanges[0]]
    files: list[str] = []
    ref_path = out / "reference_data.csv"
    _write(
        ref_path,
        {
            "symbol": names,
            "exchange": [primary.code] * symbols,
            "instrument_id": [f"{1000 + i}" for i in range(symbols)],
            "name": [f"{n} Holdings Ltd" for n in names],
            "isin": [f"XX{i:09d}{n[0]}" for i, n in enumerate(names)],
            "currency": [primary.currency] * symbols,
            "valid_from": ["2000-01-01"] * symbols,
            "valid_to": [""] * symbols,
        },
    )
    files.append(str(ref_path))
    last_cents = np.round(np.exp(rng.normal(3.5, 0.8, size=symbols)) * 100).astype(np.int64)
    total_trades = total_quotes = 0
    # `days` weekdays from `start` (a weekend start moves to Monday)
    trading_days = [start + timedelta(days=i) for i in range(days * 2 + 3) if (start + timedelta(days=i)).weekday() < 5]
    for day in trading_days[:days]:
        for venue_index, code in enumerate(exchanges):
            venue = VENUES[code]
            share = 1.0 if len(exchanges) == 1 else (0.7 if venue_index == 0 else 0.3 / (len(exchanges) - 1))
            trades: dict[str, list[np.ndarray]] = {k: [] for k in ("t", "sym", "px", "qty", "seq", "cond")}
            quotes: dict[str, list[np.ndarray]] = {k: [] for k in ("t", "sym", "bid", "ask", "bq", "aq", "seq")}
            for s, name in enumerate(names):
                n = max(1, int(trades_per_day * share * rng.uniform(0.5, 1.5)))
                t = _times(day, venue, n, rng)
                steps = rng.choice([-1, 0, 0, 0, 1], size=n) * TICK * np.maximum(1, last_cents[s] // 10_000)
                px = np.maximum(1, last_cents[s] + np.cumsum(steps))
                last_cents[s] = px[-1]
                qty = np.maximum(1, np.round(rng.lognormal(4, 1.2, size=n) / 10) * 10).astype(np.int64)
                seq = np.arange(1, n + 1)
                if anomalies and n >= SEQUENCE_ANOMALIES_MIN_TRADES:
                    _sequence_anomalies(seq, t)
                if anomalies and n > 10:
                    t[0] -= 3_600_000_000  # one trade an hour before the open
                trades["t"].append(t)
                trades["sym"].append(np.full(n, name))
                trades["px"].append(px)
                trades["qty"].append(qty)
                trades["seq"].append(seq)
                trades["cond"].append(rng.choice(CONDITIONS, size=n))
                m = max(1, int(n * quotes_per_trade)) if quotes_per_trade > 0 else 0
                if m:
                    qt = _times(day, venue, m, rng)
                    mid = np.interp(qt, t, px).astype(np.int64)
                    spread = TICK * rng.geometric(0.6, size=m)
                    bid = np.maximum(1, mid - spread // 2)
                    ask = bid + spread
                    bq = np.maximum(1, np.round(rng.lognormal(5, 1, size=m) / 10) * 10).astype(np.int64)
                    aq = np.maximum(1, np.round(rng.lognormal(5, 1, size=m) / 10) * 10).astype(np.int64)
                    if anomalies and m > 10:
                        bid[1] = 0  # one-sided (empty bid)
                        ask[2] = bid[2] - TICK  # crossed
                        ask[3] = bid[3]  # locked
                    quotes["t"].append(qt)
                    quotes["sym"].append(np.full(m, name))
                    quotes["bid"].append(bid)
                    quotes["ask"].append(ask)
                    quotes["bq"].append(bq)
                    quotes["aq"].append(aq)
                    quotes["seq"].append(np.arange(1, m + 1))
            folder = out / day.isoformat()
            tr = _time_ordered(trades)
            order = tr["t"]
            trade_path = folder / f"trades_{code}.csv"
            _write(
                trade_path,
                {
                    "event_time": _iso(tr["t"]),
                    "symbol": tr["sym"],
                    "exchange": [code] * len(order),
                    "price": _money(tr["px"]),
                    "size": pa.array(tr["qty"]).cast(pa.string()),
                    "currency": [venue.currency] * len(order),
                    "sequence_number": pa.array(tr["seq"]).cast(pa.string()),
                    "conditions": tr["cond"],
                    "venue": [""] * len(order),
                },
            )
            files.append(str(trade_path))
            total_trades += len(order)
            if quotes["t"]:
                qu = _time_ordered(quotes)
                order = qu["t"]
                bid_text = pc.if_else(pa.array(qu["bid"] == 0), "", _money(qu["bid"]))
                bid_size = pc.if_else(pa.array(qu["bid"] == 0), "", pa.array(qu["bq"]).cast(pa.string()))
                quote_path = folder / f"quotes_{code}.csv"
                _write(
                    quote_path,
                    {
                        "event_time": _iso(qu["t"]),
                        "symbol": qu["sym"],
                        "exchange": [code] * len(order),
                        "bid_price": bid_text,
                        "bid_size": bid_size,
                        "ask_price": _money(qu["ask"]),
                        "ask_size": pa.array(qu["aq"]).cast(pa.string()),
                        "currency": [venue.currency] * len(order),
                        "sequence_number": pa.array(qu["seq"]).cast(pa.string()),
                        "conditions": [""] * len(order),
                    },
                )
                files.append(str(quote_path))
                total_quotes += len(order)
    return GenerateReport(files, total_trades, total_quotes)
