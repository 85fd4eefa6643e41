-- The ShiftTypes repair in mode reassign, and the seed's "revert script" as a rollback.
-- A schema of its own, so these tables do not meet 02_shift_types' ones.
CREATE SCHEMA run_shift_types;
SET search_path = run_shift_types, public;
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/shift_types.sql'
\i :fixture
\set ECHO all
SELECT tenant_backfill.define('"ShiftTypes"', 'CompanyId');
SELECT tenant_backfill.add_source('"ShiftTypes"', '"ShiftInstances"', 'ShiftTypeId', rule => 'majority');
SELECT tenant_backfill.add_override_table('"ShiftTypes"', '"Configs"', 'Key', 'Value', 'ShiftTypeCompanyOverride:');
SET client_min_messages = warning;
-- Mode fill finds nothing to do: no CompanyId is NULL.
CALL tenant_backfill.run('"ShiftTypes"', mode => 'fill');
SELECT kind, mode, status, rows_total, rows_changed FROM tenant_backfill.runs
 WHERE target = '"ShiftTypes"'::regclass ORDER BY run_id;
-- Mode reassign corrects what usage and overrides contradict.
CALL tenant_backfill.run('"ShiftTypes"', batch_size => 3, mode => 'reassign');
SELECT kind, mode, status, rows_total, rows_done, rows_changed, by_phase FROM tenant_backfill.runs
 WHERE target = '"ShiftTypes"'::regclass ORDER BY run_id;
SELECT "Id", "Name", "CompanyId" FROM "ShiftTypes" ORDER BY "Id";
SELECT row_key, old_value, new_value, phase, source, rule, evidence FROM tenant_backfill.audit_log
 WHERE target = '"ShiftTypes"'::regclass ORDER BY row_key::int;
-- Running it again changes nothing.
SELECT * FROM tenant_backfill.run_now('"ShiftTypes"', 'reassign');
SELECT * FROM tenant_backfill.validate('"ShiftTypes"');
-- The revert: every shift type back to what it was (company 1).
SELECT r.restored, r.skipped
  FROM tenant_backfill.runs x, tenant_backfill.rollback(x.run_id) r
 WHERE x.target = '"ShiftTypes"'::regclass AND x.kind = 'run' AND x.mode = 'reassign';
SELECT "Id", "CompanyId" FROM "ShiftTypes" ORDER BY "Id";
-- A rollback skips rows changed since the run (drift) ...
SELECT rows_changed FROM tenant_backfill.run_now('"ShiftTypes"', 'reassign');
UPDATE "ShiftTypes" SET "CompanyId" = 2 WHERE "Id" = 3;
SELECT r.restored, r.skipped
  FROM tenant_backfill.runs x, tenant_backfill.rollback(x.run_id) r
 WHERE x.target = '"ShiftTypes"'::regclass AND x.kind = 'run_now' AND x.rows_changed > 0 AND x.status = 'done';
SELECT "Id", "CompanyId" FROM "ShiftTypes" ORDER BY "Id";
-- ... unless forced.
SELECT rows_changed FROM tenant_backfill.run_now('"ShiftTypes"', 'reassign');
UPDATE "ShiftTypes" SET "CompanyId" = 3 WHERE "Id" = 4;
SELECT r.restored, r.skipped
  FROM tenant_backfill.runs x, tenant_backfill.rollback(x.run_id, force => true) r
 WHERE x.target = '"ShiftTypes"'::regclass AND x.kind = 'run_now' AND x.rows_changed > 0 AND x.status = 'done';
SELECT "Id", "CompanyId" FROM "ShiftTypes" ORDER BY "Id";
RESET client_min_messages;
