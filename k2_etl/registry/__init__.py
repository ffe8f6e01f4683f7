"""The local Confluent-compatible schema registry (the embedded platform's stand-in).

K2 code never talks to this package directly: clients use
``K2_SCHEMA_REGISTRY_URL``, which in production points at Confluent Schema
Registry. See :mod:`k2_etl.registry.app` for the routes.
"""
