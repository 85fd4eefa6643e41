-- Keep it fixed: the guard trigger in each mode, a safe NOT NULL, and monitoring.
-- This cluster does not preload tenant_backfill, so rejected writes go to the server log.
CREATE SCHEMA fixed;
SET search_path = fixed, public;
\set SHOW_CONTEXT never
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/customers.sql'
\i :fixture
\set ECHO all
SELECT tenant_backfill.define('customers', 'company_id');
SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id');
SELECT tenant_backfill.add_source('customers', 'phone_numbers', 'customer_id');
SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', rule => 'majority');
SELECT rows_changed FROM tenant_backfill.run_now('customers');
-- reject (the default): the statement fails like a NOT NULL violation, naming the key.
SELECT tenant_backfill.enforce('customers');
SET application_name = 'signup-form';
INSERT INTO customers (id, name) VALUES (100, 'no company');
UPDATE customers SET company_id = NULL WHERE id = 40;
-- Rows with a tenant and writes to other columns pass.
INSERT INTO customers (id, name, company_id) VALUES (101, 'with company', 1);
UPDATE customers SET email = 'new@example.com' WHERE id = 16;
SELECT * FROM tenant_backfill.rejection_queue();
-- Without preloading, each rejection is a LOG line in the server log.
SELECT count(*) AS rejections_logged
  FROM regexp_split_to_table(pg_read_file(current_setting('data_directory') || '/../server.log'), E'\n') AS line
 WHERE line LIKE '%LOG:  tenant_backfill: rejected % of fixed.customers with NULL company_id, key %, role postgres, application_name "signup-form"';
RESET application_name;
-- log: the row goes in, and violations has it.
SELECT tenant_backfill.enforce('customers', 'log');
INSERT INTO customers (id, name) VALUES (102, 'logged');
SELECT row_key, column_name, mode, action, operation FROM tenant_backfill.violations
 WHERE target = 'customers'::regclass ORDER BY violation_id;
-- quarantine: the row waits outside the table until it has a tenant.
SELECT tenant_backfill.enforce('customers', 'quarantine');
INSERT INTO customers (id, name, email) VALUES (103, 'waiting', 'wait@example.com');
SELECT count(*) AS in_table FROM customers WHERE id = 103;
SELECT row_key, operation, row_data->>'name' AS name, row_data->>'company_id' AS company_id, released_at
  FROM tenant_backfill.quarantine WHERE target = 'customers'::regclass;
SELECT tenant_backfill.release_quarantine('customers');
SELECT tenant_backfill.release_quarantine('customers', '2');
SELECT id, name, email, company_id FROM customers WHERE id = 103;
SELECT row_key, new_value, phase, source FROM tenant_backfill.audit_log
 WHERE target = 'customers'::regclass AND phase = 'quarantine';
-- assign: from the parent row through a foreign key, else the session's tenant.
SELECT tenant_backfill.define('appointments', 'company_id');
SELECT tenant_backfill.enforce('appointments', 'assign', 'customer_id');
INSERT INTO appointments (customer_id) VALUES (40) RETURNING customer_id, company_id;
INSERT INTO appointments (customer_id) VALUES (18) RETURNING customer_id, company_id;
SET tenant_backfill.tenant = '3';
INSERT INTO appointments (customer_id) VALUES (18) RETURNING customer_id, company_id;
RESET tenant_backfill.tenant;
SELECT tenant_backfill.unenforce('appointments');
-- Monitoring, as a cron job or postgres_exporter reads it.
SELECT * FROM tenant_backfill.monitor('customers', '1 hour');
-- finalize refuses while NULL rows remain, and leaves no constraint behind.
SELECT tenant_backfill.unenforce('customers');
CALL tenant_backfill.finalize('customers');
SELECT conname FROM pg_constraint WHERE conrelid = 'customers'::regclass AND contype = 'c';
-- Once every row has a company (here: the rest decided by hand), it goes through.
CREATE TABLE decisions AS
SELECT id::text AS row_key, '1' AS tenant FROM customers WHERE company_id IS NULL;
SELECT tenant_backfill.apply_decisions('customers', 'decisions');
-- A session holding a lock makes a step wait at most lock_timeout_ms, retry, and give up cleanly.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
SELECT dblink_connect('other', pg_catalog.format('host=%s port=%s dbname=%s user=postgres',
       current_setting('unix_socket_directories'), current_setting('port'), current_database()));
SELECT dblink_exec('other', 'BEGIN');
SELECT dblink_exec('other', 'LOCK TABLE fixed.customers IN ACCESS SHARE MODE');
CALL tenant_backfill.finalize('customers', lock_timeout_ms => 20);
RESET client_min_messages;
SELECT conname FROM pg_constraint WHERE conrelid = 'customers'::regclass AND contype = 'c';
SELECT dblink_exec('other', 'ROLLBACK');
SELECT dblink_disconnect('other');
CALL tenant_backfill.finalize('customers');
SELECT attnotnull FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attname = 'company_id';
SELECT conname FROM pg_constraint WHERE conrelid = 'customers'::regclass AND contype = 'c';
-- Idempotent.
CALL tenant_backfill.finalize('customers');
