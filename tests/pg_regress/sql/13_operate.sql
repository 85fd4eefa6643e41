-- Operating a long run: start it in the background, wait for it, pause, resume and
-- cancel it, and what each refuses. (tests/shell/operated_runs.sh shows what needs other
-- sessions: clients that go away, killed workers, throttling by a replica.)
CREATE SCHEMA operate;
SET search_path = operate, public;
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/customers.sql'
\i :fixture
\set ECHO all
\set VERBOSITY default
\set SHOW_CONTEXT never
SET client_min_messages = warning;
SELECT tenant_backfill.define('customers', 'company_id');
SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id');
SELECT tenant_backfill.add_source('customers', 'phone_numbers', 'customer_id');

-- Bad arguments are refused before anything starts.
SELECT tenant_backfill.start(NULL);
SELECT tenant_backfill.start('customers', mode => 'repair');
SELECT tenant_backfill.start('customers', batch_size => 0);
SELECT tenant_backfill.start('customers', target_batch_ms => 0);
SELECT tenant_backfill.start('customers', max_replica_lag => '-1 second');
SELECT tenant_backfill.start('customers', max_replica_lag_bytes => -1);
SELECT tenant_backfill.start('customers', workers => 0);
SELECT tenant_backfill.start('customers', workers => 5);
-- Each worker takes a slot of max_worker_processes: only a superuser raises the cap.
SHOW tenant_backfill.max_workers;
CREATE ROLE operate_nobody;
SET ROLE operate_nobody;
SET tenant_backfill.max_workers = 8;
RESET ROLE;
DROP ROLE operate_nobody;
SELECT tenant_backfill.start('companies');
SELECT count(*) AS runs_started FROM tenant_backfill.runs WHERE target_name = 'operate.customers';

-- Started in the background: its id comes back at once, wait blocks until it ends.
SELECT tenant_backfill.start('customers', batch_size => 4) AS run \gset
SELECT tenant_backfill.wait(:run);
SELECT run_id = :run AS same_run, kind, status, state, alive, pid, throttled_by, batch_size, percent,
       rows_done, rows_total, rows_changed, eta, background, error
  FROM tenant_backfill.progress WHERE run_id = :run;
SELECT batches, adaptive_batch, pass, started_by FROM tenant_backfill.runs WHERE run_id = :run;
SELECT count(*) FILTER (WHERE company_id IS NULL) AS still_null FROM customers;
-- The same backup and audit as every run, and validate proves it.
SELECT check_name, ok FROM tenant_backfill.validate('customers', :run)
 WHERE check_name IN ('audit_complete', 'backup_complete', 'row_count_unchanged');
-- A timeout on a finished run returns at once.
SELECT tenant_backfill.wait(:run, '1 second'), clock_timestamp() - now() < interval '0.5 seconds' AS at_once;

-- What an ended run refuses, and runs that are not runs of committed batches.
SELECT tenant_backfill.pause(:run);
SELECT tenant_backfill.resume(:run);
SELECT tenant_backfill.cancel(:run);
SELECT tenant_backfill.pause(-1);
SELECT tenant_backfill.wait(NULL);
SELECT * FROM tenant_backfill.rollback(:run);
SELECT max(run_id) AS rollback_run FROM tenant_backfill.runs \gset
SELECT tenant_backfill.pause(:rollback_run);

-- Two workers split the first pass into two parts, walked each with its own cursor.
SELECT tenant_backfill.start('customers', workers => 2, batch_size => 3) AS split \gset
SELECT tenant_backfill.wait(:split);
SELECT status, workers, rows_done, rows_total, rows_changed FROM tenant_backfill.runs WHERE run_id = :split;
SELECT part, after_key, up_to_key, last_key, done FROM tenant_backfill.run_parts WHERE run_id = :split ORDER BY part;
SELECT check_name, ok FROM tenant_backfill.validate('customers', :split)
 WHERE check_name IN ('audit_complete', 'backup_complete');
SELECT * FROM tenant_backfill.rollback(:split);

-- An adaptive run sizes its batches toward target_batch_ms.
SELECT tenant_backfill.start('customers', batch_size => NULL, target_batch_ms => 1000) AS adaptive \gset
SELECT tenant_backfill.wait(:adaptive);
SELECT status, batch_size >= 100 AS sized, adaptive_batch, target_batch_ms FROM tenant_backfill.runs WHERE run_id = :adaptive;
SELECT tenant_backfill.cancel(:adaptive);

-- CALL run takes the same new settings in the foreground; batch_size NULL is adaptive.
SELECT * FROM tenant_backfill.rollback(:adaptive);
CALL tenant_backfill.run('customers', batch_size => NULL, max_replica_lag => '1 minute', max_replica_lag_bytes => 1048576);
SELECT r.kind, r.status, p.state, p.alive, p.pid, r.adaptive_batch, r.max_replica_lag, r.max_replica_lag_bytes,
       r.max_transaction_age, r.background
  FROM tenant_backfill.runs r JOIN tenant_backfill.progress p USING (run_id)
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs);
CALL tenant_backfill.run('customers', max_replica_lag => '-5 minutes');
CALL tenant_backfill.run('customers', target_batch_ms => -1);
SET tenant_backfill.max_transaction_age = '10min';
SHOW tenant_backfill.max_transaction_age;
-- (Postgres 15 and 18 word the range differently: the SQLSTATE only.)
\set VERBOSITY sqlstate
SET tenant_backfill.max_transaction_age = -1;
\set VERBOSITY default
RESET tenant_backfill.max_transaction_age;

-- Paused: the worker stops after its current batch and holds nothing.
SELECT * FROM tenant_backfill.rollback((SELECT max(run_id) FROM tenant_backfill.runs WHERE kind = 'run'));
SELECT tenant_backfill.start('customers', batch_size => 2, pause_ms => 200) AS paused \gset
SELECT tenant_backfill.pause(:paused);
SELECT tenant_backfill.wait(:paused);
SELECT status, state, alive, pid, rows_done < rows_total AS part_done FROM tenant_backfill.progress WHERE run_id = :paused;
SELECT tenant_backfill.pause(:paused);
-- start resumes the target's unfinished run, as CALL run does; resume of a running run refuses.
SELECT tenant_backfill.start('customers', batch_size => 2, pause_ms => 100) = :paused AS start_resumes_it;
\set VERBOSITY terse
SELECT tenant_backfill.resume(:paused);
\set VERBOSITY default
SELECT tenant_backfill.wait(:paused);
SELECT status, rows_done, rows_total FROM tenant_backfill.progress WHERE run_id = :paused;
