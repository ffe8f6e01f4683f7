"""Access to K2's platform from Airflow tasks."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from airflow.sdk import BaseHook

from k2_etl.config import Settings, load_settings

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table


class K2Hook(BaseHook):
    """K2's settings and Iceberg catalog, as the task's environment configures them.

    K2 reads its settings from ``K2_*`` environment variables (and ``k2.toml``), the same in
    Airflow workers as on the command line, so the DAGs need no Airflow connection of their own:
    one source of truth for where the broker, registry and catalog are.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        self._settings = settings

    @cached_property
    def settings(self) -> Settings:
        return self._settings or load_settings()

    @cached_property
    def catalog(self) -> Catalog:
        from k2_etl.lake.catalog import open_catalog  # pyiceberg: not at DAG-parse time

        return open_catalog(self.settings)

    def table(self, name: str) -> Table:
        return self.catalog.load_table((self.settings.namespace, name))
