-- The EF Core case: every "ShiftTypes" row was defaulted to company 1. Usage in
-- "ShiftInstances" decides by majority; admins override in "Configs".
-- (tests/fixtures/shift_types.sql says what each shift type should become.)
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/shift_types.sql'
\i :fixture
\set ECHO all
-- Quoted CamelCase names are passed as regclass, columns exactly as spelled.
SELECT tenant_backfill.define('"ShiftTypes"', 'CompanyId');
SELECT tenant_backfill.add_source('"ShiftTypes"', '"ShiftInstances"', 'ShiftTypeId', rule => 'majority');
SELECT tenant_backfill.add_override_table('"ShiftTypes"', '"Configs"', 'Key', 'Value', 'ShiftTypeCompanyOverride:');
SELECT * FROM tenant_backfill.override_tables;
-- Nothing is NULL, so a fill plan is empty ...
SELECT * FROM tenant_backfill.preflight('"ShiftTypes"');
SELECT count(*) AS fill_rows FROM tenant_backfill.plan('"ShiftTypes"');
-- ... and the repair is mode reassign.
SELECT * FROM tenant_backfill.preflight('"ShiftTypes"', 'reassign');
SELECT * FROM tenant_backfill.plan('"ShiftTypes"', 'reassign');
-- Overrides are read live from "Configs".
SELECT tenant_backfill.override_for('"ShiftTypes"', '6') AS before_insert;
INSERT INTO "Configs" ("CompanyId", "Key", "Value") VALUES (2, 'ShiftTypeCompanyOverride:6', '2');
SELECT tenant_backfill.override_for('"ShiftTypes"', '6') AS after_insert;
SELECT row_key, current_tenant, proposed_tenant, action, source
  FROM tenant_backfill.plan('"ShiftTypes"', 'reassign') WHERE row_key = '6';
-- The extension's own overrides beat the config table.
SELECT tenant_backfill.set_override('"ShiftTypes"', '8', '3', 'Third Co owns the holiday shift');
SELECT row_key, proposed_tenant, action, phase, source, rule
  FROM tenant_backfill.plan('"ShiftTypes"', 'reassign') WHERE row_key = '8';
-- Nothing was written.
SELECT "Id", "CompanyId" FROM "ShiftTypes" ORDER BY "Id";
