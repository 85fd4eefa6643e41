-- Keep it fixed: the guard trigger function, and what it leaves behind.

-- The guard (src/trigger.rs); tenant_backfill.enforce(target) installs it on a target.
-- The library is versioned (see LIBRARY in src/lib.rs): this name changes with Cargo.toml's
-- version, and CREATE EXTENSION fails at once if the two disagree.
CREATE FUNCTION @extschema@.guard() RETURNS trigger
LANGUAGE c
AS 'tenant_backfill-0.2.0', 'guard_wrapper';

-- Every logged, assigned, quarantined or rejected write of a NULL tenant. Rejected
-- writes (mode reject) abort their statement, so they reach this table only when
-- tenant_backfill is in shared_preload_libraries: a background worker of this database
-- writes them here from a shared-memory queue, within about a second (src/rejections.rs).
-- Without preloading they are written to the server log at LOG level instead
-- (tenant_backfill.enforce says so).
CREATE TABLE @extschema@.violations (
    violation_id     bigserial PRIMARY KEY,
    occurred_at      pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    target           pg_catalog.regclass NOT NULL,
    row_key          pg_catalog.text,
    column_name      pg_catalog.name,
    role             pg_catalog.name NOT NULL DEFAULT CURRENT_USER,
    application_name pg_catalog.text,
    -- the guard's mode: reject, quarantine, assign or log
    mode             pg_catalog.text NOT NULL,
    -- what it did: rejected, quarantined, assigned or logged
    action           pg_catalog.text NOT NULL,
    operation        pg_catalog.text
);
CREATE INDEX violations_target_time_idx ON @extschema@.violations (target, occurred_at);
COMMENT ON TABLE @extschema@.violations IS
    'Writes of a NULL tenant the guard saw. Rejected ones arrive only with shared_preload_libraries (else: server log).';

-- Rows the guard kept out of their table (mode quarantine), whole, until they carry a
-- tenant and release_quarantine() puts them back.
CREATE TABLE @extschema@.quarantine (
    quarantine_id    bigserial PRIMARY KEY,
    target           pg_catalog.regclass NOT NULL,
    operation        pg_catalog.text NOT NULL,
    row_key          pg_catalog.text,
    row_data         pg_catalog.jsonb NOT NULL,
    role             pg_catalog.name NOT NULL DEFAULT CURRENT_USER,
    application_name pg_catalog.text,
    quarantined_at   pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    released_at      pg_catalog.timestamptz,
    released_by      pg_catalog.name,
    released_run     pg_catalog.int8
);
CREATE INDEX quarantine_waiting_idx ON @extschema@.quarantine (target) WHERE released_at IS NULL;
COMMENT ON TABLE @extschema@.quarantine IS
    'Rows kept out of their table for lack of a tenant; release_quarantine() puts them back.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.violations', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.violations_violation_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.quarantine', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.quarantine_quarantine_id_seq', '');
