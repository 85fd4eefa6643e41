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
 WHERE p.pronamespace = 'tenant_backfill'::regnamespace AND p.proname IN ('define', 'add_source', 'plan', 'run', 'start', 'wait')
 ORDER BY p.proname;
-- Every function runs with the caller's rights, but the two event trigger functions
-- (they act on DDL of roles that need no rights on the extension), which pin their
-- search_path.
SELECT p.proname AS security_definer_function, p.proconfig
  FROM pg_proc p WHERE p.pronamespace = 'tenant_backfill'::regnamespace AND p.prosecdef;
-- The event triggers: dropped tables leave the configuration, inheriting tables get the guard.
SELECT evtname, evtevent, evttags, evtfoid::regproc FROM pg_event_trigger ORDER BY 1;
