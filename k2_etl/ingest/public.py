"""What other rooms may use of ingest: replay parses vendor files again exactly as a load does,
without producing them. The rest of the package is the loader's own (a contract in
pyproject.toml keeps the batch jobs to this module).
"""

from k2_etl.ingest.landing import day_files, landing_folder
from k2_etl.ingest.lines import file_checksum
from k2_etl.ingest.loader import LoadIds, expand, prepared_blocks, registered_schema_ids
from k2_etl.ingest.prepare import Preparer, Source

__all__ = [
    "LoadIds",
    "Preparer",
    "Source",
    "day_files",
    "expand",
    "file_checksum",
    "landing_folder",
    "prepared_blocks",
    "registered_schema_ids",
]
