-- A DBA's first session with tenant_backfill, on the runbook's data set:
-- 60 customers, 31 of them with a NULL company_id.
\pset footer off
\set ECHO none
\set QUIET on
\i fixtures/customers.sql
\set QUIET off
\set ECHO queries
CREATE EXTENSION tenant_backfill;

-- 1. Describe the job. The key defaults to the primary key.
SELECT tenant_backfill.define('customers', 'company_id');
-- What points at customers and carries a company_id?
SELECT * FROM tenant_backfill.discover('customers');
-- Appointments are authoritative, phone numbers the fallback, calls decide by majority.
SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id');
SELECT tenant_backfill.add_source('customers', 'phone_numbers', 'customer_id');
SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', rule => 'majority');
-- Support confirmed customer 27 belongs to City Clinic (3).
SELECT tenant_backfill.set_override('customers', '27', '3', 'confirmed by support');

-- 2. Look before you leap: the counts first ...
SELECT * FROM tenant_backfill.preflight('customers');
-- ... then every NULL customer and what would happen to it ...
SELECT * FROM tenant_backfill.plan('customers');
-- ... the rows where the appointments disagree ...
SELECT * FROM tenant_backfill.conflicts('customers');
-- ... and what is left for a human, as it would go to review.csv.
COPY (SELECT row_key, reason, evidence, row_data->>'name' AS name, tenant
        FROM tenant_backfill.review_queue('customers')) TO STDOUT WITH (FORMAT csv, HEADER);

-- Nothing has been written yet.
SELECT count(*) AS customers_still_null FROM customers WHERE company_id IS NULL;
