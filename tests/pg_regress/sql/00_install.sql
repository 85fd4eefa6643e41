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
SELECT p.oid::regproc AS security_definer_function, p.proconfig
  FROM pg_proc p
 WHERE p.pronamespace IN ('tenant_backfill'::regnamespace, 'tenant_backfill_internal'::regnamespace) AND p.prosecdef
 ORDER BY 1;
-- The internal functions live in a schema of their own, out of \df tenant_backfill.*;
-- the interface schema holds none. Those only the event triggers call are not executable
-- by PUBLIC; the others are called by CALL run and CALL finalize with the caller's rights.
SELECT count(*) AS internal_functions_in_the_interface_schema
  FROM pg_proc WHERE pronamespace = 'tenant_backfill'::regnamespace AND proname LIKE '\_%';
SELECT p.proname AS internal_function,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_execute
  FROM pg_proc p WHERE p.pronamespace = 'tenant_backfill_internal'::regnamespace
 ORDER BY 1;
-- The event triggers: dropped tables leave the configuration, inheriting tables get the guard.
SELECT evtname, evtevent, evttags, evtfoid::regproc FROM pg_event_trigger ORDER BY 1;
