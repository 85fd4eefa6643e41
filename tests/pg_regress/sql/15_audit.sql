-- The whole database, and Citus: audit gives each table its role toward the tenant,
-- counts its rows without a tenant or pointing at another tenant's row, and lists what
-- blocks it from Citus with the fix; distribution_plan gives the statements once
-- nothing does. The tenant column is team_id, which no other file's tables have: when
-- the whole suite runs, their tables are local here and block nothing.
CREATE SCHEMA audit_demo;
-- The root: the table the team_id foreign keys point at.
CREATE TABLE audit_demo.teams (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO audit_demo.teams VALUES (1, 'Acme'), (2, 'Globex');
-- A lookup table the tenant tables point at: a reference table.
CREATE TABLE audit_demo.countries (code text PRIMARY KEY, name text NOT NULL);
INSERT INTO audit_demo.countries VALUES ('de', 'Germany'), ('fr', 'France');
-- Customers 4 and 5 have no team; the primary key and the unique email lack team_id.
CREATE TABLE audit_demo.customers (
    id int PRIMARY KEY,
    team_id int REFERENCES audit_demo.teams,
    email text UNIQUE,
    country_code text REFERENCES audit_demo.countries);
INSERT INTO audit_demo.customers VALUES
    (1, 1, 'a@acme', 'de'), (2, 2, 'b@globex', 'fr'), (3, 1, 'c@acme', 'de'),
    (4, NULL, 'd@acme', 'de'), (5, NULL, 'e@globex', NULL);
-- Appointments point at their customer through customer_id alone, have a unique index
-- that is no constraint, and appointment 3 of team 1 is for customer 2 of team 2 (4 is
-- for customer 4, whose team is NULL: not a cross-tenant row).
CREATE TABLE audit_demo.appointments (
    id int PRIMARY KEY,
    team_id int NOT NULL REFERENCES audit_demo.teams,
    customer_id int REFERENCES audit_demo.customers,
    slot text);
CREATE UNIQUE INDEX appointments_slot ON audit_demo.appointments (slot);
INSERT INTO audit_demo.appointments VALUES
    (1, 1, 1, 'mon'), (2, 2, 2, 'tue'), (3, 1, 2, 'wed'), (4, 1, 4, 'thu'), (5, 2, 5, 'fri');
-- Notes have no team_id: theirs is their customer's (derivable).
CREATE TABLE audit_demo.customer_notes (
    id int PRIMARY KEY,
    customer_id int REFERENCES audit_demo.customers,
    body text);
INSERT INTO audit_demo.customer_notes VALUES (1, 1, 'vip'), (2, 2, 'pays late'), (3, 4, 'new');
-- A partitioned tenant table, already right: reported once, for all its partitions.
CREATE TABLE audit_demo.events (
    team_id int NOT NULL REFERENCES audit_demo.teams,
    id int,
    at date,
    PRIMARY KEY (team_id, id, at)) PARTITION BY RANGE (at);
CREATE TABLE audit_demo.events_2025 PARTITION OF audit_demo.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE audit_demo.events_2026 PARTITION OF audit_demo.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO audit_demo.events VALUES (1, 1, '2025-03-01'), (2, 2, '2025-07-01'), (1, 3, '2026-02-01');
-- A tenant table with a name to quote, already right.
CREATE TABLE audit_demo."Invoice Lines" (
    team_id int NOT NULL REFERENCES audit_demo.teams,
    "Id" int,
    PRIMARY KEY (team_id, "Id"));
INSERT INTO audit_demo."Invoice Lines" VALUES (1, 1), (2, 1);
-- A tenant table the reader below may not read.
CREATE TABLE audit_demo.secrets (team_id int NOT NULL REFERENCES audit_demo.teams, id int, PRIMARY KEY (team_id, id));
INSERT INTO audit_demo.secrets VALUES (1, 1);
-- Local tables: settings stands alone; audit_events points at the reference table.
CREATE TABLE audit_demo.settings (key text PRIMARY KEY, value text);
INSERT INTO audit_demo.settings VALUES ('theme', 'dark');
CREATE TABLE audit_demo.audit_events (id int PRIMARY KEY, country_code text REFERENCES audit_demo.countries);
INSERT INTO audit_demo.audit_events VALUES (1, 'de');

-- Every table of the schema, partitions folded into events (3 rows in two partitions).
SELECT table_name, role, rows, null_tenant, cross_tenant, citus
  FROM tenant_backfill.audit('team_id') WHERE table_name::text LIKE 'audit_demo.%';
-- Each blocker with its fix, in order.
SELECT table_name, unnest(blockers) AS blocker
  FROM tenant_backfill.audit('team_id') WHERE table_name::text LIKE 'audit_demo.%';
-- Derivable from further away: attachments of notes (two foreign keys from customers),
-- and badges that name their team in a column of another name (the root's key is the
-- tenant itself).
CREATE TABLE audit_demo.note_attachments (id int PRIMARY KEY, note_id int REFERENCES audit_demo.customer_notes);
CREATE TABLE audit_demo.team_badges (id int PRIMARY KEY, awarded_to int REFERENCES audit_demo.teams);
SELECT table_name, role, blockers
  FROM tenant_backfill.audit('team_id')
 WHERE table_name IN ('audit_demo.note_attachments'::regclass, 'audit_demo.team_badges'::regclass);
DROP TABLE audit_demo.note_attachments, audit_demo.team_badges;
-- A tenant column no foreign key names finds no root: such a table has nothing to be
-- colocated with. What it points at is a reference table, and so is what those point at.
SELECT table_name, role, citus, CASE role WHEN 'tenant' THEN blockers[1] END AS first_blocker
  FROM tenant_backfill.audit('slot') WHERE table_name::text LIKE 'audit_demo.%' AND role <> 'local';
-- Naming the root gives the same roles.
SELECT count(*) AS differences
  FROM (SELECT table_name, role, blockers FROM tenant_backfill.audit('team_id')
        EXCEPT
        SELECT table_name, role, blockers FROM tenant_backfill.audit('team_id', 'audit_demo.teams')) d;
-- A root of another type (countries, keyed by text) blocks every tenant table, and
-- teams becomes a table the tenant tables merely point at.
SELECT table_name, role, citus, blockers[1] AS first_blocker
  FROM tenant_backfill.audit('team_id', 'audit_demo.countries')
 WHERE table_name IN ('audit_demo.countries'::regclass, 'audit_demo.teams'::regclass, 'audit_demo.events'::regclass);
-- While anything is blocked there is no plan: how many, and each table's first blocker.
\set VERBOSITY default
SELECT * FROM tenant_backfill.distribution_plan('team_id');
SELECT * FROM tenant_backfill.distribution_plan('team_id', 'audit_demo.teams');

-- Errors.
SELECT * FROM tenant_backfill.audit(NULL);
SELECT * FROM tenant_backfill.distribution_plan(NULL);
SELECT * FROM tenant_backfill.audit('');
SELECT * FROM tenant_backfill.audit('team_id', 'audit_demo.nope');
SELECT * FROM tenant_backfill.audit('team_id', 'audit_demo.events_2025');
CREATE VIEW audit_demo.team_names AS SELECT name FROM audit_demo.teams;
SELECT * FROM tenant_backfill.audit('team_id', 'audit_demo.team_names');
DROP VIEW audit_demo.team_names;
CREATE TABLE audit_demo.keyless (name text);
SELECT * FROM tenant_backfill.audit('team_id', 'audit_demo.keyless');
DROP TABLE audit_demo.keyless;
SELECT * FROM tenant_backfill.distribution_plan('no_such_column');

-- The fixes, in the order that works: the tenants first (tenant_backfill needs the
-- single-column keys that the Citus keys replace), then the keys and foreign keys.
-- Each plan shows what a run would write; the UPDATE after it writes the same rows
-- (run_now would add their backup and audit, but take run ids the later files count on).
-- Configured as a target, customers' blocker says how to run it.
SELECT tenant_backfill.define('audit_demo.customers', 'team_id');
SELECT blockers[1] FROM tenant_backfill.audit('team_id') WHERE table_name = 'audit_demo.customers'::regclass;
SELECT tenant_backfill.add_source('audit_demo.customers', 'audit_demo.appointments', 'customer_id');
SELECT row_key, proposed_tenant, action FROM tenant_backfill.plan('audit_demo.customers');
UPDATE audit_demo.customers c SET team_id = a.team_id
  FROM audit_demo.appointments a WHERE a.customer_id = c.id AND c.team_id IS NULL;
-- The cross-tenant appointment takes its customer's team, in mode reassign.
SELECT tenant_backfill.define('audit_demo.appointments', 'team_id');
SELECT tenant_backfill.add_parent('audit_demo.appointments', 'audit_demo.customers', 'customer_id');
SELECT row_key, current_tenant, proposed_tenant, action FROM tenant_backfill.plan('audit_demo.appointments', 'reassign');
UPDATE audit_demo.appointments a SET team_id = c.team_id
  FROM audit_demo.customers c WHERE c.id = a.customer_id AND a.team_id <> c.team_id;
-- The notes get a team_id column, filled from their customer.
ALTER TABLE audit_demo.customer_notes ADD COLUMN team_id int REFERENCES audit_demo.teams;
SELECT tenant_backfill.define('audit_demo.customer_notes', 'team_id');
SELECT tenant_backfill.add_parent('audit_demo.customer_notes', 'audit_demo.customers', 'customer_id');
SELECT row_key, proposed_tenant, action FROM tenant_backfill.plan('audit_demo.customer_notes');
UPDATE audit_demo.customer_notes n SET team_id = c.team_id
  FROM audit_demo.customers c WHERE c.id = n.customer_id;
-- What is left is the schema's.
SELECT table_name, unnest(blockers) AS blocker
  FROM tenant_backfill.audit('team_id') WHERE table_name::text LIKE 'audit_demo.%';
-- Keys with team_id first; the foreign keys into customers go while its key changes.
ALTER TABLE audit_demo.appointments DROP CONSTRAINT appointments_customer_id_fkey;
ALTER TABLE audit_demo.customer_notes DROP CONSTRAINT customer_notes_customer_id_fkey;
ALTER TABLE audit_demo.customers DROP CONSTRAINT customers_pkey, ADD PRIMARY KEY (team_id, id);
ALTER TABLE audit_demo.customers DROP CONSTRAINT customers_email_key, ADD UNIQUE (team_id, email);
ALTER TABLE audit_demo.appointments DROP CONSTRAINT appointments_pkey, ADD PRIMARY KEY (team_id, id);
DROP INDEX audit_demo.appointments_slot;
CREATE UNIQUE INDEX appointments_slot ON audit_demo.appointments (team_id, slot);
ALTER TABLE audit_demo.customer_notes DROP CONSTRAINT customer_notes_pkey, ADD PRIMARY KEY (team_id, id);
ALTER TABLE audit_demo.appointments
    ADD FOREIGN KEY (team_id, customer_id) REFERENCES audit_demo.customers (team_id, id);
ALTER TABLE audit_demo.customer_notes
    ADD FOREIGN KEY (team_id, customer_id) REFERENCES audit_demo.customers (team_id, id);
-- audit_events stays local, so its foreign key into the reference table goes.
ALTER TABLE audit_demo.audit_events DROP CONSTRAINT audit_events_country_code_fkey;
-- Nothing is blocked now.
SELECT table_name, role, rows, null_tenant, cross_tenant, citus, blockers
  FROM tenant_backfill.audit('team_id') WHERE table_name::text LIKE 'audit_demo.%';
-- The plan: foreign keys between converted tables off, the reference table, the root,
-- the tenant tables colocated with it, the foreign keys back as they were. The local
-- tables (settings, audit_events, and every other file's) are left alone.
SELECT * FROM tenant_backfill.distribution_plan('team_id');

-- A reader sees only what it may read: secrets not at all; settings and "Invoice Lines"
-- through one column each, so the NULL rows of "Invoice Lines" go uncounted (and it is
-- blocked until they can be).
CREATE ROLE audit_demo_reader NOLOGIN;
GRANT USAGE ON SCHEMA audit_demo TO audit_demo_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA audit_demo TO audit_demo_reader;
REVOKE SELECT ON audit_demo.secrets, audit_demo.settings, audit_demo."Invoice Lines" FROM audit_demo_reader;
GRANT SELECT (key) ON audit_demo.settings TO audit_demo_reader;
GRANT SELECT ("Id") ON audit_demo."Invoice Lines" TO audit_demo_reader;
SET ROLE audit_demo_reader;
SELECT table_name, role, rows, null_tenant, citus, blockers
  FROM tenant_backfill.audit('team_id') WHERE table_name::text LIKE 'audit_demo.%';
SELECT * FROM tenant_backfill.distribution_plan('team_id');
RESET ROLE;
-- With "Invoice Lines" readable, the plan is refused for the table it cannot see at all.
GRANT SELECT ON audit_demo."Invoice Lines" TO audit_demo_reader;
SET ROLE audit_demo_reader;
SELECT * FROM tenant_backfill.distribution_plan('team_id');
RESET ROLE;

-- From 100000 estimated rows on, rows is the estimate (pg_class.reltuples) rather than
-- an exact count: after VACUUM counted 100000, five more rows do not show.
CREATE TABLE audit_demo.big_log (id int) WITH (autovacuum_enabled = false);
INSERT INTO audit_demo.big_log SELECT pg_catalog.generate_series(1, 100000);
VACUUM audit_demo.big_log;
INSERT INTO audit_demo.big_log SELECT pg_catalog.generate_series(100001, 100005);
SELECT table_name, role, rows, (SELECT count(*) FROM audit_demo.big_log) AS exact
  FROM tenant_backfill.audit('team_id') WHERE table_name = 'audit_demo.big_log'::regclass;

-- Clean up.
SELECT tenant_backfill.undefine(t)
  FROM unnest(ARRAY['audit_demo.customers', 'audit_demo.appointments', 'audit_demo.customer_notes']::regclass[]) t;
SET client_min_messages = warning;
DROP SCHEMA audit_demo CASCADE;
RESET client_min_messages;
DROP ROLE audit_demo_reader;
