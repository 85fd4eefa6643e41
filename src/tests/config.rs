//! Describe the job: define, add_source, overrides, discover (API.md section 1).

// `cargo pgrx test` calls each test as tests.<name>(), so they live in schema `tests`.
#[pgrx::pg_schema]
mod tests {
    use crate::tests::support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn define_defaults_key_to_primary_key_and_soft_delete_to_deleted_at() {
        load(&[CUSTOMERS]);
        run("SELECT tenant_backfill.define('customers', 'company_id')");
        assert_eq!(
            rows("SELECT target::text, tenant_column::text, key_column::text, soft_delete_column::text FROM tenant_backfill.targets"),
            vec!["customers|company_id|id|deleted_at"]
        );
    }

    #[pg_test]
    fn define_again_updates_instead_of_duplicating() {
        load(&[CUSTOMERS]);
        run("SELECT tenant_backfill.define('customers', 'company_id')");
        run("SELECT tenant_backfill.define('customers', 'company_id', 'id', 'updated_at')");
        assert_eq!(
            rows("SELECT target::text, soft_delete_column::text FROM tenant_backfill.targets"),
            vec!["customers|updated_at"]
        );
    }

    #[pg_test]
    fn define_rejects_bad_input_with_its_sqlstate() {
        load(&[CUSTOMERS]);
        run("CREATE TABLE no_pk (id int, company_id int);
             CREATE TABLE two_col_pk (a int, b int, company_id int, PRIMARY KEY (a, b));
             CREATE VIEW customers_view AS SELECT * FROM customers;");
        assert_eq!(
            error_of("SELECT tenant_backfill.define('nope', 'company_id')"),
            "42P01: relation \"nope\" does not exist"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('customers', 'Company_Id')"),
            "42703: column \"Company_Id\" of public.customers does not exist"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('customers', 'company_id', 'nope')"),
            "42703: column \"nope\" of public.customers does not exist"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('no_pk', 'company_id')"),
            "22023: public.no_pk has no primary key"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('two_col_pk', 'company_id')"),
            "22023: public.two_col_pk has a primary key of 2 columns"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('customers', 'company_id', 'email')"),
            "22023: key column email of public.customers is not a usable key"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('customers', 'id')"),
            "22023: the tenant column id of public.customers is also its key"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('customers_view', 'company_id')"),
            "42809: public.customers_view is not a table (it is a view)"
        );
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.targets"), 0);
    }

    #[pg_test]
    fn define_accepts_a_unique_not_null_key_column() {
        load(&[CUSTOMERS]);
        run("CREATE TABLE accounts (id int PRIMARY KEY, code text NOT NULL UNIQUE, tenant int)");
        run("SELECT tenant_backfill.define('accounts', 'tenant', 'code')");
        assert_eq!(text("SELECT key_column::text FROM tenant_backfill.targets"), Some("code".into()));
    }

    // ---------------------------------------------------------------- add_source

    #[pg_test]
    fn add_source_defaults_tenant_column_phase_and_rule() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        assert_eq!(
            rows("SELECT source::text, via::text, tenant_column::text, phase::text, rule FROM tenant_backfill.sources ORDER BY phase"),
            vec![
                "appointments|customer_id|company_id|1|unanimous",
                "phone_numbers|customer_id|company_id|2|unanimous",
                "calls|customer_id|company_id|3|majority",
            ]
        );
    }

    #[pg_test]
    fn add_source_again_updates_and_keeps_its_phase() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id', rule => 'majority')");
        assert_eq!(
            rows("SELECT source::text, phase::text, rule FROM tenant_backfill.sources ORDER BY phase"),
            vec!["appointments|1|majority", "phone_numbers|2|unanimous", "calls|3|majority"]
        );
        run("SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', phase => 7)");
        assert_eq!(count("SELECT phase::bigint FROM tenant_backfill.sources WHERE source = 'calls'::regclass"), 7);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.sources"), 3);
    }

    #[pg_test]
    fn add_source_rejects_bad_input_with_its_sqlstate() {
        load(&[CUSTOMERS]);
        run("CREATE TABLE notes (customer_ref text, company_id int, shape point)");
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id')"),
            "42704: public.customers is not a tenant_backfill target"
        );
        run("SELECT tenant_backfill.define('customers', 'company_id')");
        run("SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id')");
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'nope', 'customer_id')"),
            "42P01: relation \"nope\" does not exist"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'calls', 'customer')"),
            "42703: column \"customer\" of public.calls does not exist"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'notes', 'customer_ref')"),
            "42804: column customer_ref of public.notes is text and cannot be compared with key id of public.customers (integer)"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', 'called_at')"),
            "42804: tenant column called_at of public.calls is timestamp with time zone and cannot be cast to integer (company_id of public.customers)"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', rule => 'mostly')"),
            "22023: unknown rule \"mostly\""
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', phase => 1)"),
            "22023: phase 1 of public.customers is already public.appointments.customer_id"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', phase => 0)"),
            "22023: phase 0 is not a positive number"
        );
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.sources"), 1);
    }

    #[pg_test]
    fn add_source_accepts_comparable_and_castable_types() {
        load(&[CUSTOMERS]);
        // bigint via against an int key, text tenant cast to the int tenant.
        run("CREATE TABLE invoices (customer_id bigint, company_id text)");
        run("INSERT INTO invoices VALUES (30, '2'), (30, '2')");
        run("SELECT tenant_backfill.define('customers', 'company_id')");
        run("SELECT tenant_backfill.add_source('customers', 'invoices', 'customer_id')");
        assert_eq!(
            rows("SELECT row_key, proposed_tenant, action, evidence::text FROM tenant_backfill.plan('customers') WHERE row_key = '30'"),
            vec![r#"30|2|fill|{"invoices": {"2": 2}}"#]
        );
    }

    #[pg_test]
    fn a_role_without_select_on_a_source_gets_42501_naming_it() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        // No grant on the extension: rights on the user tables are all a role needs.
        run("CREATE ROLE tb_auditor;
             GRANT SELECT ON customers, appointments, calls TO tb_auditor;
             SET LOCAL ROLE tb_auditor;");
        assert_eq!(
            error_of("SELECT * FROM tenant_backfill.plan('customers')"),
            "42501: permission denied: role tb_auditor cannot SELECT column customer_id of public.phone_numbers"
        );
        assert_eq!(
            error_of("SELECT * FROM tenant_backfill.preflight('customers')"),
            "42501: permission denied: role tb_auditor cannot SELECT column customer_id of public.phone_numbers"
        );
        run("RESET ROLE; GRANT SELECT (customer_id, company_id) ON phone_numbers TO tb_auditor; SET LOCAL ROLE tb_auditor;");
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.plan('customers')"), 31);
        // review_queue shows whole rows, so it wants SELECT on the whole target.
        run("RESET ROLE; REVOKE SELECT ON customers FROM tb_auditor; GRANT SELECT (id, company_id) ON customers TO tb_auditor; SET LOCAL ROLE tb_auditor;");
        assert_eq!(
            error_of("SELECT * FROM tenant_backfill.review_queue('customers')"),
            "42501: permission denied: role tb_auditor cannot SELECT public.customers"
        );
    }

    // ---------------------------------------------------------------- overrides

    #[pg_test]
    fn set_override_stores_canonical_keys_and_null_removes_it() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT tenant_backfill.set_override('customers', '0030', ' 2', 'phone call with owner')");
        assert_eq!(
            rows("SELECT row_key, tenant, note FROM tenant_backfill.overrides ORDER BY row_key"),
            vec!["27|3|confirmed by support", "30|2|phone call with owner"]
        );
        assert_eq!(text("SELECT tenant_backfill.override_for('customers', '30')"), Some("2".into()));
        run("SELECT tenant_backfill.set_override('customers', '30', NULL)");
        assert_eq!(text("SELECT tenant_backfill.override_for('customers', '30')"), None);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.overrides"), 1);
    }

    #[pg_test]
    fn set_override_rejects_bad_input_with_its_sqlstate() {
        load(&[CUSTOMERS, SALES_OPS]);
        run(CUSTOMERS_JOB);
        run(r#"SELECT tenant_backfill.define('"Sales Ops"."client; DROP TABLE x--"', 'Tenant Id')"#);
        assert_eq!(
            error_of("SELECT tenant_backfill.set_override('customers', 'abc', '1')"),
            "22P02: invalid value \"abc\" for column public.customers.id of type integer"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.set_override('customers', '30', 'Acme')"),
            "22P02: invalid value \"Acme\" for column public.customers.company_id of type integer"
        );
        assert_eq!(
            error_of(
                r#"SELECT tenant_backfill.set_override('"Sales Ops"."client; DROP TABLE x--"', 'not-a-uuid', '1')"#
            ),
            r#"22P02: invalid value "not-a-uuid" for column "Sales Ops"."client; DROP TABLE x--"."Account Id" of type uuid"#
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.set_override('customers', '999', '1')"),
            "22023: public.customers has no row with id = 999"
        );
        assert_eq!(error_of("SELECT tenant_backfill.set_override('customers', NULL, '1')"), "22023: row_key is NULL");
        assert_eq!(
            error_of("SELECT tenant_backfill.set_override('companies', '1', '1')"),
            "42704: public.companies is not a tenant_backfill target"
        );
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.overrides"), 1);
    }

    #[pg_test]
    fn override_tables_are_read_live_after_the_overrides_table() {
        load(&[SHIFT_TYPES]);
        run(SHIFT_TYPES_JOB);
        assert_eq!(text(r#"SELECT tenant_backfill.override_for('"ShiftTypes"', '5')"#), Some("3".into()));
        assert_eq!(text(r#"SELECT tenant_backfill.override_for('"ShiftTypes"', '6')"#), None);
        // Live: a new config row counts at once.
        run(r#"INSERT INTO "Configs" ("Key", "Value") VALUES ('ShiftTypeCompanyOverride:6', '2')"#);
        assert_eq!(text(r#"SELECT tenant_backfill.override_for('"ShiftTypes"', '6')"#), Some("2".into()));
        // The extension's own overrides table wins over a config table.
        run(r#"SELECT tenant_backfill.set_override('"ShiftTypes"', '5', '1')"#);
        assert_eq!(text(r#"SELECT tenant_backfill.override_for('"ShiftTypes"', '5')"#), Some("1".into()));
        // Adding the same config table again updates it instead of adding a second copy.
        run(
            r#"SELECT tenant_backfill.add_override_table('"ShiftTypes"', '"Configs"', 'Key', 'Value', 'ShiftTypeCompanyOverride:')"#,
        );
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.override_tables"), 1);
    }

    #[pg_test]
    fn config_tables_of_other_collations_than_the_key_override_by_the_same_text() {
        // The key and two config tables' key columns in three collations, none the
        // database's default: compared as they are, Postgres could compare none of them
        // with another (42P22, at plan and at run).
        run(r#"CREATE TABLE accounts (code text COLLATE "POSIX" PRIMARY KEY, company_id int);
             INSERT INTO accounts VALUES ('a1', NULL), ('a2', NULL), ('A3', NULL), ('a4', 9);
             CREATE TABLE account_visits (account_code text COLLATE "POSIX", company_id int);
             INSERT INTO account_visits VALUES ('a1', 1), ('a2', 1), ('A3', 1), ('a4', 1);
             CREATE TABLE settings (key text COLLATE "C", value text);
             INSERT INTO settings VALUES ('acct:a1', '5'), ('acct:a3', '6');
             CREATE TABLE more_settings (key varchar(40) COLLATE ucs_basic, value int);
             INSERT INTO more_settings VALUES ('acct:a1', 8), ('acct:a4', 2);
             SELECT tenant_backfill.define('accounts', 'company_id');
             SELECT tenant_backfill.add_source('accounts', 'account_visits', 'account_code');
             SELECT tenant_backfill.add_override_table('accounts', 'settings', 'key', 'value', 'acct:');
             SELECT tenant_backfill.add_override_table('accounts', 'more_settings', 'key', 'value', 'acct:');"#);
        // The first config table wins where both give one; a3 is not A3's text.
        assert_eq!(text("SELECT tenant_backfill.override_for('accounts', 'a1')"), Some("5".into()));
        assert_eq!(text("SELECT tenant_backfill.override_for('accounts', 'A3')"), None);
        assert_eq!(
            rows(
                "SELECT row_key || ':' || coalesce(proposed_tenant, '-') || ':' || coalesce(action, '-') \
                  FROM tenant_backfill.plan('accounts', mode => 'reassign') ORDER BY 1"
            ),
            vec!["A3:1:fill", "a1:5:fill", "a2:1:fill", "a4:2:reassign"]
        );
        run("SELECT * FROM tenant_backfill.run_now('accounts', mode => 'reassign')");
        assert_eq!(
            rows("SELECT code || ':' || company_id FROM accounts ORDER BY code COLLATE \"C\""),
            vec!["A3:1", "a1:5", "a2:1", "a4:2"]
        );
        // a1 disagrees with its source by an override: no disagreement.
        assert_eq!(
            rows("SELECT ok::text || ':' || actual FROM tenant_backfill.validate('accounts') WHERE check_name = 'sources_agree'"),
            vec!["true:0"]
        );
    }

    /// A key and a config table's key column in a nondeterministic collation ('ABC' =
    /// 'abc'): the config table's prefix searched (starts_with refuses such a collation)
    /// and its key matched as the row's own text, byte for byte: `ACCT:A1` is not a1's,
    /// and only one override decides the row. Postgres 15 alone here: the Postgres 18 the
    /// tests run on is built without ICU.
    #[cfg(feature = "pg15")]
    #[pg_test]
    fn a_config_table_of_a_nondeterministic_collation_overrides_by_the_same_text() {
        run(r#"CREATE COLLATION case_blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE TABLE accounts (code text COLLATE case_blind PRIMARY KEY, company_id int);
             INSERT INTO accounts VALUES ('a1', NULL), ('A2', NULL);
             CREATE TABLE account_visits (account_code text, company_id int);
             INSERT INTO account_visits VALUES ('a1', 1), ('A2', 1);
             CREATE TABLE settings (key text COLLATE case_blind, value text);
             INSERT INTO settings VALUES ('ACCT:a1', '5'), ('ACCT:A1', '7'), ('acct:a2', '6');
             SELECT tenant_backfill.define('accounts', 'company_id');
             SELECT tenant_backfill.add_source('accounts', 'account_visits', 'account_code');
             SELECT tenant_backfill.add_override_table('accounts', 'settings', 'key', 'value', 'ACCT:');"#);
        assert_eq!(text("SELECT tenant_backfill.override_for('accounts', 'a1')"), Some("5".into()));
        // The row named in another case is the row, whose own text is a1.
        assert_eq!(text("SELECT tenant_backfill.override_for('accounts', 'A1')"), Some("5".into()));
        assert_eq!(text("SELECT tenant_backfill.override_for('accounts', 'A2')"), None);
        assert_eq!(
            rows("SELECT row_key || ':' || proposed_tenant || ':' || source FROM tenant_backfill.plan('accounts') ORDER BY 1"),
            vec!["A2:1:account_visits", "a1:5:settings"]
        );
        run("SELECT * FROM tenant_backfill.run_now('accounts')");
        assert_eq!(
            rows(r#"SELECT code || ':' || company_id FROM accounts ORDER BY code COLLATE "C""#),
            vec!["A2:1", "a1:5"]
        );
    }

    #[pg_test]
    fn a_timestamptz_key_is_overridden_whatever_time_zone_set_the_override_or_runs() {
        // A timestamptz prints with the offset of the session's TimeZone: the override
        // below is stored as 2024-01-01 11:00:00+01, and a session under UTC prints the
        // row's key as 2024-01-01 10:00:00+00. Matched as text, it was ignored there,
        // and the source's tenant (1) was written instead of the override's.
        run("CREATE TABLE events (at timestamptz PRIMARY KEY, company_id int);
             INSERT INTO events VALUES ('2024-01-01 10:00+00', NULL), ('2024-01-02 10:00+00', NULL),
                                       ('2024-01-03 10:00+00', NULL);
             CREATE TABLE event_visits (event_at timestamptz, company_id int);
             INSERT INTO event_visits SELECT at, 1 FROM events;
             CREATE TABLE settings (key text, value text);
             SELECT tenant_backfill.define('events', 'company_id');
             SELECT tenant_backfill.add_source('events', 'event_visits', 'event_at');
             SELECT tenant_backfill.add_override_table('events', 'settings', 'key', 'value', 'event:');
             SET LOCAL TimeZone = 'Europe/Paris';
             SELECT tenant_backfill.set_override('events', '2024-01-01 11:00:00+01', '5');
             -- A config table's text in its own spelling, and one that is no timestamp.
             INSERT INTO settings VALUES ('event:2024-01-02T05:00:00-05', '6'), ('event:tomorrow-ish', '7');
             SET LOCAL TimeZone = 'UTC';");
        assert_eq!(rows("SELECT row_key FROM tenant_backfill.overrides"), vec!["2024-01-01 11:00:00+01"]);
        assert_eq!(text("SELECT tenant_backfill.override_for('events', '2024-01-01 10:00:00+00')"), Some("5".into()));
        assert_eq!(text("SELECT tenant_backfill.override_for('events', '2024-01-02 10:00:00+00')"), Some("6".into()));
        assert_eq!(
            rows("SELECT row_key || ':' || coalesce(proposed_tenant, '-') FROM tenant_backfill.plan('events') ORDER BY 1"),
            vec!["2024-01-01 10:00:00+00:5", "2024-01-02 10:00:00+00:6", "2024-01-03 10:00:00+00:1"]
        );
        run("SELECT * FROM tenant_backfill.run_now('events')");
        assert_eq!(
            rows("SELECT at::text || ':' || company_id FROM events ORDER BY at"),
            vec!["2024-01-01 10:00:00+00:5", "2024-01-02 10:00:00+00:6", "2024-01-03 10:00:00+00:1"]
        );
        // An overridden row that disagrees with its source is no disagreement (and the
        // config text that is no timestamp overrides nothing, rather than every row).
        assert_eq!(
            rows("SELECT ok::text || ':' || actual FROM tenant_backfill.validate('events') WHERE check_name = 'sources_agree'"),
            vec!["true:0"]
        );
        // The same row's override set again from another zone replaces it, and removing
        // it from a third removes it: one override per row, whatever zone spelled it.
        run("SELECT tenant_backfill.set_override('events', '2024-01-01 10:00:00+00', '4');");
        assert_eq!(
            rows("SELECT row_key || ':' || tenant FROM tenant_backfill.overrides"),
            vec!["2024-01-01 10:00:00+00:4"]
        );
        run("SET LOCAL TimeZone = 'America/New_York';
             SELECT tenant_backfill.set_override('events', '2024-01-01 05:00:00-05', NULL);");
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.overrides"), 0);
    }

    #[pg_test]
    fn add_override_table_and_override_for_reject_bad_input() {
        load(&[SHIFT_TYPES]);
        run(SHIFT_TYPES_JOB);
        assert_eq!(
            error_of(r#"SELECT tenant_backfill.add_override_table('"ShiftTypes"', '"Configs"', 'key', 'Value')"#),
            "42703: column \"key\" of public.\"Configs\" does not exist"
        );
        run(r#"ALTER TABLE "Configs" ADD COLUMN "Shape" point"#);
        assert_eq!(
            error_of(r#"SELECT tenant_backfill.add_override_table('"ShiftTypes"', '"Configs"', 'Key', 'Shape')"#),
            "42804: column Shape of public.\"Configs\" is point and cannot be cast to integer (CompanyId of public.\"ShiftTypes\")"
        );
        assert_eq!(
            error_of(r#"SELECT tenant_backfill.override_for('"ShiftTypes"', 'five')"#),
            "22P02: invalid value \"five\" for column public.\"ShiftTypes\".\"Id\" of type integer"
        );
        assert_eq!(
            error_of(r#"SELECT tenant_backfill.override_for('"Companies"', '1')"#),
            "42704: public.\"Companies\" is not a tenant_backfill target"
        );
    }

    // ---------------------------------------------------------------- discover

    #[pg_test]
    fn discover_lists_foreign_keys_from_tables_with_the_tenant_column() {
        load(&[CUSTOMERS]);
        run("SELECT tenant_backfill.define('customers', 'company_id')");
        // A foreign key from a table without company_id is no candidate.
        run("CREATE TABLE reviews (id int PRIMARY KEY, customer_id int REFERENCES customers)");
        assert_eq!(
            rows("SELECT source::text, via::text, tenant_column::text, has_index::text FROM tenant_backfill.discover('customers')"),
            vec![
                "appointments|customer_id|company_id|true",
                "calls|customer_id|company_id|true",
                "phone_numbers|customer_id|company_id|false",
            ]
        );
    }
}
