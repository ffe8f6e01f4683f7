"""Sensors over K2's pipeline."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator, Context

from k2_airflow.hooks import K2Hook


class LandedSensor(BaseSensorOperator):
    """Waits until the streaming consumer has landed every record a load produced: every table
    records, for every topic-partition the load wrote, an offset past its last record there, in
    the life of the topic the load wrote to (offsets of a topic since created again do not count).

    ``files``: the loader's per-file results (LoadDayOperator's XCom), whose offsets say what to
    wait for. Reschedule mode by default: no worker slot is held between pokes.
    """

    template_fields = ("files",)

    def __init__(self, *, files: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.files = files

    def poke(self, context: Context) -> bool:
        from k2_etl.errors import UnavailableError
        from k2_etl.lake.progress import files_pending

        try:
            wanted, pending = files_pending(K2Hook().settings, self.files)
        except UnavailableError as exc:  # an outage is waited out like a slow consumer, within the timeout
            self.log.warning("cannot tell yet: %s", exc)
            return False
        if pending:
            self.log.info("not landed yet (partition: landed / wanted): %s",
                          {f"{t}[{p}]": f"{now} / {want}" for t, parts in pending.items()
                           for p, (now, want) in parts.items()})  # fmt: skip
            return False
        self.log.info("landed: %s", wanted)
        return True
