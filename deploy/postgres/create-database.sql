-- Run once as a PostgreSQL superuser, e.g.:
--   psql -h db.hospital.example -U postgres -v ON_ERROR_STOP=1 \
--     -v password='…' -f deploy/postgres/create-database.sql
-- psql quotes the password itself (:'password'), so any character may be in it; in
-- KINDREFLEX_DATABASE_URL percent-encode the URL's special ones (README, "On PostgreSQL").
-- The service's role owns its database and nothing else; `kindreflex db upgrade` creates
-- the tables.
CREATE ROLE kindreflex LOGIN PASSWORD :'password';
CREATE DATABASE kindreflex OWNER kindreflex ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE kindreflex FROM PUBLIC;
