"""K2's Airflow operators, sensors and hooks: thin wrappers that call into ``k2_etl``.

Airflow puts its plugins folder on ``sys.path``, so DAG files import ``k2_airflow``. Nothing
here runs at DAG-parse time: connections to Kafka, the registry or the catalog are made in
``execute`` / ``poke``.
"""
