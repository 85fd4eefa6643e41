-- Robustness: what an operator gets for a call in the wrong place, a NULL argument, a
-- name with `$` in it, and a rollback under the guard; nothing is left behind.
CREATE SCHEMA robust;
SET search_path = robust, public;
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/customers.sql'
\i :fixture
\set ECHO all
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT tenant_backfill.define('customers', 'company_id');
SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id');

-- CALL run commits between batches: inside a transaction block it refuses before it
-- takes anything, with the ways to call it outside one.
BEGIN;
CALL tenant_backfill.run('customers');
ROLLBACK;
-- Several statements in one query string are one implicit transaction block too.
SELECT 1 AS first \; CALL tenant_backfill.run('customers');
-- From a function (or a CALL a function makes) it cannot commit either.
CREATE FUNCTION run_from_a_function() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CALL tenant_backfill.run('customers');
END $$;
SELECT run_from_a_function();
BEGIN;
CALL tenant_backfill.finalize('customers');
ROLLBACK;
-- Nothing was started and no run lock is held: the next CALL runs.
SELECT count(*) AS runs FROM tenant_backfill.runs WHERE target = 'customers'::regclass;
SELECT count(*) AS run_locks_held FROM pg_locks WHERE locktype = 'advisory' AND classid = 1952804450;
SET client_min_messages = warning;
CALL tenant_backfill.run('customers', batch_size => 100);
RESET client_min_messages;
SELECT status, rows_changed FROM tenant_backfill.runs WHERE target = 'customers'::regclass;

-- A NULL where a value is needed is 22004, naming the argument; a NULL flag is never
-- taken for "do it".
SELECT * FROM tenant_backfill.rollback(NULL);
SELECT * FROM tenant_backfill.rollback(1, force => NULL);
SELECT tenant_backfill.undefine(NULL);
SELECT tenant_backfill.unenforce(NULL);
SELECT tenant_backfill.apply_decisions(NULL, NULL);
SELECT tenant_backfill.define('customers', NULL);
SELECT tenant_backfill.add_source('customers', NULL, 'customer_id');
SELECT tenant_backfill.override_for('customers', NULL);
SELECT * FROM tenant_backfill.plan(NULL);
SELECT * FROM tenant_backfill.preflight(NULL);
SELECT * FROM tenant_backfill.validate(NULL);
SELECT * FROM tenant_backfill.monitor(NULL);
CALL tenant_backfill.finalize(NULL);
CALL tenant_backfill.run(NULL);
SELECT tenant_backfill.soft_delete_orphans('customers', dry_run => NULL);
SELECT * FROM tenant_backfill.run_now('customers', dry_run => NULL);
CALL tenant_backfill.run('customers', dry_run => NULL);
SELECT count(*) AS deleted FROM customers WHERE deleted_at IS NOT NULL;
-- The guard is a trigger function, and says so when called as a plain one.
SELECT tenant_backfill.guard();
-- Only your own tables: not a system catalog, not the extension's, not a view.
SELECT tenant_backfill.define('pg_catalog.pg_class', 'relname');
SELECT tenant_backfill.define('tenant_backfill.runs', 'target');
CREATE VIEW customers_view AS SELECT * FROM customers;
SELECT tenant_backfill.define('customers_view', 'company_id');
SELECT tenant_backfill.add_source('customers', 'tenant_backfill.audit_log', 'run_id', 'row_key');
-- The tenant setting is known once the library is loaded.
SHOW tenant_backfill.tenant;
BEGIN;
SET LOCAL tenant_backfill.tenant = '3';
SHOW tenant_backfill.tenant;
COMMIT;
SHOW tenant_backfill.tenant;

-- Names with `$`, quotes and non-ASCII letters, everywhere a name goes. A `$1` inside
-- a quoted identifier is SQL text, never a placeholder.
CREATE SCHEMA "robust$1";
CREATE TABLE "robust$1"."acct$1" ("id$2" int PRIMARY KEY, "org$1" int, "naïve ""name""" text);
CREATE TABLE "robust$1"."pièce$1" (id int PRIMARY KEY, "acct$1_id" int REFERENCES "robust$1"."acct$1", "org$1" int);
INSERT INTO "robust$1"."acct$1" SELECT g, NULL, 'a' || g FROM generate_series(1, 6) g;
INSERT INTO "robust$1"."pièce$1" SELECT g, (g - 1) % 6 + 1, ((g - 1) % 6) % 2 + 1 FROM generate_series(1, 18) g;
SELECT tenant_backfill.define('"robust$1"."acct$1"', 'org$1');
SELECT tenant_backfill.add_source('"robust$1"."acct$1"', '"robust$1"."pièce$1"', 'acct$1_id');
SELECT * FROM tenant_backfill.discover('"robust$1"."acct$1"');
SELECT row_key, proposed_tenant, action, source, evidence FROM tenant_backfill.plan('"robust$1"."acct$1"');
SELECT check_name, rows, detail FROM tenant_backfill.preflight('"robust$1"."acct$1"')
 WHERE check_name IN ('null_tenant', 'by_phase_1', 'orphans');
SELECT tenant_backfill.set_override('"robust$1"."acct$1"', '6', '2', 'a $1 in a note');
SELECT tenant_backfill.override_for('"robust$1"."acct$1"', '6');
SELECT run_id, rows_changed, by_phase, left_for_review FROM tenant_backfill.run_now('"robust$1"."acct$1"') \gset
SELECT "id$2", "org$1" FROM "robust$1"."acct$1" ORDER BY 1;
SELECT check_name, ok, expected, actual FROM tenant_backfill.validate('"robust$1"."acct$1"');

-- A rollback passes the target's own guard (its writes put NULLs back), says so, and
-- the guard goes on stopping everyone else's NULLs.
SELECT tenant_backfill.enforce('"robust$1"."acct$1"');
SELECT * FROM tenant_backfill.rollback(:run_id);
SELECT count(*) AS null_again FROM "robust$1"."acct$1" WHERE "org$1" IS NULL;
INSERT INTO "robust$1"."acct$1" VALUES (7, NULL, 'new');
UPDATE "robust$1"."acct$1" SET "org$1" = 1 WHERE "id$2" = 1;
UPDATE "robust$1"."acct$1" SET "org$1" = NULL WHERE "id$2" = 1;
-- Filled again, then made NOT NULL: a rollback that would put NULLs back now refuses,
-- before it writes anything.
SET client_min_messages = warning;
CALL tenant_backfill.run('"robust$1"."acct$1"');
RESET client_min_messages;
SELECT max(run_id) AS fill_run FROM tenant_backfill.runs WHERE kind = 'run' AND target = '"robust$1"."acct$1"'::regclass \gset
CALL tenant_backfill.finalize('"robust$1"."acct$1"');
SELECT * FROM tenant_backfill.rollback(:fill_run);
SELECT count(*) AS still_null FROM "robust$1"."acct$1" WHERE "org$1" IS NULL;
SELECT status FROM tenant_backfill.runs WHERE run_id = :fill_run;

-- The guard holds against a trigger that fires after it, even on an UPDATE that does
-- not name the tenant column.
CREATE TABLE gx (id int PRIMARY KEY, org int, note text);
SELECT tenant_backfill.define('gx', 'org');
SET client_min_messages = warning;
SELECT tenant_backfill.enforce('gx');
RESET client_min_messages;
CREATE FUNCTION wipe_the_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.note = 'wipe' THEN
        NEW.org := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER zz_wipe BEFORE INSERT OR UPDATE ON gx FOR EACH ROW EXECUTE FUNCTION wipe_the_tenant();
INSERT INTO gx VALUES (1, 1, 'keep');
INSERT INTO gx VALUES (2, 1, 'wipe');
UPDATE gx SET note = 'wipe' WHERE id = 1;
SELECT * FROM gx ORDER BY id;
DROP TRIGGER zz_wipe ON gx;
-- Legacy inheritance children get the guard: those there when enforce runs, and those
-- created or attached later.
CREATE TABLE gy (id int PRIMARY KEY, org int);
CREATE TABLE gy_child () INHERITS (gy);
SELECT tenant_backfill.define('gy', 'org');
SET client_min_messages = warning;
SELECT tenant_backfill.enforce('gy');
RESET client_min_messages;
INSERT INTO gy_child VALUES (1, NULL);
CREATE TABLE gx_child (extra text) INHERITS (gx);
INSERT INTO gx_child VALUES (10, NULL, 'x', 'y');
CREATE TABLE gx_adopted (id int NOT NULL, org int, note text);
ALTER TABLE gx_adopted INHERIT gx;
INSERT INTO gx_adopted VALUES (11, NULL, 'x');
INSERT INTO gx_adopted VALUES (12, 3, 'x');
SELECT tgrelid::regclass AS guarded, pg_catalog.count(*) AS triggers
  FROM pg_trigger WHERE tgname LIKE 'tenant_backfill_guard%' AND tgrelid::regclass::text LIKE 'g%'
 GROUP BY 1 ORDER BY 1::text;
SELECT tenant_backfill.unenforce('gy');
SELECT count(*) AS triggers_left_on_gy FROM pg_trigger WHERE tgname LIKE 'tenant_backfill_guard%' AND tgrelid IN ('gy'::regclass, 'gy_child'::regclass);
-- A renamed tenant column stays guarded: the guard follows it by number, also when
-- another column takes its old name, and names it as it is called now.
ALTER TABLE gx RENAME org TO tenant_id;
ALTER TABLE gx ADD COLUMN org int;
INSERT INTO gx (id, tenant_id, org, note) VALUES (3, NULL, 5, 'x');
INSERT INTO gx (id, tenant_id, org, note) VALUES (4, 7, NULL, 'x');
-- The configuration notices it too, rather than guard or fill the new column, and
-- says what to do.
SELECT tenant_backfill.enforce('gx');
SELECT * FROM tenant_backfill.plan('gx');
SELECT tenant_backfill.define('gx', 'tenant_id');
SET client_min_messages = warning;
SELECT tenant_backfill.enforce('gx');
RESET client_min_messages;
INSERT INTO gx (id, tenant_id, org, note) VALUES (5, NULL, 5, 'x');

-- Dropped tables leave the configuration with a NOTICE; the runs keep the name.
DROP TABLE "robust$1"."pièce$1";
SELECT count(*) AS sources_left FROM tenant_backfill.sources WHERE target = '"robust$1"."acct$1"'::regclass;
DROP TABLE "robust$1"."acct$1";
SELECT count(*) AS targets_named_acct FROM tenant_backfill.targets WHERE target::text LIKE '%acct%';
SELECT DISTINCT target_name FROM tenant_backfill.runs WHERE target_name LIKE '%acct%';
DROP TABLE gx CASCADE;

-- Source tenants that do not cast to the target's type: preflight counts them (and
-- everything else as if they were not there); what decides stops at them first, naming
-- source, column, key and value, and writes nothing.
CREATE DOMAIN small_org AS int CHECK (VALUE < 100);
CREATE TABLE bx (id int PRIMARY KEY, org small_org);
CREATE TABLE bx_notes (id int PRIMARY KEY, bx_id int, org text);
CREATE TABLE bx_moves (id int PRIMARY KEY, bx_id int, org bigint);
INSERT INTO bx SELECT g, NULL FROM generate_series(1, 5) g;
INSERT INTO bx_notes VALUES (1, 1, '1'), (2, 2, '2'), (3, 3, 'abc'), (4, 4, ' 7 '), (5, 5, NULL);
INSERT INTO bx_moves VALUES (1, 1, 1), (2, 5, 5000000000), (3, 4, 150);
SELECT tenant_backfill.define('bx', 'org');
SELECT tenant_backfill.add_source('bx', 'bx_notes', 'bx_id');
SELECT tenant_backfill.add_source('bx', 'bx_moves', 'bx_id', rule => 'majority');
SELECT check_name, rows, detail FROM tenant_backfill.preflight('bx')
 WHERE check_name IN ('by_phase_1', 'by_phase_2', 'source_bad_tenant');
SELECT * FROM tenant_backfill.plan('bx');
SELECT * FROM tenant_backfill.run_now('bx');
SET client_min_messages = warning;
CALL tenant_backfill.run('bx');
RESET client_min_messages;
SELECT status, rows_changed, error FROM tenant_backfill.runs WHERE target = 'bx'::regclass;
SELECT count(*) AS still_null FROM bx WHERE org IS NULL;
SELECT check_name, ok, actual, detail FROM tenant_backfill.validate('bx') WHERE check_name = 'sources_agree';
-- Once corrected, the same run resumes and fills what the evidence decides.
UPDATE bx_notes SET org = '3' WHERE id = 3;
UPDATE bx_moves SET org = NULL WHERE id IN (2, 3);
SET client_min_messages = warning;
CALL tenant_backfill.run('bx');
RESET client_min_messages;
SELECT id, org FROM bx ORDER BY id;
-- A key whose type changed under a configured source is named, not a bare 42883.
ALTER TABLE bx_notes ALTER COLUMN bx_id TYPE uuid USING NULL;
SELECT * FROM tenant_backfill.plan('bx');

-- The DDL event trigger stays out of ordinary roles' way: a role with no rights on the
-- extension creates and alters its own tables.
CREATE ROLE robust_ddl NOLOGIN;
GRANT USAGE, CREATE ON SCHEMA robust TO robust_ddl;
SET ROLE robust_ddl;
CREATE TABLE robust.plain_table (id int);
ALTER TABLE robust.plain_table ADD COLUMN note text;
RESET ROLE;
-- A child created after its guarded parent's tenant column was renamed gets the guard
-- on the column as it is called now.
CREATE TABLE gz (id int PRIMARY KEY, org int);
SELECT tenant_backfill.define('gz', 'org');
SET client_min_messages = warning;
SELECT tenant_backfill.enforce('gz');
RESET client_min_messages;
ALTER TABLE gz RENAME org TO org_id;
CREATE TABLE gz_late () INHERITS (gz);
INSERT INTO gz_late VALUES (1, NULL);
-- A partition whose columns come in another order is guarded on its own tenant column,
-- by the BEFORE trigger and by the backstop alike.
CREATE TABLE px (id int PRIMARY KEY, org int, note text) PARTITION BY RANGE (id);
CREATE TABLE px_low (note text, org int, id int NOT NULL);
ALTER TABLE px ATTACH PARTITION px_low FOR VALUES FROM (0) TO (100);
CREATE TABLE px_src (id int PRIMARY KEY, px_id int, org int);
INSERT INTO px VALUES (1, NULL, 'a'), (2, NULL, 'b');
INSERT INTO px_src VALUES (1, 1, 4), (2, 2, 5);
SELECT tenant_backfill.define('px', 'org');
SELECT tenant_backfill.add_source('px', 'px_src', 'px_id');
SELECT run_id AS px_run FROM tenant_backfill.run_now('px') \gset
SET client_min_messages = warning;
SELECT tenant_backfill.enforce('px');
RESET client_min_messages;
INSERT INTO px VALUES (3, NULL, 'c');
CREATE TRIGGER zz_wipe_px BEFORE INSERT OR UPDATE ON px FOR EACH ROW EXECUTE FUNCTION wipe_the_tenant();
INSERT INTO px VALUES (4, 1, 'wipe');
DROP TRIGGER zz_wipe_px ON px;
-- A rollback of the partitioned target passes the guard of the partition that holds
-- its rows.
SELECT * FROM tenant_backfill.rollback(:px_run);
SELECT id, org FROM px ORDER BY id;
-- An error raised by the application's own code while a run writes (a trigger, a
-- foreign key: both run under SPI connections of their own) stops the call with that
-- error, and nothing of the statement stays (nor of run_now's earlier ranges: its
-- transaction is the caller's); CALL run keeps the batches it committed. Before each
-- SPI call of the extension ran in a subtransaction of its own, the error left the
-- trigger's SPI connection behind, and re-raising it crashed the server.
CREATE TABLE refusing (id int PRIMARY KEY, org int);
CREATE TABLE refusing_src (refusing_id int, org int);
INSERT INTO refusing SELECT i, NULL FROM generate_series(1, 30) i;
INSERT INTO refusing_src SELECT i, i % 3 + 1 FROM generate_series(1, 30) i;
SELECT tenant_backfill.define('refusing', 'org');
SELECT tenant_backfill.add_source('refusing', 'refusing_src', 'refusing_id');
-- (A second source, by majority: with its per-tenant subquery in the statement, the
-- crash was certain.)
CREATE TABLE refusing_calls (refusing_id int, org int);
INSERT INTO refusing_calls SELECT i, 1 FROM generate_series(1, 30) i;
SELECT tenant_backfill.add_source('refusing', 'refusing_calls', 'refusing_id', rule => 'majority');
CREATE FUNCTION refuse_org_3() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id > 15 AND NEW.org = 3 AND EXISTS (SELECT 1 FROM robust.refusing_src WHERE refusing_id = NEW.id) THEN
        RAISE EXCEPTION 'org 3 is closed' USING ERRCODE = 'P0001', HINT = 'ask the application team';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_org_3 BEFORE UPDATE ON refusing FOR EACH ROW EXECUTE FUNCTION refuse_org_3();
\set VERBOSITY terse
SELECT * FROM tenant_backfill.run_now('refusing');
SET tenant_backfill.run_now_statement_rows = 4;
SELECT * FROM tenant_backfill.run_now('refusing');
RESET tenant_backfill.run_now_statement_rows;
-- (Rows 1 to 15 pass: CALL run's first batch commits, its second stops at row 17.)
SET client_min_messages = warning;
CALL tenant_backfill.run('refusing', batch_size => 10);
RESET client_min_messages;
\set VERBOSITY default
SELECT count(*) AS still_null FROM refusing WHERE org IS NULL;
SELECT kind, status, rows_changed, error FROM tenant_backfill.runs
 WHERE target = 'refusing'::regclass ORDER BY run_id;
-- A foreign key the new tenants break: its check runs in a trigger under SPI too.
DROP TRIGGER refuse_org_3 ON refusing;
CREATE TABLE orgs (id int PRIMARY KEY);
INSERT INTO orgs VALUES (1), (2);
ALTER TABLE refusing ADD FOREIGN KEY (org) REFERENCES orgs NOT VALID;
\set VERBOSITY terse
SELECT * FROM tenant_backfill.run_now('refusing');
\set VERBOSITY default
INSERT INTO orgs VALUES (3);
-- The server is up, and the same run goes through once the key is there (the CALL's
-- failed run is resumed and finishes).
SET client_min_messages = warning;
CALL tenant_backfill.run('refusing', batch_size => 10);
RESET client_min_messages;
SELECT count(*) AS still_null FROM refusing WHERE org IS NULL;
