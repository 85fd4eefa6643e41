-- Safety rules of the write path: privileges are checked before anything is written,
-- names that need quoting and uuid, bigint, int and text keys and tenants all work.
SET client_min_messages = warning;
-- 03_quoted_names left its own "Sales Ops": forget that target and start afresh.
SELECT tenant_backfill.undefine('"Sales Ops"."client; DROP TABLE x--"');
DROP SCHEMA "Sales Ops" CASCADE;
\set SHOW_CONTEXT never
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/sales_ops.sql'
\i :fixture
\set ECHO all
SELECT tenant_backfill.define('"Sales Ops"."client; DROP TABLE x--"', 'Tenant Id');
SELECT tenant_backfill.add_source('"Sales Ops"."client; DROP TABLE x--"', '"Sales Ops"."Deal Log"', 'Account Ref');
-- A role that may read everything but not update the target gets 42501 before
-- anything is written.
CREATE ROLE tb_reader;
-- No grant on the extension: rights on the user tables are all a role needs.
GRANT USAGE ON SCHEMA "Sales Ops" TO tb_reader;
GRANT SELECT ON "Sales Ops"."client; DROP TABLE x--", "Sales Ops"."Deal Log" TO tb_reader;
SET ROLE tb_reader;
CALL tenant_backfill.run('"Sales Ops"."client; DROP TABLE x--"');
SELECT * FROM tenant_backfill.run_now('"Sales Ops"."client; DROP TABLE x--"');
RESET ROLE;
-- With UPDATE but without SELECT on the source, the error names the source.
GRANT UPDATE ("Tenant Id") ON "Sales Ops"."client; DROP TABLE x--" TO tb_reader;
REVOKE SELECT ON "Sales Ops"."Deal Log" FROM tb_reader;
SET ROLE tb_reader;
CALL tenant_backfill.run('"Sales Ops"."client; DROP TABLE x--"');
SELECT * FROM tenant_backfill.run_now('"Sales Ops"."client; DROP TABLE x--"');
RESET ROLE;
SELECT count(*) AS runs_recorded FROM tenant_backfill.runs WHERE target = '"Sales Ops"."client; DROP TABLE x--"'::regclass;
SELECT count(*) AS tenants_written FROM "Sales Ops"."client; DROP TABLE x--" WHERE "Tenant Id" IS NOT NULL;
-- With both, the role can run it.
GRANT SELECT ON "Sales Ops"."Deal Log" TO tb_reader;
SET ROLE tb_reader;
CALL tenant_backfill.run('"Sales Ops"."client; DROP TABLE x--"', batch_size => 2);
RESET ROLE;
SELECT "Account Id", "Display Name", "Tenant Id" FROM "Sales Ops"."client; DROP TABLE x--" ORDER BY "Account Id";
SELECT row_key, old_value, new_value, phase, changed_by FROM tenant_backfill.audit_log
 WHERE target = '"Sales Ops"."client; DROP TABLE x--"'::regclass ORDER BY row_key;
-- uuid keys in the review file, a bigint tenant decided by hand.
CREATE TABLE "Sales Ops"."Decisions" (row_key uuid, tenant bigint);
INSERT INTO "Sales Ops"."Decisions" VALUES ('00000000-0000-4000-8000-000000000005', 9000000000000000005);
SELECT tenant_backfill.apply_decisions('"Sales Ops"."client; DROP TABLE x--"', '"Sales Ops"."Decisions"');
SELECT * FROM tenant_backfill.validate('"Sales Ops"."client; DROP TABLE x--"');
-- The soft-delete column must exist.
SELECT tenant_backfill.soft_delete_orphans('"Sales Ops"."client; DROP TABLE x--"');
-- Rolling back restores uuid-keyed rows exactly.
SELECT r.* FROM tenant_backfill.runs x, tenant_backfill.rollback(x.run_id) r
 WHERE x.target = '"Sales Ops"."client; DROP TABLE x--"'::regclass AND x.kind = 'run';
SELECT "Account Id", "Tenant Id" FROM "Sales Ops"."client; DROP TABLE x--" ORDER BY "Account Id";
-- Text keys and text tenants.
CREATE TABLE notes (code text PRIMARY KEY, workspace text);
CREATE TABLE note_edits (note_code text REFERENCES notes, workspace text);
INSERT INTO notes VALUES ('n-a', NULL), ('n-b', NULL), ('n''c', NULL);
INSERT INTO note_edits VALUES ('n-a', 'acme'), ('n-b', 'globex'), ('n''c', 'o''hara');
SELECT tenant_backfill.define('notes', 'workspace');
SELECT tenant_backfill.add_source('notes', 'note_edits', 'note_code');
SELECT rows_changed, by_phase FROM tenant_backfill.run_now('notes');
SELECT * FROM notes ORDER BY code;
-- Bad arguments.
CALL tenant_backfill.run('notes', batch_size => 0);
CALL tenant_backfill.run('notes', mode => 'repair');
SELECT * FROM tenant_backfill.validate('notes', 999999);
SELECT * FROM tenant_backfill.rollback(999999);
RESET client_min_messages;
DROP OWNED BY tb_reader;
DROP ROLE tb_reader;
