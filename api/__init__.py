"""K2's REST API: market data queries over the Iceberg tables, served by gunicorn (`k2 api`)."""

from api.app import create_app

__all__ = ["create_app"]
