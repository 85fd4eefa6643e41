-- The functions only the extension's own SQL calls (the steps of CALL run and CALL
-- finalize, the event triggers, helpers of the generated SQL) live in a schema of their
-- own, so that \df tenant_backfill.* lists the interface and nothing else. CALL run and
-- CALL finalize run with the caller's rights and call them, so PUBLIC may use the schema;
-- each refuses outside its context (README, "Security").
CREATE SCHEMA tenant_backfill_internal;
GRANT USAGE ON SCHEMA tenant_backfill_internal TO PUBLIC;

-- The configuration of tenant_backfill: plain tables, so a DBA can read them with
-- SELECT, and registered with pg_extension_config_dump so pg_dump keeps them.

CREATE TABLE @extschema@.targets (
    target             pg_catalog.regclass PRIMARY KEY,
    tenant_column      pg_catalog.name NOT NULL,
    key_column         pg_catalog.name NOT NULL,
    soft_delete_column pg_catalog.name NOT NULL DEFAULT 'deleted_at',
    -- the columns' numbers when defined: a rename keeps them, so a column renamed
    -- since (or another one added under the old name) is noticed, never used by mistake;
    -- target_oid is the table's OID then, which a dump and restore (or a table dropped
    -- and created again) changes, and with it the numbers: then the names are trusted
    tenant_attnum      pg_catalog.int2,
    key_attnum         pg_catalog.int2,
    target_oid         pg_catalog.oid,
    defined_at         pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    defined_by         pg_catalog.name NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE @extschema@.targets IS
    'Tables whose tenant column tenant_backfill repairs (one row per define()).';

CREATE TABLE @extschema@.sources (
    target        pg_catalog.regclass NOT NULL
                  REFERENCES @extschema@.targets (target) ON DELETE CASCADE,
    source        pg_catalog.regclass NOT NULL,
    via           pg_catalog.name NOT NULL,
    tenant_column pg_catalog.name NOT NULL,
    phase         pg_catalog.int4 NOT NULL CHECK (phase > 0),
    rule          pg_catalog.text NOT NULL CHECK (rule IN ('unanimous', 'majority')),
    PRIMARY KEY (target, source, via),
    UNIQUE (target, phase),
    -- child: via is the source's column and holds the target's key (appointments.customer_id);
    -- parent: via is the target's column and holds the source's source_key (the target row
    -- points at its parent, customers.company_id from companies through via).
    direction     pg_catalog.text NOT NULL DEFAULT 'child'
                  CONSTRAINT sources_direction_check CHECK (direction IN ('child', 'parent')),
    source_key    pg_catalog.name,
    CONSTRAINT sources_source_key_check CHECK ((direction OPERATOR(pg_catalog.=) 'parent') OPERATOR(pg_catalog.=) (source_key IS NOT NULL))
);
COMMENT ON TABLE @extschema@.sources IS
    'Related tables whose tenants are the evidence, tried in phase order (add_source()).';

CREATE TABLE @extschema@.overrides (
    target  pg_catalog.regclass NOT NULL
            REFERENCES @extschema@.targets (target) ON DELETE CASCADE,
    row_key pg_catalog.text NOT NULL,
    tenant  pg_catalog.text NOT NULL,
    note    pg_catalog.text,
    set_at  pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    set_by  pg_catalog.name NOT NULL DEFAULT CURRENT_USER,
    PRIMARY KEY (target, row_key)
);
COMMENT ON TABLE @extschema@.overrides IS
    'A DBA''s decisions for single rows; they beat every phase (set_override()).';

CREATE TABLE @extschema@.override_tables (
    target       pg_catalog.regclass NOT NULL
                 REFERENCES @extschema@.targets (target) ON DELETE CASCADE,
    config_table pg_catalog.regclass NOT NULL,
    key_column   pg_catalog.name NOT NULL,
    value_column pg_catalog.name NOT NULL,
    key_prefix   pg_catalog.text NOT NULL DEFAULT '',
    position     pg_catalog.int4 NOT NULL,
    PRIMARY KEY (target, config_table, key_column, key_prefix)
);
COMMENT ON TABLE @extschema@.override_tables IS
    'Application config tables read live for overrides, after the overrides table, in position order (add_override_table()).';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.targets', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.sources', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.overrides', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.override_tables', '');

-- Whether a value casts to a type, without failing, cast the way the decision query
-- casts it (from its own type: a numeric's cast to an integer rounds, where its text
-- would not parse; from text, the type's input function). The exception block is a
-- subtransaction, the one safe way to try a cast on Postgres 15. A domain's CHECK or NOT
-- NULL fails with an integrity error (class 23), a bad value with a data exception (22).
CREATE FUNCTION tenant_backfill_internal._casts_to(value anyelement, type_name pg_catalog.regtype)
RETURNS pg_catalog.bool
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format('SELECT $1::%s', type_name) USING value;
    RETURN true;
EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
    RETURN false;
END
$$;
