-- A schema with a space, a table whose name reads like SQL injection, columns with
-- spaces and capitals, a uuid key and a bigint tenant.
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/sales_ops.sql'
\i :fixture
\set ECHO all
SELECT tenant_backfill.define('"Sales Ops"."client; DROP TABLE x--"', 'Tenant Id');
SELECT * FROM tenant_backfill.discover('"Sales Ops"."client; DROP TABLE x--"');
SELECT tenant_backfill.add_source('"Sales Ops"."client; DROP TABLE x--"', '"Sales Ops"."Deal Log"', 'Account Ref');
SELECT * FROM tenant_backfill.preflight('"Sales Ops"."client; DROP TABLE x--"');
SELECT * FROM tenant_backfill.plan('"Sales Ops"."client; DROP TABLE x--"');
-- Keys and tenants are text at the API and cast to uuid and bigint inside.
SELECT tenant_backfill.set_override('"Sales Ops"."client; DROP TABLE x--"',
                                    '00000000-0000-4000-8000-000000000005', '7000000002');
SELECT row_key, proposed_tenant, action, source
  FROM tenant_backfill.plan('"Sales Ops"."client; DROP TABLE x--"')
 WHERE row_key = '00000000-0000-4000-8000-000000000005';
-- Keys are compared as uuids: any spelling Postgres accepts names the same row.
SELECT tenant_backfill.override_for('"Sales Ops"."client; DROP TABLE x--"', '00000000-0000-4000-8000-000000000005') AS canonical,
       tenant_backfill.override_for('"Sales Ops"."client; DROP TABLE x--"', '{00000000000040008000000000000005}') AS braced,
       tenant_backfill.override_for('"Sales Ops"."client; DROP TABLE x--"', '00000000-0000-4000-8000-000000000006') AS other_row;
SELECT row_key, reason, row_data FROM tenant_backfill.review_queue('"Sales Ops"."client; DROP TABLE x--"');
-- Every table is still there.
SELECT count(*) AS tables_in_sales_ops FROM pg_tables WHERE schemaname = 'Sales Ops';
