-- Who may read and write the extension's own tables. Nobody writes them but the
-- extension's code, as the extension's owner (src/sql.rs, as_extension_owner), after it
-- checked the caller's rights on the user tables: no role is granted INSERT, UPDATE or
-- DELETE here, so a forged override, source, backup or audit row cannot be written, and
-- the audit log is append-only. Everyone may read them, and row-level security shows
-- each role only the rows about tables it may read (a dropped table's rows to no one
-- but the owner). No grant on the extension is needed to use it.
GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;

-- Who sees which rows: the configuration and the runs of a table to whoever may read a
-- column of it; what holds its values
-- (backup and audit log with old and new tenants and evidence, violations, whole
-- quarantined rows) to whoever may read the whole table. The extension reads what it
-- needs of the logs as their owner, after checking the caller's rights on the table.
DO $access$
DECLARE
    policy pg_catalog.text[];
BEGIN
    FOREACH policy SLICE 1 IN ARRAY ARRAY[
        ['targets', 'pg_catalog.has_any_column_privilege(target::pg_catalog.oid, ''SELECT'')'],
        ['runs', 'pg_catalog.has_any_column_privilege(target::pg_catalog.oid, ''SELECT'')'],
        ['run_parts', 'pg_catalog.has_any_column_privilege(target::pg_catalog.oid, ''SELECT'')'],
        ['run_skipped', 'pg_catalog.has_any_column_privilege(target::pg_catalog.oid, ''SELECT'')'],
        ['overrides', 'pg_catalog.has_any_column_privilege(target::pg_catalog.oid, ''SELECT'')'],
        -- (not narrowed by the source's rights: a run must see every source, and stop
        -- with 42501 at one it may not read, rather than run without it)
        ['sources', 'pg_catalog.has_any_column_privilege(target::pg_catalog.oid, ''SELECT'')'],
        ['override_tables', 'pg_catalog.has_any_column_privilege(target::pg_catalog.oid, ''SELECT'')'],
        ['backup', 'pg_catalog.has_table_privilege(target::pg_catalog.oid, ''SELECT'')'],
        ['audit_log', 'pg_catalog.has_table_privilege(target::pg_catalog.oid, ''SELECT'')'],
        ['violations', 'pg_catalog.has_table_privilege(target::pg_catalog.oid, ''SELECT'')'],
        ['quarantine', 'pg_catalog.has_table_privilege(target::pg_catalog.oid, ''SELECT'')']]
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', policy[1]);
        EXECUTE pg_catalog.format('CREATE POLICY readable ON @extschema@.%I FOR SELECT USING (%s)', policy[1], policy[2]);
        EXECUTE pg_catalog.format('GRANT SELECT ON @extschema@.%I TO PUBLIC', policy[1]);
    END LOOP;
END
$access$;

-- The view reads runs with the rights of whoever reads it, so its policy applies.
ALTER VIEW @extschema@.progress SET (security_invoker = true);
GRANT SELECT ON @extschema@.progress TO PUBLIC;
