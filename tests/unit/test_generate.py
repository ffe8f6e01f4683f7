"""`k2 generate`: deterministic by seed, exact prices, per-(exchange, symbol, day) sequences."""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict
from datetime import date
from decimal import Decimal
from pathlib import Path

from k2_etl.ingest.generate import generate


def run(out: Path, seed: int) -> list[Path]:
    generate(out, symbols=3, days=2, start=date(2026, 11, 2), seed=seed, trades_per_day=50, anomalies=True)
    return sorted(p for p in out.rglob("*.csv"))


def test_same_seed_same_files(tmp_path: Path) -> None:
    first, second, other = run(tmp_path / "a", 1), run(tmp_path / "b", 1), run(tmp_path / "c", 2)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert [p.read_bytes() for p in first] != [p.read_bytes() for p in other]


def test_trades_are_exact_and_sequenced(tmp_path: Path) -> None:
    run(tmp_path, 3)
    seqs: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for path in tmp_path.rglob("trades_*.csv"):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                price = Decimal(row["price"])
                assert price > 0 and price == price.quantize(Decimal("0.01"))
                assert int(row["size"]) > 0
                seqs[(path.parent.name, row["exchange"], row["symbol"])].append(int(row["sequence_number"]))
    assert seqs
    anomalous = 0
    for numbers in seqs.values():
        n = len(numbers)
        if n < 21:
            assert numbers == list(range(1, n + 1))  # clean
            continue
        anomalous += 1
        steps = [b - a for a, b in itertools.pairwise(numbers)]
        assert numbers[:8] == [1, 2, 3, 4, 5, 7, 6, 8]  # a gap of 1, then 6 out of order
        assert steps.count(4) == 1  # a gap of 3 (numbers skip 3)
        restart = numbers.index(1, 1)  # a reset: numbering starts again at 1 ...
        assert restart == 3 * n // 4 and numbers[restart:-1] == list(range(1, n - restart))
        assert numbers[-1] == numbers[-2]  # ... and the last trade repeats the one before it
    assert anomalous > 0
