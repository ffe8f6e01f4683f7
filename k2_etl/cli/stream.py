"""``k2 consume``: the streaming consumer in the foreground."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from k2_etl.cli._output import JsonFlag, out, print_json
from k2_etl.config import load_settings
from k2_etl.reports import counts_line

app = typer.Typer()


@app.command()
def consume(
    topics: Annotated[
        list[str] | None, typer.Option("--topic", "-t", help="A topic to consume (repeatable; default: all four).")
    ] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group (default: K2_STREAM_GROUP).")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Land the trades, quotes, reference-data and dead-letter topics in Iceberg, exactly once.

    Runs until SIGTERM or Ctrl-C, then commits the batch in hand and exits 0.
    Partitions resume from the offsets the tables record. Logs go to stderr.
    """
    import logging

    from k2_etl.allocator import bound_allocator_memory

    bound_allocator_memory(arenas=2)  # before pyarrow loads (with the consumer's modules)
    from k2_etl.stream.consumer import StreamConsumer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpx2"):  # one line per registry request
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = load_settings()
    consumer = StreamConsumer(settings, topics=topics, group=group)
    consumer.install_signal_handlers()
    consumer.serve_health()
    counts = consumer.run()
    if json_output:
        print_json(counts.to_dict())
    else:
        out.print(counts_line(counts), markup=False)
