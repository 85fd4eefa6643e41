-- What a DBA sees for each mistake: what was wrong and what to do.
-- A schema of its own, so these customers do not meet 01_customers' ones.
CREATE SCHEMA errors;
SET search_path = errors, public;
\set ECHO none
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/customers.sql'
\i :fixture
\set ECHO all
\set VERBOSITY default
-- Errors are about their messages here, not where PL/pgSQL wrappers raised them.
\set SHOW_CONTEXT never
-- A table that does not exist (42P01) and one that was never defined (42704).
SELECT tenant_backfill.define('custmers', 'company_id');
SELECT * FROM tenant_backfill.plan('customers');
-- A column that does not exist (42703): names are matched exactly, case included.
SELECT tenant_backfill.define('customers', 'Company_Id');
-- A target without a usable single-column key (22023).
CREATE TABLE visits (customer_id int, day date, company_id int, PRIMARY KEY (customer_id, day));
SELECT tenant_backfill.define('visits', 'company_id');
SELECT tenant_backfill.define('customers', 'company_id', 'email');
SELECT tenant_backfill.define('customers', 'company_id');
-- A key or tenant of type money (0A000): its text follows lc_monetary, so a key kept as text
-- would not read back in a session with another locale.
CREATE TABLE price_list (price money PRIMARY KEY, company_id int);
SELECT tenant_backfill.define('price_list', 'company_id');
CREATE TABLE payments (id int PRIMARY KEY, company_id money);
SELECT tenant_backfill.define('payments', 'company_id');
-- A via column and a key of two different collations (0A000): Postgres cannot compare them
-- without a COLLATE clause. The database's default on either side compares.
CREATE TABLE accounts (code text COLLATE "C" PRIMARY KEY, company_id int);
CREATE TABLE account_visits (account_code text COLLATE "POSIX", plain_code text, company_id int);
SELECT tenant_backfill.define('accounts', 'company_id');
SELECT tenant_backfill.add_source('accounts', 'account_visits', 'account_code');
SELECT tenant_backfill.add_source('accounts', 'account_visits', 'plain_code');
INSERT INTO accounts VALUES ('a', NULL), ('b', NULL);
INSERT INTO account_visits VALUES (NULL, 'a', 7);
SELECT row_key, action, proposed_tenant FROM tenant_backfill.plan('accounts') ORDER BY 1;
SELECT tenant_backfill.undefine('accounts');
-- A via column whose type cannot be compared with the key (42804).
CREATE TABLE notes (customer_ref text, company_id int);
SELECT tenant_backfill.add_source('customers', 'notes', 'customer_ref');
-- A tenant column that cannot be cast to the target's tenant type (42804).
SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', 'called_at');
-- An unknown rule, a taken phase (22023).
SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', rule => 'mostly');
SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id');
SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', phase => 1);
-- Keys and tenants that do not cast to the column's type (22P02), a row that does not exist.
SELECT tenant_backfill.set_override('customers', 'twenty', '1');
SELECT tenant_backfill.set_override('customers', '20', 'Acme Dental');
SELECT tenant_backfill.set_override('customers', '2000', '1');
-- An unknown mode (22023).
SELECT * FROM tenant_backfill.preflight('customers', 'fix');
-- None of the mistakes left anything behind.
SELECT count(*) AS sources FROM tenant_backfill.sources WHERE target = 'errors.customers'::regclass;
SELECT count(*) AS overrides FROM tenant_backfill.overrides WHERE target = 'errors.customers'::regclass;
