"""CSV → validated records → Avro → Kafka: `k2 load`, the daily load, and the load manifest's rows.

What other rooms may use of it is in :mod:`k2_etl.ingest.public` (replay parses vendor files
again exactly as a load does, without producing them). It is not imported here: the light
modules (the landing folder, the generator) must not pay for the loader's imports.
"""
