-- Nothing the extension runs resolves through the caller's search_path. A role with
-- nothing but CREATE on public plants operators for every pair of types the generated
-- SQL compares, computes or concatenates, each of which records that it ran; a
-- superuser then puts public first in its search_path, so that every planted operator
-- an unqualified name could reach would win, and runs the whole lifecycle.
CREATE SCHEMA pinned;
SET search_path = pinned, public;
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/customers.sql'
\i :fixture
\set ECHO all
\set VERBOSITY terse
CREATE ROLE planter NOLOGIN;
GRANT CREATE ON SCHEMA public TO planter;
CREATE TABLE public.planted_ran (what text);
GRANT INSERT ON public.planted_ran TO PUBLIC;
SET ROLE planter;
DO $plant$
DECLARE
    o record;
    result_type regtype;
    n int := 0;
BEGIN
    FOR o IN
        SELECT op, l, r FROM
            (VALUES ('='), ('<>'), ('<'), ('>'), ('<='), ('>=')) ops(op),
            (VALUES ('oid', 'oid'), ('regclass', 'regclass'), ('oid', 'int4'), ('int4', 'int4'), ('int8', 'int8'),
                    ('int2', 'int2'), ('int4', 'int8'), ('int8', 'int4'), ('int2', 'int4'), ('text', 'text'),
                    ('name', 'name'), ('name', 'text'), ('text', 'name'), ('bool', 'bool'), ('float8', 'float8'),
                    ('float8', 'int4'), ('numeric', 'numeric'), ('jsonb', 'jsonb'), ('tid', 'tid'),
                    ('regtype', 'regtype'), ('uuid', 'uuid'), ('timestamptz', 'timestamptz'),
                    ('"char"', '"char"')) types(l, r)
        UNION ALL
        SELECT op, l, r FROM (VALUES
            ('||', 'text', 'text'), ('||', 'text', 'int8'), ('||', 'int8', 'text'), ('||', 'text', 'int4'),
            ('||', 'jsonb', 'jsonb'), ('||', 'text', 'anynonarray'), ('+', 'int4', 'int4'), ('+', 'int8', 'int8'),
            ('+', 'int8', 'int4'), ('-', 'int8', 'int8'), ('-', 'int4', 'int4'), ('/', 'int4', 'numeric'),
            ('/', 'float8', 'float8'), ('/', 'int4', 'float8'), ('*', 'float8', 'float8'), ('*', 'numeric', 'numeric'),
            ('->>', 'jsonb', 'text'), ('^', 'float8', 'float8')) extra(op, l, r)
    LOOP
        n := n + 1;
        EXECUTE format('SELECT pg_catalog.pg_typeof(NULL::%s OPERATOR(pg_catalog.%s) NULL::%s)',
                       CASE WHEN o.l = 'anynonarray' THEN 'int4' ELSE o.l END, o.op,
                       CASE WHEN o.r = 'anynonarray' THEN 'int4' ELSE o.r END) INTO result_type;
        EXECUTE format($f$CREATE FUNCTION public.planted_%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql AS
                          $body$BEGIN INSERT INTO public.planted_ran VALUES (%L); RETURN NULL; END$body$$f$,
                       n, o.l, o.r, result_type, format('%s(%s, %s)', o.op, o.l, o.r));
        EXECUTE format('CREATE OPERATOR public.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = public.planted_%s)',
                       o.op, o.l, o.r, n);
    END LOOP;
END
$plant$;
RESET ROLE;
SELECT count(*) AS planted_operators FROM pg_operator WHERE oprnamespace = 'public'::regnamespace;
-- The planted operators do work for whoever resolves through public: a comparison of
-- two regclass values now records itself.
SET search_path = public, pg_catalog, pinned;
SELECT 'pinned.customers'::regclass = 'pinned.customers'::regclass AS planted_answer;
SELECT what FROM public.planted_ran;
DELETE FROM public.planted_ran;

-- The whole lifecycle, with public first.
SELECT tenant_backfill.define('pinned.customers', 'company_id');
SELECT tenant_backfill.add_source('pinned.customers', 'pinned.appointments', 'customer_id');
SELECT tenant_backfill.add_source('pinned.customers', 'pinned.phone_numbers', 'customer_id');
SELECT tenant_backfill.add_source('pinned.customers', 'pinned.calls', 'customer_id', rule => 'majority');
SELECT tenant_backfill.set_override('pinned.customers', '27', '3', 'confirmed by support');
SELECT tenant_backfill.override_for('pinned.customers', '27');
SELECT count(*) AS discovered FROM tenant_backfill.discover('pinned.customers');
SELECT count(*) AS planned FROM tenant_backfill.plan('pinned.customers');
SELECT count(*) AS checks FROM tenant_backfill.preflight('pinned.customers');
SELECT count(*) AS conflicting FROM tenant_backfill.conflicts('pinned.customers');
SELECT count(*) AS to_review FROM tenant_backfill.review_queue('pinned.customers');
SELECT rows_changed FROM tenant_backfill.run_now('pinned.customers', dry_run => true);
SET client_min_messages = warning;
CALL tenant_backfill.run('pinned.customers', batch_size => 7);
RESET client_min_messages;
SELECT count(*) AS checks FROM tenant_backfill.validate('pinned.customers');
SELECT max(run_id) AS last_run FROM tenant_backfill.runs WHERE kind OPERATOR(pg_catalog.=) 'run' \gset
SELECT restored FROM tenant_backfill.rollback(:last_run);
SELECT rows_changed FROM tenant_backfill.run_now('pinned.customers');
CREATE TABLE pinned.decisions (row_key text, tenant text);
INSERT INTO pinned.decisions VALUES ('16', '1');
SELECT tenant_backfill.apply_decisions('pinned.customers', 'pinned.decisions');
SELECT tenant_backfill.soft_delete_orphans('pinned.customers');
SET client_min_messages = warning;
SELECT tenant_backfill.enforce('pinned.customers', 'quarantine');
INSERT INTO pinned.customers (id, name) VALUES (500, 'kept out');
SELECT tenant_backfill.release_quarantine('pinned.customers', '2');
SELECT tenant_backfill.enforce('pinned.customers', 'assign');
BEGIN;
SET LOCAL tenant_backfill.tenant = '1';
INSERT INTO pinned.customers (id, name) VALUES (501, 'assigned');
COMMIT;
SELECT tenant_backfill.enforce('pinned.customers', 'log');
INSERT INTO pinned.customers (id, name) VALUES (502, 'logged');
SELECT tenant_backfill.enforce('pinned.customers');
INSERT INTO pinned.customers (id, name) VALUES (503, 'rejected');
SELECT count(*) AS monitored FROM tenant_backfill.monitor('pinned.customers');
SELECT tenant_backfill.unenforce('pinned.customers');
UPDATE pinned.customers SET company_id = 1 WHERE company_id IS NULL;
CALL tenant_backfill.finalize('pinned.customers');
RESET client_min_messages;
-- Not one planted operator ran.
SELECT count(*) AS planted_operators_that_ran FROM public.planted_ran;
SELECT what FROM public.planted_ran ORDER BY 1;
RESET search_path;

-- The steps of CALL run refuse outside the CALL that holds the run's lock (run ids
-- depend on the files before this one: the messages show them as N).
CREATE FUNCTION pg_temp.error_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, 'run \d+', 'run N', 'g');
END $$;
SELECT pg_temp.error_of(format('SELECT tenant_backfill_internal._run_batch(%s, false)', :last_run));
SELECT pg_temp.error_of(format('SELECT tenant_backfill_internal._run_end(%s, NULL, NULL)', :last_run));
-- A rollback writes only the column its run's kind writes, whatever the backup says.
SELECT max(run_id) AS fill_run FROM tenant_backfill.runs WHERE kind = 'run_now' AND NOT dry_run \gset
INSERT INTO tenant_backfill.backup (run_id, target, row_key, column_name, old_value, new_value)
VALUES (:fill_run, 'pinned.customers', '1', 'email', 'forged@example.com', NULL);
SELECT pg_temp.error_of(format('SELECT * FROM tenant_backfill.rollback(%s)', :fill_run));
DELETE FROM tenant_backfill.backup WHERE run_id = :fill_run AND column_name = 'email';
SELECT count(*) AS emails_changed FROM pinned.customers WHERE email = 'forged@example.com';
SELECT tenant_backfill.undefine('pinned.customers');
-- A key, tenant or via column whose type has operators outside pg_catalog is compared
-- with those of its default btree operator class, schema-qualified (17_own_operators runs
-- a citext lifecycle); a type without one is refused up front.
CREATE EXTENSION citext SCHEMA public;
CREATE TABLE pinned.tags (name public.citext PRIMARY KEY, org int);
SELECT tenant_backfill.define('pinned.tags', 'org');
SELECT tenant_backfill.undefine('pinned.tags');
CREATE TYPE pinned.pair AS (a int, b int);
CREATE TABLE pinned.labels (id int PRIMARY KEY, org pinned.pair);
SELECT tenant_backfill.define('pinned.labels', 'org');
-- A parent key of such a type, for the guard's assign mode, is compared the same way
-- (17_own_operators assigns through one).
CREATE TABLE pinned.tag_uses (id int PRIMARY KEY, tag public.citext REFERENCES pinned.tags, org int);
SELECT tenant_backfill.define('pinned.tag_uses', 'org');
SELECT tenant_backfill.enforce('pinned.tag_uses', 'assign', parent_column => 'tag');
SELECT tenant_backfill.unenforce('pinned.tag_uses');
SELECT tenant_backfill.undefine('pinned.tag_uses');
-- A domain over a built-in type, and an enum, compare with pg_catalog's operators.
CREATE DOMAIN pinned.shop_id AS int CHECK (VALUE > 0);
CREATE TYPE pinned.region AS ENUM ('north', 'south');
CREATE TABLE pinned.shops (id pinned.shop_id PRIMARY KEY, region pinned.region);
SELECT tenant_backfill.define('pinned.shops', 'region');
SELECT tenant_backfill.undefine('pinned.shops');
DROP EXTENSION citext CASCADE;
-- The planted operators go, so that no later file resolves through them.
DROP OWNED BY planter;
DROP ROLE planter;
DROP TABLE public.planted_ran;
