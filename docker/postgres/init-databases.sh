#!/bin/bash
# One PostgreSQL server, two databases with their own roles: the Iceberg SQL catalog (k2_catalog,
# owned by k2) and Airflow's metadata (airflow). Run once by the postgres image, on an empty data
# directory; the passwords come from the service's environment (.env), never from this file.
set -euo pipefail
# \getenv reads the passwords inside psql (15+): they never appear on a command line.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" <<'SQL'
\getenv k2_password CATALOG_DB_PASSWORD
\getenv airflow_password AIRFLOW_DB_PASSWORD
CREATE ROLE k2 LOGIN PASSWORD :'k2_password';
CREATE DATABASE k2_catalog OWNER k2;
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
SQL
