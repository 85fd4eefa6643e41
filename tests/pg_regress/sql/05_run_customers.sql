-- The customers case end to end: dry run, run, validate, rollback, run again, the
-- review CSV round trip, orphans soft-deleted and restored.
CREATE SCHEMA run_customers;
SET search_path = run_customers, public;
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\getenv abs_builddir PG_ABS_BUILDDIR
\set fixture :abs_srcdir '/../fixtures/customers.sql'
\i :fixture
\set ECHO all
SELECT tenant_backfill.define('customers', 'company_id');
SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id');
SELECT tenant_backfill.add_source('customers', 'phone_numbers', 'customer_id');
SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', rule => 'majority');
SELECT tenant_backfill.set_override('customers', '27', '3', 'confirmed by support');
-- Progress NOTICEs carry rates that differ from run to run; the runs table has the counts.
SET client_min_messages = warning;
-- A dry run records what it would do and writes nothing, not even a backup.
CALL tenant_backfill.run('customers', batch_size => 10, dry_run => true);
SELECT run_id, kind, mode, dry_run, status, rows_total, rows_done, rows_changed, by_phase, left_for_review, batches
  FROM tenant_backfill.runs WHERE target = 'customers'::regclass ORDER BY run_id;
SELECT count(*) FILTER (WHERE company_id IS NULL) AS still_null FROM customers;
SELECT count(*) AS backup_rows FROM tenant_backfill.backup WHERE target = 'customers'::regclass;
-- The real run, five rows per committed batch.
CALL tenant_backfill.run('customers', batch_size => 5);
SELECT run_id, kind, status, rows_at_start, rows_total, rows_done, rows_changed, by_phase, left_for_review, batches, pass, error
  FROM tenant_backfill.runs WHERE target = 'customers'::regclass ORDER BY run_id;
SELECT run_id, target, kind, status, rows_done, rows_total, rows_per_second > 0 AS has_rate, eta, rows_changed
  FROM tenant_backfill.progress WHERE target = 'customers'::regclass ORDER BY run_id;
-- The plan and the change agree row for row.
SELECT c.id, c.company_id FROM customers c WHERE c.id <= 31 ORDER BY c.id;
-- Every change has its backup and its audit row.
SELECT row_key, column_name, old_value, new_value FROM tenant_backfill.backup
 WHERE target = 'customers'::regclass ORDER BY row_key::int LIMIT 3;
SELECT run_id, row_key, column_name, old_value, new_value, phase, source, rule, evidence, changed_by
  FROM tenant_backfill.audit_log WHERE target = 'customers'::regclass AND row_key IN ('1', '19', '26', '27')
 ORDER BY row_key::int;
-- Prove it: the rows left NULL are the ones in the review queue.
SELECT * FROM tenant_backfill.validate('customers');
-- Undo it: every row back to NULL, and the rollback is a run of its own.
SELECT * FROM tenant_backfill.rollback(2);
SELECT count(*) FILTER (WHERE company_id IS NULL) AS null_again FROM customers;
SELECT run_id, kind, status, rows_changed, by_phase, rolled_back_by, batch_size, pause_ms, lock_timeout_ms, parameters
  FROM tenant_backfill.runs WHERE target = 'customers'::regclass ORDER BY run_id;
SELECT count(*) AS rollback_audit_rows FROM tenant_backfill.audit_log WHERE run_id = 3 AND phase = 'rollback';
-- Rolling back twice is an error.
SELECT * FROM tenant_backfill.rollback(2);
SELECT * FROM tenant_backfill.rollback(1);
SELECT * FROM tenant_backfill.rollback(999);
-- Run again.
CALL tenant_backfill.run('customers', batch_size => 5);
SELECT run_id, status, rows_changed, left_for_review FROM tenant_backfill.runs WHERE run_id = 4;
-- The review CSV round trip: export, a human fills in tenants, load, apply.
-- (A DBA would use \copy to a file on the client; the test writes one on the server.)
\set review_csv :abs_builddir '/results/05_review.csv'
COPY (SELECT * FROM tenant_backfill.review_queue('customers')) TO :'review_csv' CSV HEADER;
CREATE TABLE review (row_key text, reason text, evidence jsonb, row_data jsonb, tenant text);
COPY review FROM :'review_csv' CSV HEADER;
SELECT row_key, reason, tenant FROM review ORDER BY row_key::int;
-- Support decided 16, 17, 24 and 28; 18 and 29 stay open (empty tenant).
UPDATE review SET tenant = '1' WHERE row_key IN ('16', '24');
UPDATE review SET tenant = '2' WHERE row_key IN ('17', '28');
-- A mistake in the file is reported and nothing is applied.
INSERT INTO review (row_key, tenant) VALUES ('9999', '1');
SELECT tenant_backfill.apply_decisions('customers', 'review');
DELETE FROM review WHERE row_key = '9999';
UPDATE review SET tenant = 'Acme' WHERE row_key = '18';
SELECT tenant_backfill.apply_decisions('customers', 'review');
UPDATE review SET tenant = NULL WHERE row_key = '18';
SELECT id, company_id FROM customers WHERE id IN (16, 17, 18, 24, 28) ORDER BY id;
SELECT tenant_backfill.apply_decisions('customers', 'review');
SELECT id, company_id FROM customers WHERE id IN (16, 17, 18, 24, 28) ORDER BY id;
SELECT row_key, old_value, new_value, phase, source, rule FROM tenant_backfill.audit_log
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE kind = 'apply_decisions') ORDER BY row_key::int;
-- Orphans: soft-deleted, audited, and reversible.
SELECT tenant_backfill.soft_delete_orphans('customers', dry_run => true);
SELECT count(*) AS deleted FROM customers WHERE deleted_at IS NOT NULL;
SELECT tenant_backfill.soft_delete_orphans('customers');
SELECT id, company_id, deleted_at IS NOT NULL AS deleted FROM customers WHERE id IN (29, 30, 31) ORDER BY id;
SELECT row_key, column_name, old_value, phase, source FROM tenant_backfill.audit_log
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE kind = 'soft_delete_orphans') ORDER BY row_key;
-- Soft-deleted orphans are documented exceptions; 18 and 29 are still open.
SELECT * FROM tenant_backfill.validate('customers');
SELECT r.* FROM tenant_backfill.runs x, tenant_backfill.rollback(x.run_id) r
 WHERE x.kind = 'soft_delete_orphans' AND NOT x.dry_run;
SELECT count(*) AS deleted FROM customers WHERE deleted_at IS NOT NULL;
SELECT run_id, kind, dry_run, status, rows_changed, by_phase FROM tenant_backfill.runs WHERE run_id >= 4 ORDER BY run_id;
RESET client_min_messages;
