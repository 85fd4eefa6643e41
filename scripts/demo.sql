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

-- 3. Run it: committed batches of 10 rows, a NOTICE per batch, safe on a live system.
CALL tenant_backfill.run('customers', batch_size => 10);
SELECT run_id, status, rows_done, rows_total, rows_changed, left_for_review FROM tenant_backfill.progress;
SELECT run_id, row_key, old_value, new_value, phase, source, rule, evidence
  FROM tenant_backfill.audit_log ORDER BY audit_id LIMIT 5;

-- 4. Prove it. The rows still NULL are the ones waiting for a human.
SELECT * FROM tenant_backfill.validate('customers');

-- 5. Support decides two of the conflicts (in real life: \copy review.csv out and back in).
CREATE TABLE review AS SELECT * FROM tenant_backfill.review_queue('customers');
UPDATE review SET tenant = '1' WHERE row_key = '16';
UPDATE review SET tenant = '2' WHERE row_key = '17';
SELECT tenant_backfill.apply_decisions('customers', 'review');

-- 6. Orphans (no related rows anywhere) are soft-deleted, audited and reversible.
SELECT tenant_backfill.soft_delete_orphans('customers');
SELECT * FROM tenant_backfill.validate('customers');

-- 7. Undo the main run: every row it changed goes back, from its backup.
SELECT * FROM tenant_backfill.rollback(1);
-- (16 and 17 keep the tenants support gave them: that was run 2, not run 1.)
SELECT count(*) AS customers_null_again FROM customers WHERE company_id IS NULL;
SELECT run_id, kind, status, rows_changed, by_phase FROM tenant_backfill.runs ORDER BY run_id;

-- 8. Keep it fixed: run again, let support finish the review, then guard and finalize.
SELECT rows_changed FROM tenant_backfill.run_now('customers');
UPDATE review SET tenant = '1' WHERE tenant IS NULL AND reason <> 'orphan';
SELECT tenant_backfill.apply_decisions('customers', 'review');
DELETE FROM customers WHERE company_id IS NULL AND deleted_at IS NOT NULL;
SELECT tenant_backfill.enforce('customers');
\set ON_ERROR_STOP 0
INSERT INTO customers (id, name) VALUES (100, 'a new customer without a company');
\set ON_ERROR_STOP 1
CALL tenant_backfill.finalize('customers');
\d customers
SELECT * FROM tenant_backfill.monitor('customers');
