-- The runbook's case, as a DBA types it: 60 customers, 31 with a NULL company_id.
-- (tests/fixtures/customers.sql says which customer lands in which bucket.)
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/customers.sql'
\i :fixture
\set ECHO all
-- Describe the job: the target and its tenant column (the key defaults to the primary key) ...
SELECT tenant_backfill.define('customers', 'company_id');
-- ... what points at customers and carries a company_id ...
SELECT * FROM tenant_backfill.discover('customers');
-- ... and the sources: appointments first, phone numbers as the fallback, calls by majority.
SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id');
SELECT tenant_backfill.add_source('customers', 'phone_numbers', 'customer_id');
SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', rule => 'majority');
-- Support confirmed customer 27 belongs to City Clinic.
SELECT tenant_backfill.set_override('customers', '27', '3', 'confirmed by support, ticket 4711');
SELECT target, tenant_column, key_column, soft_delete_column FROM tenant_backfill.targets;
SELECT * FROM tenant_backfill.sources ORDER BY phase;
SELECT target, row_key, tenant, note FROM tenant_backfill.overrides;
-- Calling define or add_source again updates; nothing is duplicated.
SELECT tenant_backfill.define('customers', 'company_id');
SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', rule => 'majority');
SELECT count(*) AS targets FROM tenant_backfill.targets;
SELECT count(*) AS sources FROM tenant_backfill.sources;
-- The counts to read first.
SELECT * FROM tenant_backfill.preflight('customers');
-- Every NULL customer and what would happen to it.
SELECT * FROM tenant_backfill.plan('customers');
-- The rows appointments refuse to decide.
SELECT * FROM tenant_backfill.conflicts('customers');
-- Everything left for a human (the file support fills in).
SELECT row_key, reason, evidence, row_data->>'name' AS name, row_data->>'email' AS email, tenant
  FROM tenant_backfill.review_queue('customers');
-- The same queue as CSV, the way it is handed to support.
COPY (SELECT row_key, reason, evidence, tenant FROM tenant_backfill.review_queue('customers')) TO STDOUT WITH (FORMAT csv, HEADER);
-- The override in force for a row; keys are matched in the key's own type.
SELECT tenant_backfill.override_for('customers', '27') AS customer_27,
       tenant_backfill.override_for('customers', '0027') AS customer_0027,
       tenant_backfill.override_for('customers', '28') AS customer_28;
-- Reading the plan changed nothing.
SELECT count(*) FILTER (WHERE company_id IS NULL) AS still_null FROM customers;
-- Rows that already carry a company are never in a fill plan; in reassign mode the
-- evidence agrees with all of them, so nothing more is listed.
SELECT count(*) AS reassign_only_rows
  FROM tenant_backfill.plan('customers', 'reassign') WHERE current_tenant IS NOT NULL;
SELECT check_name, rows FROM tenant_backfill.preflight('customers', 'reassign') WHERE check_name = 'mismatched';
-- Once an index exists, missing_index is clean.
CREATE INDEX phone_numbers_customer_id_idx ON phone_numbers (customer_id);
SELECT * FROM tenant_backfill.preflight('customers') WHERE check_name = 'missing_index';
SELECT * FROM tenant_backfill.discover('customers') WHERE source = 'phone_numbers'::regclass;
