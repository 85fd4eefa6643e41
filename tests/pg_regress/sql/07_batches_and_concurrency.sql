-- CALL run on tens of thousands of rows: small batches equal run_now on a copy; a run
-- cancelled mid-way resumes to the same state; a second session's writes are never lost.
CREATE EXTENSION IF NOT EXISTS dblink;
-- Errors re-raised by the run procedure carry its line numbers as CONTEXT; not here.
\set SHOW_CONTEXT never
CREATE SCHEMA big;
SET search_path = big, public;
CREATE TABLE accounts (id bigint PRIMARY KEY, tenant_id int, deleted_at timestamptz);
CREATE TABLE events (id bigserial PRIMARY KEY, account_id bigint NOT NULL, tenant_id int);
CREATE INDEX ON events (account_id);
-- 30000 accounts, two thirds without a tenant; three events each, over 50 tenants.
-- Every 97th account has events of two tenants (a conflict); every 101st has none.
INSERT INTO accounts SELECT i, CASE WHEN i % 3 = 0 THEN i % 50 + 1 END FROM generate_series(1, 30000) i;
INSERT INTO events (account_id, tenant_id)
SELECT i, CASE WHEN i % 97 = 0 AND n = 3 THEN (i + 1) % 50 + 1 ELSE i % 50 + 1 END
  FROM generate_series(1, 30000) i, generate_series(1, 3) n WHERE i % 101 <> 0;
CREATE TABLE accounts_copy AS SELECT * FROM accounts;
ALTER TABLE accounts_copy ADD PRIMARY KEY (id);
SELECT tenant_backfill.define('accounts', 'tenant_id');
SELECT tenant_backfill.add_source('accounts', 'events', 'account_id');
SELECT tenant_backfill.define('accounts_copy', 'tenant_id');
SELECT tenant_backfill.add_source('accounts_copy', 'events', 'account_id');
SET client_min_messages = warning;
SELECT * FROM tenant_backfill.preflight('accounts');
-- Cancel a run mid-way (statement_timeout) ...
-- (terse: a cancel that lands in a batch also says how to resume, one between two
-- batches cannot; tests/shell/operated_runs.sh shows the first)
\set VERBOSITY terse
SET statement_timeout = '1s';
CALL tenant_backfill.run('accounts', batch_size => 200, pause_ms => 50);
RESET statement_timeout;
\set VERBOSITY default
-- (Status failed with the error, or running if the cancel landed between two batches;
-- either way the run is unfinished and resumable.)
SELECT status <> 'done' AS interrupted, rows_changed > 0 AS some_done, rows_changed < 19598 AS not_all_done
  FROM tenant_backfill.runs WHERE target = 'accounts'::regclass;
-- ... and call it again: the same run resumes where it stopped.
CALL tenant_backfill.run('accounts', batch_size => 500);
SELECT count(*) AS runs, min(status) AS status, sum(rows_changed) AS changed, sum(left_for_review) AS review
  FROM tenant_backfill.runs WHERE target = 'accounts'::regclass;
-- The same job in one transaction on the copy.
SELECT rows_changed, by_phase, left_for_review FROM tenant_backfill.run_now('accounts_copy');
-- Both reach the same state, row for row.
SELECT count(*) AS differences FROM (
    (SELECT id, tenant_id FROM accounts EXCEPT SELECT id, tenant_id FROM accounts_copy)
    UNION ALL
    (SELECT id, tenant_id FROM accounts_copy EXCEPT SELECT id, tenant_id FROM accounts)) d;
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS left_null FROM accounts;
SELECT * FROM tenant_backfill.validate('accounts');
-- A second session writes tenants while a run goes on. It sets account 1's tenant and
-- commits; it sets account 2's tenant and keeps its transaction (and the row lock) open.
UPDATE accounts SET tenant_id = NULL WHERE id IN (1, 2, 4, 5);
SELECT dblink_connect('app', pg_catalog.format('host=%s port=%s dbname=%s user=postgres',
       current_setting('unix_socket_directories'), current_setting('port'), current_database()));
SELECT dblink_exec('app', 'UPDATE big.accounts SET tenant_id = 49 WHERE id = 1');
SELECT dblink_exec('app', 'BEGIN');
SELECT dblink_exec('app', 'UPDATE big.accounts SET tenant_id = 48 WHERE id = 2');
-- The run skips the locked row, tries it again in later passes, and leaves it.
CALL tenant_backfill.run('accounts', batch_size => 1000);
SELECT rows_changed, pass FROM tenant_backfill.runs WHERE target = 'accounts'::regclass ORDER BY run_id DESC LIMIT 1;
-- A batch logs its rows before it locks them; the locked row was never written, so
-- no backup or audit row of the run names it.
SELECT b.row_key, b.old_value, b.new_value, a.new_value AS audited FROM tenant_backfill.backup b
  FULL JOIN tenant_backfill.audit_log a USING (run_id, row_key)
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'accounts'::regclass)
 ORDER BY 1;
-- The run's record of it: the key its last pass could not write.
SELECT pass, row_key FROM tenant_backfill.run_skipped
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'accounts'::regclass);
SELECT dblink_exec('app', 'COMMIT');
-- Nothing of the application's work was lost.
SELECT id, tenant_id FROM accounts WHERE id IN (1, 2, 4, 5) ORDER BY id;
-- A run writes a row once. A later pass decides again the rows the pass before did not
-- write (run_skipped) and no others: a row the run wrote in its first pass that another
-- session has set back to NULL since is left as it is (a second write would leave two
-- backups of one row). Here the run wrote accounts 10 and 11, its first pass left
-- account 13 (as if another session had held it), and it stopped after that pass, as a
-- run paused then would.
UPDATE accounts SET tenant_id = NULL WHERE id IN (10, 11);
CALL tenant_backfill.run('accounts');
UPDATE tenant_backfill.runs SET status = 'paused', pass = 2, last_key = NULL, finished_at = NULL
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'accounts'::regclass);
INSERT INTO tenant_backfill.run_skipped (run_id, target, pass, row_key)
SELECT max(run_id), 'accounts', 1, '13' FROM tenant_backfill.runs WHERE target = 'accounts'::regclass;
-- Another session sets account 10 back to NULL, and accounts 13 and 15: the later pass
-- writes 13, which its list names, and neither 10 nor 15 (the target's next run decides them).
UPDATE accounts SET tenant_id = NULL WHERE id IN (10, 13, 15);
CALL tenant_backfill.run('accounts');
SELECT id, tenant_id FROM accounts WHERE id IN (10, 11, 13, 15) ORDER BY id;
SELECT status, pass, rows_changed, rows_skipped,
       (SELECT count(*) FROM tenant_backfill.run_skipped s WHERE s.run_id = r.run_id) AS keys_left
  FROM tenant_backfill.runs r
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'accounts'::regclass);
SELECT b.row_key, b.old_value, b.new_value, a.new_value AS audited FROM tenant_backfill.backup b
  FULL JOIN tenant_backfill.audit_log a USING (run_id, row_key)
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'accounts'::regclass)
 ORDER BY 1;
SELECT check_name, ok, expected, actual FROM tenant_backfill.validate('accounts',
       run_id => (SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'accounts'::regclass))
 WHERE check_name IN ('audit_complete', 'backup_complete');
-- Its rollback puts back what it found where it still holds what it wrote: 11 and 13.
SELECT * FROM tenant_backfill.rollback((SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'accounts'::regclass));
SELECT id, tenant_id FROM accounts WHERE id IN (10, 11, 13, 15) ORDER BY id;
CALL tenant_backfill.run('accounts');
-- The same with a timestamptz key, its first pass in Paris and its second in UTC: the
-- text of a skipped key carries the offset of the session that wrote it (in ISO, as the
-- extension prints every value), and the later pass finds the row by it.
CREATE TABLE visits (at timestamptz PRIMARY KEY, tenant_id int);
CREATE TABLE visit_notes (visit_at timestamptz NOT NULL, tenant_id int);
INSERT INTO visits SELECT '2026-01-01 00:00+00'::timestamptz + i * interval '1 hour', NULL FROM generate_series(1, 3) i;
INSERT INTO visit_notes SELECT at, 7 FROM visits;
SELECT tenant_backfill.define('visits', 'tenant_id');
SELECT tenant_backfill.add_source('visits', 'visit_notes', 'visit_at');
SET TimeZone = 'Europe/Paris';
UPDATE visits SET tenant_id = 7 WHERE at = '2026-01-01 02:00+00';
CALL tenant_backfill.run('visits');
UPDATE tenant_backfill.runs SET status = 'paused', pass = 2, last_key = NULL, finished_at = NULL
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'visits'::regclass);
INSERT INTO tenant_backfill.run_skipped (run_id, target, pass, row_key)
SELECT max(run_id), 'visits', 1, '2026-01-01 03:00:00+01' FROM tenant_backfill.runs WHERE target = 'visits'::regclass;
UPDATE visits SET tenant_id = NULL WHERE at = '2026-01-01 02:00+00';
SET TimeZone = 'UTC';
CALL tenant_backfill.run('visits');
SELECT b.row_key, b.new_value FROM tenant_backfill.backup b
 WHERE b.run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'visits'::regclass)
 ORDER BY 1;
SELECT at, tenant_id FROM visits ORDER BY at;
RESET TimeZone;
-- One run per target: while another session holds the target's run lock, CALL run refuses.
SELECT * FROM dblink('app', 'SELECT pg_advisory_lock(1952804450, ''big.accounts''::regclass::oid::int4)::text') AS t(locked text);
\set VERBOSITY terse
CALL tenant_backfill.run('accounts');
SELECT * FROM tenant_backfill.run_now('accounts');
\set VERBOSITY default
SELECT * FROM dblink('app', 'SELECT pg_advisory_unlock_all()::text') AS t(unlocked text);
-- A batch that cannot get its locks is retried with backoff, then the run stops as
-- failed; once the lock is gone the same run resumes and finishes.
UPDATE accounts SET tenant_id = NULL WHERE id IN (7, 8);
SELECT dblink_exec('app', 'BEGIN');
SELECT dblink_exec('app', 'LOCK TABLE big.accounts IN SHARE MODE');
CALL tenant_backfill.run('accounts', lock_timeout_ms => 20);
SELECT status, error FROM tenant_backfill.runs WHERE target = 'accounts'::regclass ORDER BY run_id DESC LIMIT 1;
SELECT dblink_exec('app', 'ROLLBACK');
CALL tenant_backfill.run('accounts', lock_timeout_ms => 20);
SELECT status, rows_changed, error FROM tenant_backfill.runs WHERE target = 'accounts'::regclass ORDER BY run_id DESC LIMIT 1;
SELECT id, tenant_id FROM accounts WHERE id IN (7, 8) ORDER BY id;
SELECT dblink_disconnect('app');
RESET client_min_messages;
