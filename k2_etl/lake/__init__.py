"""The Iceberg side of K2: catalog access, table definitions and (later) every commit.

Nothing writes to a table except through this package.
"""
