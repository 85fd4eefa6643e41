-- Parent sources: a row takes its tenant from the row it points at. Appointments point
-- at customers (appointments.customer_id), and the customer's company is the
-- appointment's; where the customer has none, appointment notes (children of the
-- appointment) are the next phase.
CREATE SCHEMA parents;
CREATE TABLE parents.companies (id int PRIMARY KEY);
INSERT INTO parents.companies VALUES (1), (2), (3);
CREATE TABLE parents.customers (id int PRIMARY KEY, code text UNIQUE, company_id int REFERENCES parents.companies);
-- Customer 3 has no company; customer 4 belongs to company 3.
INSERT INTO parents.customers VALUES (1, 'c1', 1), (2, 'c2', 2), (3, 'c3', NULL), (4, 'c4', 3);
CREATE TABLE parents.appointments (id int PRIMARY KEY, customer_id int REFERENCES parents.customers,
                                   customer_code text, company_id int);
-- 10, 11: customers with a company; 12: a customer without one (its notes decide);
-- 13: no customer at all (an orphan); 14: company 1 although its customer is company 3
-- (a cross-tenant row: validate says so, reassign corrects it); 15, 16: right already.
INSERT INTO parents.appointments VALUES
    (10, 1, 'c1', NULL), (11, 2, 'c2', NULL), (12, 3, 'c3', NULL), (13, NULL, NULL, NULL),
    (14, 4, 'c4', 1), (15, 1, 'c1', 1), (16, 2, 'c2', 2);
CREATE TABLE parents.notes (id int PRIMARY KEY, appointment_id int REFERENCES parents.appointments, company_id int);
INSERT INTO parents.notes VALUES (100, 12, 2), (101, 12, 2);

SELECT tenant_backfill.define('parents.appointments', 'company_id');
-- The parent is matched on what via's foreign key references (customers.id) ...
SELECT tenant_backfill.add_parent('parents.appointments', 'parents.customers', 'customer_id');
SELECT tenant_backfill.add_source('parents.appointments', 'parents.notes', 'appointment_id');
SELECT source, via, tenant_column, phase, rule, direction, source_key
  FROM tenant_backfill.sources WHERE target = 'parents.appointments'::regclass ORDER BY phase;
SELECT * FROM tenant_backfill.preflight('parents.appointments');
-- A parent's evidence is its one row's tenant; a parent without a tenant is no evidence
-- (12 goes on to the notes); no parent at all, no notes: an orphan.
SELECT * FROM tenant_backfill.plan('parents.appointments');
SELECT row_key, current_tenant, proposed_tenant, action, source
  FROM tenant_backfill.plan('parents.appointments', 'reassign') WHERE action = 'reassign';
-- Committed batches of two, with their backup and audit (its NOTICE tells a rate, which
-- varies from run to run).
SET client_min_messages = warning;
CALL tenant_backfill.run('parents.appointments', batch_size => 2);
RESET client_min_messages;
SELECT status, rows_changed, batches, left_for_review FROM tenant_backfill.runs
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'parents.appointments'::regclass);
SELECT id, company_id FROM parents.appointments ORDER BY id;
SELECT row_key, old_value, new_value, phase, source, rule, evidence
  FROM tenant_backfill.audit_log
 WHERE run_id = (SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'parents.appointments'::regclass)
 ORDER BY row_key;
-- validate and monitor compare every row with its parent: 14 disagrees with its customer.
SELECT check_name, ok, expected, actual, detail FROM tenant_backfill.validate('parents.appointments')
 WHERE check_name IN ('no_null_tenant', 'sources_agree', 'audit_complete', 'backup_complete');
SELECT check_name, rows, detail FROM tenant_backfill.monitor('parents.appointments') WHERE check_name = 'sources_disagree';
-- Undo it, then decide the same rows in one transaction.
SELECT * FROM tenant_backfill.rollback((SELECT max(run_id) FROM tenant_backfill.runs
                                         WHERE target = 'parents.appointments'::regclass AND kind = 'run'));
SELECT count(*) AS null_again FROM parents.appointments WHERE company_id IS NULL;
-- (Two keys a statement: run_now walks the table in ranges, the parent read for each.)
SET tenant_backfill.run_now_statement_rows = 2;
SELECT rows_changed, by_phase, left_for_review FROM tenant_backfill.run_now('parents.appointments', mode => 'reassign');
RESET tenant_backfill.run_now_statement_rows;
SELECT id, company_id FROM parents.appointments ORDER BY id;

-- ... else on the parent's primary key: a via without a foreign key.
CREATE TABLE parents.visits (id int PRIMARY KEY, customer int, company_id int);
INSERT INTO parents.visits VALUES (1, 4, NULL), (2, 99, NULL);
SELECT tenant_backfill.define('parents.visits', 'company_id');
SELECT tenant_backfill.add_parent('parents.visits', 'parents.customers', 'customer');
SELECT row_key, proposed_tenant, action FROM tenant_backfill.plan('parents.visits');
-- A parent's tenant that does not cast to the target's is named with the target row's key.
CREATE TABLE parents.shops (code text PRIMARY KEY, company text);
INSERT INTO parents.shops VALUES ('a', '2'), ('b', 'two');
CREATE TABLE parents.sales (id int PRIMARY KEY, shop text REFERENCES parents.shops, company_id int);
INSERT INTO parents.sales VALUES (1, 'a', NULL), (2, 'b', NULL);
SELECT tenant_backfill.define('parents.sales', 'company_id');
SELECT tenant_backfill.add_parent('parents.sales', 'parents.shops', 'shop', 'company');
SELECT check_name, rows, detail FROM tenant_backfill.preflight('parents.sales') WHERE check_name IN ('by_phase_1', 'source_bad_tenant');
SELECT * FROM tenant_backfill.run_now('parents.sales');

-- What add_source refuses for a parent.
SELECT tenant_backfill.add_parent('parents.appointments', 'parents.appointments', 'customer_id');
SELECT tenant_backfill.add_parent('parents.appointments', 'parents.customers', 'nope');
CREATE TABLE parents.no_key (code text, company_id int);
SELECT tenant_backfill.add_parent('parents.appointments', 'parents.no_key', 'customer_code');
-- via must compare with the parent's key (text against int here).
SELECT tenant_backfill.add_parent('parents.visits', 'parents.shops', 'customer', 'company');
-- via is a foreign key to customers: companies (whose tenant is its id) cannot be its parent.
SELECT tenant_backfill.add_parent('parents.appointments', 'parents.companies', 'customer_id', 'id');
-- A child source is not turned into a parent by adding it again the other way.
CREATE TABLE parents.links (id int PRIMARY KEY, customer int, company_id int);
SELECT tenant_backfill.add_source('parents.visits', 'parents.links', 'customer');
SELECT tenant_backfill.add_parent('parents.visits', 'parents.links', 'customer');
SELECT tenant_backfill.remove_source('parents.visits', 'parents.links');
-- A table with inheritance children is no single parent row.
CREATE TABLE parents.old_customers (id int PRIMARY KEY, company_id int);
CREATE TABLE parents.old_customers_2020 () INHERITS (parents.old_customers);
SELECT tenant_backfill.add_parent('parents.visits', 'parents.old_customers', 'customer');
-- The key add_source matched on must stay unique.
CREATE TABLE parents.regions (name text NOT NULL, company_id int);
CREATE UNIQUE INDEX regions_name ON parents.regions (name);
INSERT INTO parents.regions VALUES ('north', 1);
ALTER TABLE parents.visits ADD COLUMN region text;
ALTER TABLE parents.regions ADD CONSTRAINT regions_pk PRIMARY KEY USING INDEX regions_name;
SELECT tenant_backfill.add_parent('parents.visits', 'parents.regions', 'region');
ALTER TABLE parents.regions DROP CONSTRAINT regions_pk;
SELECT count(*) FROM tenant_backfill.plan('parents.visits');

-- A source is removed on its own; the others keep their phases.
SELECT tenant_backfill.remove_source('parents.appointments', 'parents.customers');
SELECT source, via, phase, direction FROM tenant_backfill.sources WHERE target = 'parents.appointments'::regclass;
SELECT tenant_backfill.remove_source('parents.appointments', 'parents.notes', 'company_id');
SELECT tenant_backfill.remove_source('parents.appointments', 'parents.notes', 'appointment_id');
SELECT count(*) AS sources_left FROM tenant_backfill.sources WHERE target = 'parents.appointments'::regclass;

SELECT tenant_backfill.undefine(t) FROM unnest(ARRAY['parents.appointments', 'parents.visits', 'parents.sales']::regclass[]) t;
DROP SCHEMA parents CASCADE;
