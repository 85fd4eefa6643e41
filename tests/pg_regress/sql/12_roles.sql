-- The roles of the security model: no grant on the extension is needed to use it, only
-- the extension's code writes its tables, and each role reads only the rows about
-- tables it may read.
CREATE SCHEMA roles;
SET search_path = roles, public;
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/customers.sql'
\i :fixture
\set ECHO all
\set VERBOSITY terse
CREATE ROLE roles_dba NOLOGIN;
CREATE ROLE roles_app NOLOGIN;
CREATE ROLE roles_stranger NOLOGIN;
GRANT USAGE ON SCHEMA roles TO roles_dba, roles_app, roles_stranger;
-- The operator: reads and updates the target, reads the sources. Nothing else.
GRANT SELECT, UPDATE ON roles.customers TO roles_dba;
GRANT SELECT ON roles.appointments, roles.phone_numbers, roles.calls TO roles_dba;
-- The application: writes its own table. Nothing else.
GRANT SELECT, INSERT, UPDATE ON roles.customers TO roles_app;
CREATE TABLE roles.before AS SELECT * FROM roles.customers;

-- The operator runs the whole lifecycle, to a rollback that leaves the table as it was.
SET ROLE roles_dba;
SELECT tenant_backfill.define('roles.customers', 'company_id');
SELECT tenant_backfill.add_source('roles.customers', 'roles.appointments', 'customer_id');
SELECT tenant_backfill.add_source('roles.customers', 'roles.phone_numbers', 'customer_id');
SELECT tenant_backfill.add_source('roles.customers', 'roles.calls', 'customer_id', rule => 'majority');
SELECT tenant_backfill.set_override('roles.customers', '27', '3', 'confirmed by support');
SELECT check_name, rows FROM tenant_backfill.preflight('roles.customers') WHERE check_name LIKE 'by_%';
SELECT count(*) AS planned FROM tenant_backfill.plan('roles.customers');
SELECT count(*) AS to_review FROM tenant_backfill.review_queue('roles.customers');
SELECT rows_changed, by_phase FROM tenant_backfill.run_now('roles.customers');
SELECT check_name, ok FROM tenant_backfill.validate('roles.customers');
SELECT run_id AS dba_run, started_by FROM tenant_backfill.runs WHERE target = 'roles.customers'::regclass \gset
SELECT :'started_by' AS started_by;
SELECT DISTINCT changed_by FROM tenant_backfill.audit_log WHERE run_id = :dba_run;
SELECT * FROM tenant_backfill.rollback(:dba_run);
SET client_min_messages = warning;
CALL tenant_backfill.run('roles.customers', batch_size => 10);
RESET client_min_messages;
SELECT max(run_id) AS dba_call FROM tenant_backfill.runs WHERE kind = 'run' \gset
SELECT * FROM tenant_backfill.rollback(:dba_call);
-- It cannot write the extension's tables itself, though it may read its target's rows.
INSERT INTO tenant_backfill.overrides (target, row_key, tenant) VALUES ('roles.customers', '16', '1');
UPDATE tenant_backfill.sources SET rule = 'majority';
UPDATE tenant_backfill.audit_log SET changed_by = 'nobody';
DELETE FROM tenant_backfill.backup;
DELETE FROM tenant_backfill.run_skipped;
INSERT INTO tenant_backfill.quarantine (target, operation, row_data) VALUES ('roles.customers', 'INSERT', '{}');
SELECT count(*) > 0 AS sees_its_audit_rows FROM tenant_backfill.audit_log WHERE target = 'roles.customers'::regclass;
RESET ROLE;
SELECT count(*) AS rows_changed_by_the_lifecycle
  FROM (SELECT * FROM roles.before EXCEPT SELECT * FROM roles.customers) x;

-- The application needs nothing but its own table's rights, in every guard mode.
SET client_min_messages = warning;
SELECT tenant_backfill.enforce('roles.customers');
RESET client_min_messages;
SET ROLE roles_app;
INSERT INTO roles.customers (id, name, company_id) VALUES (200, 'with a tenant', 1);
INSERT INTO roles.customers (id, name) VALUES (201, 'rejected');
RESET ROLE;
SELECT tenant_backfill.enforce('roles.customers', 'log');
SET ROLE roles_app;
INSERT INTO roles.customers (id, name) VALUES (202, 'logged');
RESET ROLE;
SELECT tenant_backfill.enforce('roles.customers', 'quarantine');
SET ROLE roles_app;
INSERT INTO roles.customers (id, name) VALUES (203, 'kept out');
RESET ROLE;
SELECT tenant_backfill.enforce('roles.customers', 'assign');
SET ROLE roles_app;
BEGIN;
SET LOCAL tenant_backfill.tenant = '2';
INSERT INTO roles.customers (id, name) VALUES (204, 'assigned');
COMMIT;
RESET ROLE;
SELECT id, company_id FROM roles.customers WHERE id >= 200 ORDER BY id;
SELECT row_key, role, mode, action FROM tenant_backfill.violations WHERE target = 'roles.customers'::regclass ORDER BY row_key;
SELECT row_key, role FROM tenant_backfill.quarantine WHERE target = 'roles.customers'::regclass;
SELECT tenant_backfill.unenforce('roles.customers');

-- A role without rights on the target sees nothing about it and changes nothing.
SET ROLE roles_stranger;
SELECT (SELECT count(*) FROM tenant_backfill.targets) AS targets,
       (SELECT count(*) FROM tenant_backfill.sources) AS sources,
       (SELECT count(*) FROM tenant_backfill.overrides) AS overrides,
       (SELECT count(*) FROM tenant_backfill.runs) AS runs,
       (SELECT count(*) FROM tenant_backfill.run_skipped) AS run_skipped,
       (SELECT count(*) FROM tenant_backfill.backup) AS backup,
       (SELECT count(*) FROM tenant_backfill.audit_log) AS audit_log,
       (SELECT count(*) FROM tenant_backfill.violations) AS violations,
       (SELECT count(*) FROM tenant_backfill.quarantine) AS quarantine,
       (SELECT count(*) FROM tenant_backfill.progress) AS progress;
INSERT INTO tenant_backfill.targets (target, tenant_column, key_column) VALUES ('roles.calls', 'company_id', 'id');
DELETE FROM tenant_backfill.runs;
SELECT tenant_backfill.set_override('roles.customers', '16', '2');
SELECT tenant_backfill.define('roles.customers', 'company_id');
SELECT * FROM tenant_backfill.rollback(:dba_call);
SELECT tenant_backfill_internal._run_end(:dba_call, NULL, NULL);
SELECT tenant_backfill_internal._guard_inheritors('roles.customers');
RESET ROLE;
-- (There are skipped rows it did not see: 07's run kept the key of the row it could not write.)
SELECT count(*) AS run_skipped FROM tenant_backfill.run_skipped;

-- Code of the user's never runs as the extension's owner: a domain whose CHECK records
-- who evaluates it, on the tenant column of a target an operator backfills and rolls
-- back. (The extension logs values as text; it casts them only with the caller's rights.)
CREATE TABLE roles.who_checked (who name);
GRANT INSERT ON roles.who_checked TO PUBLIC;
CREATE FUNCTION roles.checked_by(v int) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO roles.who_checked VALUES (current_user);
    RETURN true;
END $$;
CREATE DOMAIN roles.org_id AS int CHECK (roles.checked_by(VALUE));
CREATE TABLE roles.shops (id int PRIMARY KEY, org roles.org_id);
CREATE TABLE roles.sales (id int PRIMARY KEY, shop_id int, org int);
INSERT INTO roles.shops SELECT g, NULL FROM generate_series(1, 3) g;
INSERT INTO roles.sales SELECT g, g, 7 FROM generate_series(1, 3) g;
GRANT SELECT, UPDATE ON roles.shops TO roles_dba;
GRANT SELECT ON roles.sales TO roles_dba;
TRUNCATE roles.who_checked;
SET ROLE roles_dba;
SELECT tenant_backfill.define('roles.shops', 'org');
SELECT tenant_backfill.add_source('roles.shops', 'roles.sales', 'shop_id');
SELECT run_id AS shops_run, rows_changed FROM tenant_backfill.run_now('roles.shops') \gset
SELECT :rows_changed AS rows_changed;
SELECT * FROM tenant_backfill.rollback(:shops_run);
RESET ROLE;
SELECT who, count(*) > 0 AS checked FROM roles.who_checked GROUP BY who ORDER BY who;
-- The same for a quarantined row: turning it into jsonb may call a cast of the user's,
-- which runs with the rights of the application that wrote the row.
CREATE TYPE roles.mood AS ENUM ('calm');
CREATE FUNCTION roles.mood_json(roles.mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO roles.who_checked VALUES (current_user);
    RETURN '"calm"';
END $$;
CREATE FUNCTION roles.mood_jsonb(roles.mood) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO roles.who_checked VALUES (current_user);
    RETURN '"calm"';
END $$;
CREATE CAST (roles.mood AS json) WITH FUNCTION roles.mood_json(roles.mood);
CREATE CAST (roles.mood AS jsonb) WITH FUNCTION roles.mood_jsonb(roles.mood);
CREATE TABLE roles.moods (id int PRIMARY KEY, org int, mood roles.mood);
GRANT SELECT, INSERT ON roles.moods TO roles_app;
SELECT tenant_backfill.define('roles.moods', 'org');
SELECT tenant_backfill.enforce('roles.moods', 'quarantine');
TRUNCATE roles.who_checked;
SET ROLE roles_app;
INSERT INTO roles.moods VALUES (1, NULL, 'calm');
RESET ROLE;
SELECT who, count(*) > 0 AS checked FROM roles.who_checked GROUP BY who ORDER BY who;
SELECT row_key, row_data FROM tenant_backfill.quarantine WHERE target = 'roles.moods'::regclass;
