-- The Hive metastore's role and database beside Airflow's (infra/compose.yaml runs this once, on
-- the first start of an empty postgres volume). ALTLAKE_METASTORE_URL in compose.env points here.
CREATE ROLE hive LOGIN PASSWORD 'hive';
CREATE DATABASE metastore OWNER hive;
