"""Blueprints: market data (/v1 trades, quotes, bars, joins, summary), the catalog's other tables
(/v1 symbols, reference, sequence events, rejects, snapshots) and operations (/health, /metrics)."""
