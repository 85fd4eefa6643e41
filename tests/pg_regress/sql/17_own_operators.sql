-- Keys, tenants and via columns of a type with operators of its own: citext, whose
-- equality and order ignore case. The extension compares them with the operators of the
-- type's default btree operator class, schema-qualified (its statements run with
-- search_path pinned to pg_catalog, where citext = citext would resolve to text's
-- case-sensitive = through citext's cast to text).
CREATE EXTENSION IF NOT EXISTS citext SCHEMA public;
CREATE SCHEMA own_ops;
-- Customers keyed by e-mail; the tenant is a company name. Keys sort differently as
-- citext (ann, bob, Cy, dee) and as text ('Ann', 'Cy', 'bob', 'dee').
CREATE TABLE own_ops.customers (email public.citext PRIMARY KEY, company public.citext);
INSERT INTO own_ops.customers VALUES ('Ann@x.com', NULL), ('bob@x.com', NULL), ('Cy@x.com', 'Initech'), ('dee@x.com', NULL);
-- Orders name their customer and company in any case: one customer, one company each,
-- but for dee, whose two orders name two companies.
CREATE TABLE own_ops.orders (id int PRIMARY KEY, customer public.citext, company public.citext);
INSERT INTO own_ops.orders VALUES
    (1, 'ann@x.com', 'Acme'), (2, 'ANN@X.COM', 'ACME'),
    (3, 'BOB@x.com', 'globex'), (4, 'bob@X.com', 'Globex'),
    (5, 'cy@x.com', 'INITECH'),
    (6, 'Dee@x.com', 'Acme'), (7, 'dee@x.com', 'Globex');
SELECT tenant_backfill.define('own_ops.customers', 'company');
SELECT tenant_backfill.add_source('own_ops.customers', 'own_ops.orders', 'customer');
-- ann's and bob's orders agree (ACME is Acme); dee's do not.
SELECT row_key, lower(proposed_tenant::text) AS proposed, action, evidence IS NOT NULL AS has_evidence
  FROM tenant_backfill.plan('own_ops.customers') ORDER BY row_key::public.citext;
SELECT check_name, rows FROM tenant_backfill.preflight('own_ops.customers')
 WHERE check_name IN ('null_tenant', 'by_phase_1', 'conflicts', 'orphans');
-- Cy's orders say INITECH, its row says Initech: the same tenant, not a reassignment.
SELECT count(*) AS reassign FROM tenant_backfill.plan('own_ops.customers', 'reassign') WHERE action = 'reassign';
-- Committed batches of one: the keyset walks the keys in citext's order and misses none.
SET client_min_messages = warning;
CALL tenant_backfill.run('own_ops.customers', batch_size => 1);
RESET client_min_messages;
SELECT email, lower(company::text) AS company FROM own_ops.customers ORDER BY email;
SELECT status, rows_changed, left_for_review FROM tenant_backfill.runs
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'own_ops.customers'::regclass);
SELECT check_name, ok FROM tenant_backfill.validate('own_ops.customers')
 WHERE check_name IN ('row_count_unchanged', 'sources_agree', 'audit_complete', 'backup_complete');
-- An override named in another case is the row's own: stored with its key as the row has it.
SELECT tenant_backfill.set_override('own_ops.customers', 'DEE@X.COM', 'Acme', 'confirmed');
SELECT row_key, tenant FROM tenant_backfill.overrides WHERE target = 'own_ops.customers'::regclass;
SELECT tenant_backfill.override_for('own_ops.customers', 'Dee@X.com') AS override_in_any_case;
SELECT row_key, lower(proposed_tenant::text) AS proposed, action, phase FROM tenant_backfill.plan('own_ops.customers');
-- (One key a statement: the ranges are bounded with citext's own operators.)
SET tenant_backfill.run_now_statement_rows = 1;
SELECT rows_changed FROM tenant_backfill.run_now('own_ops.customers');
RESET tenant_backfill.run_now_statement_rows;
-- Removed in any case too.
SELECT tenant_backfill.set_override('own_ops.customers', 'DEE@x.COM', NULL);
SELECT count(*) AS overrides_left FROM tenant_backfill.overrides WHERE target = 'own_ops.customers'::regclass;
-- Decisions that name one row twice in two cases, differently, are refused.
CREATE TABLE own_ops.decisions (row_key text, tenant text);
INSERT INTO own_ops.decisions VALUES ('bob@x.com', 'Acme'), ('BOB@X.COM', 'Initech');
SELECT tenant_backfill.apply_decisions('own_ops.customers', 'own_ops.decisions');
-- Rolling back the committed run restores exactly what it wrote.
SELECT restored, skipped FROM tenant_backfill.rollback((SELECT min(run_id) FROM tenant_backfill.runs
                                                        WHERE target = 'own_ops.customers'::regclass AND kind = 'run'));
SELECT email, company FROM own_ops.customers ORDER BY email;
SELECT tenant_backfill.undefine('own_ops.customers');
-- The guard's assign mode finds the parent row with the key type's own =: a member
-- naming team 'RED' gets the tenant of team 'Red'.
CREATE TABLE own_ops.teams (code public.citext PRIMARY KEY, company public.citext);
INSERT INTO own_ops.teams VALUES ('Red', 'Acme');
CREATE TABLE own_ops.members (id int PRIMARY KEY, team public.citext REFERENCES own_ops.teams, company public.citext);
SELECT tenant_backfill.define('own_ops.members', 'company');
SELECT tenant_backfill.enforce('own_ops.members', 'assign', parent_column => 'team');
INSERT INTO own_ops.members VALUES (1, 'RED', NULL);
SELECT id, team, company FROM own_ops.members;
SELECT tenant_backfill.unenforce('own_ops.members');
SELECT tenant_backfill.undefine('own_ops.members');
DROP SCHEMA own_ops CASCADE;
