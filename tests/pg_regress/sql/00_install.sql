-- Installing the extension creates its schema, its configuration tables and the
-- functions and the run procedure of API.md, with exactly these signatures.
CREATE EXTENSION tenant_backfill;
SELECT p.oid::regprocedure AS function, pg_get_function_result(p.oid) AS returns
  FROM pg_proc p
 WHERE p.pronamespace = 'tenant_backfill'::regnamespace AND p.proname NOT LIKE '\_%'
 ORDER BY p.proname;
-- Defaults a DBA relies on.
SELECT p.proname, pg_get_function_arguments(p.oid) AS arguments
  FROM pg_proc p
 WHERE p.pronamespace = 'tenant_backfill'::regnamespace AND p.proname IN ('define', 'add_source', 'plan')
 ORDER BY p.proname;
-- Every function runs with the caller's rights.
SELECT count(*) AS security_definer_functions
  FROM pg_proc p WHERE p.pronamespace = 'tenant_backfill'::regnamespace AND p.prosecdef;
