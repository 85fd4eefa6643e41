-- (The last file: a rolled-back run still takes a run id, which the files before print.)
CREATE SCHEMA one_transaction;
SET search_path = one_transaction, public;
\set VERBOSITY default
-- A migration that fills several tables in one transaction: each run_now takes at most 48
-- statements less the subtransaction ids its transaction holds already (each statement that
-- writes takes one, and past 64 every other session's snapshots overflow), and says so when
-- that makes its statements larger than run_now_statement_rows.
BEGIN;
CREATE TABLE many_ids (id int PRIMARY KEY, org int);
CREATE TABLE many_ids_src (many_ids_id int, org int);
INSERT INTO many_ids SELECT i, NULL FROM generate_series(1, 40) i;
INSERT INTO many_ids_src SELECT i, i % 3 + 1 FROM generate_series(1, 40) i;
SELECT tenant_backfill.define('many_ids', 'org');
SELECT tenant_backfill.add_source('many_ids', 'many_ids_src', 'many_ids_id');
CREATE TEMP TABLE taken (i int);
DO $$ BEGIN FOR i IN 1..40 LOOP BEGIN INSERT INTO taken VALUES (i); EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $$;
SET LOCAL tenant_backfill.run_now_statement_rows = 1;
SELECT rows_changed FROM tenant_backfill.run_now('many_ids');
ROLLBACK;
