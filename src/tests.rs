//! `#[pg_test]` units: each runs in a transaction that is rolled back, against the
//! same fixtures the pg_regress suite and the demo load (tests/fixtures/).


use pgrx::prelude::*;

// `cargo pgrx test` calls each test as tests.<name>(), so they live in schema `tests`.
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    const CUSTOMERS: &str = include_str!("../tests/fixtures/customers.sql");
    const SHIFT_TYPES: &str = include_str!("../tests/fixtures/shift_types.sql");
    const SALES_OPS: &str = include_str!("../tests/fixtures/sales_ops.sql");

    /// The customers job of the runbook, configured as a DBA would.
    const CUSTOMERS_JOB: &str = "
        SELECT tenant_backfill.define('customers', 'company_id');
        SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id');
        SELECT tenant_backfill.add_source('customers', 'phone_numbers', 'customer_id');
        SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', rule => 'majority');
        SELECT tenant_backfill.set_override('customers', '27', '3', 'confirmed by support');
    ";

    const SHIFT_TYPES_JOB: &str = r#"
        SELECT tenant_backfill.define('"ShiftTypes"', 'CompanyId');
        SELECT tenant_backfill.add_source('"ShiftTypes"', '"ShiftInstances"', 'ShiftTypeId', rule => 'majority');
        SELECT tenant_backfill.add_override_table('"ShiftTypes"', '"Configs"', 'Key', 'Value', 'ShiftTypeCompanyOverride:');
    "#;

    fn run(sql: &str) {
        Spi::run(sql).expect("SQL failed");
    }

    fn load(fixtures: &[&str]) {
        run("CREATE FUNCTION pg_temp.error_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN
                 EXECUTE statement;
                 RETURN 'no error';
             EXCEPTION WHEN others THEN
                 RETURN SQLSTATE || ': ' || SQLERRM;
             END $$");
        for fixture in fixtures {
            run(fixture);
        }
    }

    /// "SQLSTATE: message" of the error a statement raises (or "no error").
    fn error_of(statement: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT pg_temp.error_of($1)", &[statement.into()])
            .expect("error_of failed")
            .expect("error_of returned NULL")
    }

    fn text(query: &str) -> Option<String> {
        Spi::get_one::<String>(query).expect("query failed")
    }

    fn count(query: &str) -> i64 {
        Spi::get_one::<i64>(query).expect("query failed").expect("count was NULL")
    }

    /// Rows of a query as text columns joined by '|', in the query's order.
    fn rows(query: &str) -> Vec<String> {
        Spi::connect(|client| {
            let table = client.select(query, None, &[]).expect("query failed");
            let mut out = Vec::new();
            for row in table {
                let n = row.columns();
                let cols: Vec<String> = (1..=n)
                    .map(|i| row.get::<String>(i).expect("cast every column to text").unwrap_or_default())
                    .collect();
                out.push(cols.join("|"));
            }
            out
        })
    }

    // ---------------------------------------------------------------- define

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
            "42703: column \"Company_Id\" of customers does not exist"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('customers', 'company_id', 'nope')"),
            "42703: column \"nope\" of customers does not exist"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('no_pk', 'company_id')"),
            "22023: no_pk has no primary key"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('two_col_pk', 'company_id')"),
            "22023: two_col_pk has a primary key of 2 columns"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('customers', 'company_id', 'email')"),
            "22023: key column email of customers is not a usable key"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('customers', 'id')"),
            "22023: the tenant column id of customers is also its key"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.define('customers_view', 'company_id')"),
            "42809: customers_view is not a table"
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
            "42704: customers is not a tenant_backfill target"
        );
        run("SELECT tenant_backfill.define('customers', 'company_id')");
        run("SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id')");
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'nope', 'customer_id')"),
            "42P01: relation \"nope\" does not exist"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'calls', 'customer')"),
            "42703: column \"customer\" of calls does not exist"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'notes', 'customer_ref')"),
            "42804: column customer_ref of notes is text and cannot be compared with key id of customers (integer)"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', 'called_at')"),
            "42804: tenant column called_at of calls is timestamp with time zone and cannot be cast to integer (company_id of customers)"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', rule => 'mostly')"),
            "22023: unknown rule \"mostly\""
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', phase => 1)"),
            "22023: phase 1 of customers is already appointments.customer_id"
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
        run("CREATE ROLE tb_auditor;
             GRANT USAGE ON SCHEMA tenant_backfill TO tb_auditor;
             GRANT SELECT ON ALL TABLES IN SCHEMA tenant_backfill TO tb_auditor;
             GRANT SELECT ON customers, appointments, calls TO tb_auditor;
             SET LOCAL ROLE tb_auditor;");
        assert_eq!(
            error_of("SELECT * FROM tenant_backfill.plan('customers')"),
            "42501: permission denied: role tb_auditor cannot SELECT column customer_id of phone_numbers"
        );
        assert_eq!(
            error_of("SELECT * FROM tenant_backfill.preflight('customers')"),
            "42501: permission denied: role tb_auditor cannot SELECT column customer_id of phone_numbers"
        );
        run("RESET ROLE; GRANT SELECT (customer_id, company_id) ON phone_numbers TO tb_auditor; SET LOCAL ROLE tb_auditor;");
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.plan('customers')"), 31);
        // review_queue shows whole rows, so it wants SELECT on the whole target.
        run("RESET ROLE; REVOKE SELECT ON customers FROM tb_auditor; GRANT SELECT (id, company_id) ON customers TO tb_auditor; SET LOCAL ROLE tb_auditor;");
        assert_eq!(
            error_of("SELECT * FROM tenant_backfill.review_queue('customers')"),
            "42501: permission denied: role tb_auditor cannot SELECT customers"
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
            "22P02: invalid value \"abc\" for column customers.id of type integer"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.set_override('customers', '30', 'Acme')"),
            "22P02: invalid value \"Acme\" for column customers.company_id of type integer"
        );
        assert_eq!(
            error_of(r#"SELECT tenant_backfill.set_override('"Sales Ops"."client; DROP TABLE x--"', 'not-a-uuid', '1')"#),
            r#"22P02: invalid value "not-a-uuid" for column "Sales Ops"."client; DROP TABLE x--"."Account Id" of type uuid"#
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.set_override('customers', '999', '1')"),
            "22023: customers has no row with id = 999"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.set_override('customers', NULL, '1')"),
            "22023: row_key is NULL"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.set_override('companies', '1', '1')"),
            "42704: companies is not a tenant_backfill target"
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
        run(r#"SELECT tenant_backfill.add_override_table('"ShiftTypes"', '"Configs"', 'Key', 'Value', 'ShiftTypeCompanyOverride:')"#);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.override_tables"), 1);
    }

    #[pg_test]
    fn add_override_table_and_override_for_reject_bad_input() {
        load(&[SHIFT_TYPES]);
        run(SHIFT_TYPES_JOB);
        assert_eq!(
            error_of(r#"SELECT tenant_backfill.add_override_table('"ShiftTypes"', '"Configs"', 'key', 'Value')"#),
            "42703: column \"key\" of \"Configs\" does not exist"
        );
        run(r#"ALTER TABLE "Configs" ADD COLUMN "Shape" point"#);
        assert_eq!(
            error_of(r#"SELECT tenant_backfill.add_override_table('"ShiftTypes"', '"Configs"', 'Key', 'Shape')"#),
            "42804: column Shape of \"Configs\" is point and cannot be cast to integer (CompanyId of \"ShiftTypes\")"
        );
        assert_eq!(
            error_of(r#"SELECT tenant_backfill.override_for('"ShiftTypes"', 'five')"#),
            "22P02: invalid value \"five\" for column \"ShiftTypes\".\"Id\" of type integer"
        );
        assert_eq!(
            error_of(r#"SELECT tenant_backfill.override_for('"Companies"', '1')"#),
            "42704: \"Companies\" is not a tenant_backfill target"
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

    // ---------------------------------------------------------------- the decision engine

    #[pg_test]
    fn plan_follows_the_cascade_for_every_bucket() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        assert_eq!(
            rows("SELECT action, count(*)::text FROM tenant_backfill.plan('customers') GROUP BY action ORDER BY action"),
            vec!["conflict|4", "fill|23", "orphan|2", "unresolved|2"]
        );
        assert_eq!(
            rows("SELECT row_key, coalesce(proposed_tenant, '-'), action, coalesce(phase::text, '-'), coalesce(source, '-'), coalesce(rule, '-'), evidence::text
                    FROM tenant_backfill.plan('customers') WHERE row_key IN ('1', '16', '19', '24', '26', '27', '28', '30')"),
            vec![
                r#"1|2|fill|1|appointments|unanimous|{"appointments": {"2": 2}}"#,
                r#"16|-|conflict|1|appointments|unanimous|{"appointments": {"1": 1, "2": 1}, "phone_numbers": {"1": 1}}"#,
                r#"19|2|fill|2|phone_numbers|unanimous|{"phone_numbers": {"2": 1}}"#,
                r#"24|-|conflict|2|phone_numbers|unanimous|{"phone_numbers": {"1": 1, "3": 1}}"#,
                r#"26|2|fill|3|calls|majority|{"calls": {"2": 1, "3": 1}}"#,
                r#"27|3|fill|0|overrides|override|{"appointments": {"1": 1, "2": 1}}"#,
                "28|-|unresolved|-|-|-|{}",
                "30|-|orphan|-|-|-|{}",
            ]
        );
    }

    #[pg_test]
    fn plan_is_in_key_order_and_never_lists_rows_that_have_a_tenant() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        let keys: Vec<String> = rows("SELECT row_key FROM tenant_backfill.plan('customers')");
        let expected: Vec<String> = (1..=31).map(|i| i.to_string()).collect();
        assert_eq!(keys, expected);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.plan('customers') WHERE current_tenant IS NOT NULL"), 0);
    }

    /// The engine turns JIT off for its own statements and puts the caller's setting back.
    #[pg_test]
    fn reports_and_runs_leave_the_callers_jit_setting_as_it_was() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        for setting in ["on", "off", "on"] {
            run(&format!("SET LOCAL jit = {setting}"));
            run("SELECT count(*) FROM tenant_backfill.plan('customers')");
            run("SELECT count(*) FROM tenant_backfill.preflight('customers')");
            run("SELECT count(*) FROM tenant_backfill.conflicts('customers')");
            run("SELECT count(*) FROM tenant_backfill.review_queue('customers')");
            run("SELECT count(*) FROM tenant_backfill.run_now('customers', dry_run => true)");
            assert_eq!(text("SELECT current_setting('jit')").as_deref(), Some(setting));
        }
    }

    #[pg_test]
    fn preflight_counts_every_bucket() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        assert_eq!(
            rows("SELECT check_name, rows::text, coalesce(detail, '') FROM tenant_backfill.preflight('customers')"),
            vec![
                "total_rows|60|customers",
                "null_tenant|31|company_id IS NULL",
                "by_override|1|overrides: 1",
                "by_phase_1|15|appointments (unanimous)",
                "by_phase_2|5|phone_numbers (unanimous)",
                "by_phase_3|2|calls (majority)",
                "conflicts|4|appointments: 3, phone_numbers: 1",
                "orphans|2|no related rows in any source",
                "unresolved|2|related rows exist but none carries a tenant",
                "source_null_tenant|4|appointments: 2, phone_numbers: 1, calls: 1",
                "missing_index|1|phone_numbers.customer_id",
            ]
        );
    }

    #[pg_test]
    fn conflicts_and_review_queue_list_what_is_left_for_a_human() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        assert_eq!(
            rows("SELECT row_key FROM tenant_backfill.conflicts('customers')"),
            vec!["16", "17", "18", "24"]
        );
        assert_eq!(
            rows("SELECT row_key, reason, row_data->>'email', coalesce(tenant, '') FROM tenant_backfill.review_queue('customers')"),
            vec![
                "16|conflict|customer16@example.com|",
                "17|conflict|customer17@example.com|",
                "18|conflict|customer18@example.com|",
                "24|conflict|customer24@example.com|",
                "28|unresolved|customer28@example.com|",
                "29|unresolved|customer29@example.com|",
                "30|orphan|customer30@example.com|",
                "31|orphan|customer31@example.com|",
            ]
        );
    }

    #[pg_test]
    fn a_majority_tie_goes_to_the_lowest_tenant_in_the_tenants_own_order() {
        load(&[CUSTOMERS]);
        // 9 and 10: as text '10' < '9', as integers 9 < 10.
        run("INSERT INTO companies VALUES (9, 'Nine'), (10, 'Ten');
             INSERT INTO calls (customer_id, company_id) VALUES (31, 10), (31, 9);");
        run(CUSTOMERS_JOB);
        assert_eq!(
            rows("SELECT proposed_tenant, action FROM tenant_backfill.plan('customers') WHERE row_key = '31'"),
            vec!["9|fill"]
        );
    }

    #[pg_test]
    fn reassign_corrects_contradicted_tenants_with_overrides_first() {
        load(&[SHIFT_TYPES]);
        run(SHIFT_TYPES_JOB);
        assert_eq!(
            rows(r#"SELECT row_key, current_tenant, proposed_tenant, action, phase::text, source, rule FROM tenant_backfill.plan('"ShiftTypes"', 'reassign')"#),
            vec![
                "2|1|2|reassign|1|ShiftInstances|majority",
                "3|1|3|reassign|1|ShiftInstances|majority",
                "4|1|2|reassign|1|ShiftInstances|majority",
                "5|1|3|reassign|0|Configs|override",
                "8|1|2|reassign|0|Configs|override",
            ]
        );
        // In fill mode nothing is NULL, so nothing is planned.
        assert_eq!(count(r#"SELECT count(*) FROM tenant_backfill.plan('"ShiftTypes"')"#), 0);
        assert_eq!(
            rows(r#"SELECT check_name, rows::text FROM tenant_backfill.preflight('"ShiftTypes"', 'reassign') WHERE check_name IN ('by_override', 'by_phase_1', 'mismatched')"#),
            vec!["by_override|2", "by_phase_1|3", "mismatched|5"]
        );
    }

    #[pg_test]
    fn reassign_flags_a_non_null_row_whose_unanimous_evidence_disagrees() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        // Customer 40 (company 2) has an appointment of company 2 and one of company 3.
        run("INSERT INTO appointments (customer_id, company_id) VALUES (40, 3)");
        assert_eq!(
            rows("SELECT row_key, current_tenant, action FROM tenant_backfill.plan('customers', 'reassign') WHERE current_tenant IS NOT NULL"),
            vec!["40|2|conflict"]
        );
    }

    #[pg_test]
    fn an_unknown_mode_is_22023() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        assert_eq!(
            error_of("SELECT * FROM tenant_backfill.plan('customers', 'repair')"),
            "22023: unknown mode \"repair\""
        );
        assert_eq!(
            error_of("SELECT * FROM tenant_backfill.preflight('customers', NULL)"),
            "22023: unknown mode \"NULL\""
        );
    }

    #[pg_test]
    fn a_target_without_sources_plans_overrides_and_orphans() {
        load(&[CUSTOMERS]);
        run("SELECT tenant_backfill.define('customers', 'company_id');
             SELECT tenant_backfill.set_override('customers', '5', '1');");
        assert_eq!(
            rows("SELECT action, count(*)::text FROM tenant_backfill.plan('customers') GROUP BY action ORDER BY action"),
            vec!["fill|1", "orphan|30"]
        );
    }

    #[pg_test]
    fn quoted_names_uuid_keys_and_bigint_tenants_work() {
        load(&[SALES_OPS]);
        run(r#"SELECT tenant_backfill.define('"Sales Ops"."client; DROP TABLE x--"', 'Tenant Id');
               SELECT tenant_backfill.add_source('"Sales Ops"."client; DROP TABLE x--"', '"Sales Ops"."Deal Log"', 'Account Ref');"#);
        assert_eq!(
            rows(r#"SELECT row_key, coalesce(proposed_tenant, '-'), action FROM tenant_backfill.plan('"Sales Ops"."client; DROP TABLE x--"')"#),
            vec![
                "00000000-0000-4000-8000-000000000001|7000000001|fill",
                "00000000-0000-4000-8000-000000000002|7000000002|fill",
                "00000000-0000-4000-8000-000000000003|9000000000000000003|fill",
                "00000000-0000-4000-8000-000000000004|7000000002|fill",
                "00000000-0000-4000-8000-000000000005|-|conflict",
                "00000000-0000-4000-8000-000000000006|-|orphan",
            ]
        );
        // The tables are all still there.
        assert_eq!(count(r#"SELECT count(*) FROM "Sales Ops"."client; DROP TABLE x--""#), 7);
    }

    /// uuid has no min()/max() and text needs JSON escaping: the one-tenant and the
    /// several-tenant paths of the engine both handle them, for both rules.
    #[pg_test]
    fn uuid_and_text_tenants_with_quotes_decide_and_show_evidence() {
        load(&[]);
        run(r#"CREATE TABLE accounts (id int PRIMARY KEY, org uuid);
               CREATE TABLE logins (account_id int, org uuid);
               INSERT INTO accounts VALUES (1, NULL), (2, NULL), (3, NULL);
               INSERT INTO logins VALUES
                   (1, 'b0000000-0000-4000-8000-000000000002'), (1, 'b0000000-0000-4000-8000-000000000002'),
                   (2, 'b0000000-0000-4000-8000-000000000002'), (2, 'a0000000-0000-4000-8000-000000000001'),
                   (3, 'b0000000-0000-4000-8000-000000000002'), (3, 'a0000000-0000-4000-8000-000000000001'),
                   (3, 'b0000000-0000-4000-8000-000000000002'), (3, NULL);
               CREATE TABLE notes (id int PRIMARY KEY, team text);
               CREATE TABLE edits (note_id int, team text);
               INSERT INTO notes VALUES (1, NULL), (2, NULL);
               INSERT INTO edits VALUES (1, 'say "hi" \ bye'), (1, 'say "hi" \ bye'),
                                        (2, 'x'), (2, 'say "hi" \ bye');
               SELECT tenant_backfill.define('accounts', 'org');
               SELECT tenant_backfill.add_source('accounts', 'logins', 'account_id', rule => 'majority');
               SELECT tenant_backfill.define('notes', 'team');
               SELECT tenant_backfill.add_source('notes', 'edits', 'note_id');"#);
        assert_eq!(
            rows("SELECT row_key, coalesce(proposed_tenant, '-'), action, evidence::text FROM tenant_backfill.plan('accounts')"),
            vec![
                r#"1|b0000000-0000-4000-8000-000000000002|fill|{"logins": {"b0000000-0000-4000-8000-000000000002": 2}}"#,
                // A tie goes to the lowest uuid.
                r#"2|a0000000-0000-4000-8000-000000000001|fill|{"logins": {"a0000000-0000-4000-8000-000000000001": 1, "b0000000-0000-4000-8000-000000000002": 1}}"#,
                r#"3|b0000000-0000-4000-8000-000000000002|fill|{"logins": {"a0000000-0000-4000-8000-000000000001": 1, "b0000000-0000-4000-8000-000000000002": 2}}"#,
            ]
        );
        assert_eq!(
            rows("SELECT check_name, rows::text FROM tenant_backfill.preflight('accounts') WHERE check_name IN ('by_phase_1', 'source_null_tenant')"),
            vec!["by_phase_1|3", "source_null_tenant|1"]
        );
        assert_eq!(
            rows("SELECT row_key, coalesce(proposed_tenant, '-'), action, evidence::text FROM tenant_backfill.plan('notes')"),
            vec![
                r#"1|say "hi" \ bye|fill|{"edits": {"say \"hi\" \\ bye": 2}}"#,
                r#"2|-|conflict|{"edits": {"x": 1, "say \"hi\" \\ bye": 1}}"#,
            ]
        );
    }

    /// Keys and actions of one batch of the decision query, run directly.
    fn batch(after: Option<&str>, up_to: Option<&str>, limit: Option<i64>) -> Vec<String> {
        use crate::engine::{decision_query, Mode, Scope};
        let oid = Spi::get_one::<pg_sys::Oid>("SELECT 'customers'::regclass::oid").unwrap().unwrap();
        let job = crate::catalog::job(oid).unwrap();
        let scope = Scope::Batch { after: after.map(Into::into), up_to: up_to.map(Into::into), limit };
        let st = decision_query(&job, Mode::Fill, &scope, crate::engine::Detail::Full);
        crate::sql::select_rows(
            &format!("WITH d AS ({}) SELECT d.key::text, d.action FROM d ORDER BY d.key", st.sql),
            &st.params,
            |row| Ok(format!("{}:{}", crate::sql::get_required::<String>(row, 1)?, crate::sql::get_required::<String>(row, 2)?)),
        )
        .unwrap()
    }

    #[pg_test]
    fn the_engine_decides_one_batch_of_keys_by_keyset() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        // The key is compared as an integer, not as text (where "10" < "9").
        assert_eq!(batch(Some("9"), None, Some(3)), vec!["10:fill", "11:fill", "12:fill"]);
        assert_eq!(
            batch(Some("23"), Some("28"), None),
            vec!["24:conflict", "25:fill", "26:fill", "27:fill", "28:unresolved"]
        );
        // Fill mode skips rows that have a tenant: the batch after 30 holds only 31.
        assert_eq!(batch(Some("30"), None, Some(5)), vec!["31:orphan"]);
        assert_eq!(batch(Some("31"), None, Some(5)), Vec::<String>::new());
    }

    #[pg_test]
    fn configuration_survives_pg_dump() {
        // pg_extension_config_dump registers the configuration, the runs, the backups and
    // the audit log (and their sequences) for pg_dump.
        assert_eq!(
            rows("SELECT c.relname::text FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
                   WHERE e.extname = 'tenant_backfill' ORDER BY 1"),
            vec![
                "audit_log",
                "audit_log_audit_id_seq",
                "backup",
                "override_tables",
                "overrides",
                "quarantine",
                "quarantine_quarantine_id_seq",
                "runs",
                "runs_run_id_seq",
                "sources",
                "targets",
                "violations",
                "violations_violation_id_seq",
            ]
        );
    }

    // ---------------------------------------------------------------- the write path

    #[pg_test]
    fn run_now_applies_the_plan_with_backup_and_audit_in_one_transaction() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        let planned = rows("SELECT row_key, proposed_tenant FROM tenant_backfill.plan('customers') WHERE action = 'fill'");
        assert_eq!(
            rows("SELECT rows_changed::text, by_phase::text, left_for_review::text FROM tenant_backfill.run_now('customers')"),
            vec![r#"23|{"1": 15, "2": 5, "3": 2, "override": 1}|8"#]
        );
        // What changed is exactly what the plan proposed.
        let written = rows(
            "SELECT a.row_key, c.company_id::text FROM tenant_backfill.audit_log a JOIN customers c ON c.id = a.row_key::int ORDER BY c.id",
        );
        assert_eq!(written, planned);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.backup WHERE old_value IS NULL AND column_name = 'company_id'"), 23);
        assert_eq!(count("SELECT count(*) FROM customers WHERE company_id IS NULL"), 8);
        assert_eq!(
            rows("SELECT kind, mode, status, rows_at_start::text, rows_total::text FROM tenant_backfill.runs"),
            vec!["run_now|fill|done|60|31"]
        );
    }

    #[pg_test]
    fn run_now_memory_does_not_grow_with_the_table() {
        // 30,000 rows to fill: six batches in one transaction. Whatever a batch leaves in
        // the transaction's memory (pgrx copies decoded values there) piles up until commit.
        run("CREATE TABLE companies (id int PRIMARY KEY)");
        run("INSERT INTO companies SELECT generate_series(1, 50)");
        run("CREATE TABLE customers (id bigint PRIMARY KEY, company_id int REFERENCES companies)");
        run("INSERT INTO customers SELECT i, NULL FROM generate_series(1, 30000) i");
        run("CREATE TABLE appointments (customer_id bigint REFERENCES customers, company_id int)");
        run("INSERT INTO appointments SELECT i, i % 50 + 1 FROM generate_series(1, 30000) i");
        run("SELECT tenant_backfill.define('customers', 'company_id')");
        run("SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id')");
        let before = count("SELECT total_bytes FROM pg_backend_memory_contexts WHERE name = 'TopTransactionContext'");
        assert_eq!(count("SELECT rows_changed FROM tenant_backfill.run_now('customers')"), 30000);
        let after = count("SELECT total_bytes FROM pg_backend_memory_contexts WHERE name = 'TopTransactionContext'");
        assert!(after - before < 256 * 1024, "the transaction's memory grew by {} bytes", after - before);
    }

    #[pg_test]
    fn a_dry_run_records_the_run_and_writes_nothing() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        assert_eq!(
            rows("SELECT rows_changed::text, left_for_review::text FROM tenant_backfill.run_now('customers', dry_run => true)"),
            vec!["23|8"]
        );
        assert_eq!(count("SELECT count(*) FROM customers WHERE company_id IS NULL"), 31);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.backup"), 0);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.audit_log"), 0);
        assert_eq!(text("SELECT status FROM tenant_backfill.runs"), Some("planned".into()));
        assert_eq!(
            error_of("SELECT * FROM tenant_backfill.rollback((SELECT run_id FROM tenant_backfill.runs))"),
            format!(
                "22023: run {} was a dry run and changed nothing",
                count("SELECT run_id FROM tenant_backfill.runs")
            )
        );
    }

    #[pg_test]
    fn run_now_leaves_a_tenant_set_by_the_application_alone() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        // The application set customer 1 (evidence says 2) before the run: it wins.
        run("UPDATE customers SET company_id = 3 WHERE id = 1");
        run("SELECT * FROM tenant_backfill.run_now('customers')");
        assert_eq!(count("SELECT company_id::bigint FROM customers WHERE id = 1"), 3);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.audit_log WHERE row_key = '1'"), 0);
    }

    #[pg_test]
    fn rollback_restores_and_skips_drift_unless_forced() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        let run_id = count("SELECT run_id FROM tenant_backfill.run_now('customers')");
        run("UPDATE customers SET company_id = 1 WHERE id = 2");
        assert_eq!(rows(&format!("SELECT restored::text, skipped::text FROM tenant_backfill.rollback({run_id})")), vec!["22|1"]);
        assert_eq!(count("SELECT count(*) FROM customers WHERE company_id IS NULL"), 30);
        assert_eq!(count("SELECT company_id::bigint FROM customers WHERE id = 2"), 1);
        assert_eq!(
            error_of(&format!("SELECT * FROM tenant_backfill.rollback({run_id}, true)")),
            format!("22023: run {run_id} was already rolled back by run {}", run_id + 1)
        );
        assert_eq!(
            error_of(&format!("SELECT * FROM tenant_backfill.rollback({})", run_id + 1)),
            format!("22023: run {} is itself a rollback", run_id + 1)
        );
        let second = count("SELECT run_id FROM tenant_backfill.run_now('customers')");
        run("UPDATE customers SET company_id = 2 WHERE id = 3");
        // Customer 2 kept the application's value, so the second run changed 22 rows;
        // forced, the rollback also restores customer 3, which changed after the run.
        assert_eq!(rows(&format!("SELECT restored::text, skipped::text FROM tenant_backfill.rollback({second}, force => true)")), vec!["22|0"]);
        assert_eq!(count("SELECT count(*) FROM customers WHERE company_id IS NULL"), 30);
        assert_eq!(count("SELECT count(*) FROM customers WHERE id = 3 AND company_id IS NULL"), 1);
        assert_eq!(error_of("SELECT * FROM tenant_backfill.rollback(424242)"), "42704: run 424242 does not exist");
    }

    #[pg_test]
    fn apply_decisions_applies_filled_rows_and_rejects_bad_files_whole() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("CREATE TABLE decisions (row_key text, tenant text);
             INSERT INTO decisions VALUES ('16', '1'), ('17', ' 2 '), ('18', ''), ('24', NULL);");
        assert_eq!(count("SELECT tenant_backfill.apply_decisions('customers', 'decisions')"), 2);
        assert_eq!(rows("SELECT id::text, coalesce(company_id::text, '-') FROM customers WHERE id IN (16, 17, 18) ORDER BY id"), vec!["16|1", "17|2", "18|-"]);
        assert_eq!(
            rows("SELECT row_key, new_value, phase, source, rule FROM tenant_backfill.audit_log ORDER BY row_key"),
            vec!["16|1|manual|decisions|manual", "17|2|manual|decisions|manual"]
        );
        run("INSERT INTO decisions VALUES ('18', 'three')");
        assert_eq!(
            error_of("SELECT tenant_backfill.apply_decisions('customers', 'decisions')"),
            "22P02: invalid value \"three\" for column decisions.tenant of type integer"
        );
        run("UPDATE decisions SET tenant = '3' WHERE row_key = '18'; INSERT INTO decisions VALUES ('x9', '1'), ('777', '1')");
        assert_eq!(
            error_of("SELECT tenant_backfill.apply_decisions('customers', 'decisions')"),
            "22P02: invalid value \"x9\" for column decisions.row_key of type integer"
        );
        run("DELETE FROM decisions WHERE row_key = 'x9'");
        assert_eq!(
            error_of("SELECT tenant_backfill.apply_decisions('customers', 'decisions')"),
            "22023: decisions names rows that customers does not have: 777"
        );
        run("DELETE FROM decisions WHERE row_key = '777'; INSERT INTO decisions VALUES ('18', '2')");
        assert_eq!(
            error_of("SELECT tenant_backfill.apply_decisions('customers', 'decisions')"),
            "22023: decisions decides rows 18 more than once, differently"
        );
        run("CREATE TABLE wrong_shape (id int, company int)");
        assert_eq!(
            error_of("SELECT tenant_backfill.apply_decisions('customers', 'wrong_shape')"),
            "42703: column \"row_key\" of wrong_shape does not exist"
        );
        // None of the rejected files changed anything.
        assert_eq!(count("SELECT count(*) FROM customers WHERE id = 18 AND company_id IS NULL"), 1);
    }

    #[pg_test]
    fn soft_delete_orphans_marks_only_orphans_and_is_reversible() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        assert_eq!(count("SELECT tenant_backfill.soft_delete_orphans('customers', dry_run => true)"), 2);
        assert_eq!(count("SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL"), 0);
        assert_eq!(count("SELECT tenant_backfill.soft_delete_orphans('customers')"), 2);
        assert_eq!(rows("SELECT id::text FROM customers WHERE deleted_at IS NOT NULL ORDER BY id"), vec!["30", "31"]);
        // Already deleted orphans are not deleted again.
        assert_eq!(count("SELECT tenant_backfill.soft_delete_orphans('customers')"), 0);
        let run_id = count("SELECT min(run_id) FROM tenant_backfill.runs WHERE kind = 'soft_delete_orphans' AND NOT dry_run");
        assert_eq!(rows(&format!("SELECT restored::text, skipped::text FROM tenant_backfill.rollback({run_id})")), vec!["2|0"]);
        assert_eq!(count("SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL"), 0);
        run("SELECT tenant_backfill.define('customers', 'company_id', soft_delete_column => 'archived_at')");
        assert_eq!(
            error_of("SELECT tenant_backfill.soft_delete_orphans('customers')"),
            "42703: customers has no soft-delete column \"archived_at\""
        );
        run("ALTER TABLE customers ADD COLUMN archived_at text");
        assert_eq!(
            error_of("SELECT tenant_backfill.soft_delete_orphans('customers')"),
            "42804: soft-delete column archived_at of customers is text"
        );
    }

    #[pg_test]
    fn validate_proves_a_run_and_names_what_is_left() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT * FROM tenant_backfill.run_now('customers')");
        assert_eq!(
            rows("SELECT check_name, ok::text, expected, actual FROM tenant_backfill.validate('customers')"),
            vec![
                "no_null_tenant|false|0|8",
                "row_count_unchanged|true|60|60",
                "sources_agree|true|0|0",
                "audit_complete|true|23|23",
                "backup_complete|true|23|23",
            ]
        );
        // A related row that contradicts its (non-NULL) customer fails sources_agree.
        run("INSERT INTO appointments (customer_id, company_id) VALUES (1, 3)");
        assert_eq!(
            rows("SELECT ok::text, detail FROM tenant_backfill.validate('customers') WHERE check_name = 'sources_agree'"),
            vec!["false|appointments: 1 related rows disagree (customers 1); calls: not checked (majority)"]
        );
        // A missing audit row is found.
        run("DELETE FROM tenant_backfill.audit_log WHERE row_key = '5'");
        assert_eq!(
            rows("SELECT ok::text, expected, actual FROM tenant_backfill.validate('customers') WHERE check_name = 'audit_complete'"),
            vec!["false|23|22"]
        );
        run("CREATE TABLE other (id int PRIMARY KEY, company_id int); SELECT tenant_backfill.define('other', 'company_id')");
        let run_id = count("SELECT max(run_id) FROM tenant_backfill.runs");
        assert_eq!(
            error_of(&format!("SELECT * FROM tenant_backfill.validate('other', {run_id})")),
            format!("22023: run {run_id} is not a run of other")
        );
    }

    #[pg_test]
    fn validate_checks_isolation_under_row_level_security() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT * FROM tenant_backfill.run_now('customers')");
        run("ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
             CREATE POLICY by_company ON customers
                 USING (company_id = nullif(current_setting('tenant_backfill.tenant', true), '')::int);
             CREATE ROLE tb_app;
             GRANT USAGE ON SCHEMA tenant_backfill TO tb_app;
             GRANT SELECT ON ALL TABLES IN SCHEMA tenant_backfill TO tb_app;
             GRANT SELECT ON customers, appointments, phone_numbers, calls TO tb_app;");
        // The superuser bypasses row-level security: the check says so instead of passing.
        assert_eq!(
            rows("SELECT coalesce(ok::text, 'null'), detail FROM tenant_backfill.validate('customers') WHERE check_name = 'isolation'"),
            vec!["null|skipped: role postgres is not subject to the row-level security of customers (superuser, table owner without FORCE, or BYPASSRLS); run validate as an application role"]
        );
        run("SET LOCAL ROLE tb_app");
        assert_eq!(
            rows("SELECT ok::text, detail FROM tenant_backfill.validate('customers') WHERE check_name = 'isolation'"),
            vec!["true|3 tenants checked with tenant_backfill.tenant"]
        );
        // A policy that lets NULL rows through leaks them to every tenant.
        run("RESET ROLE; CREATE POLICY nulls_leak ON customers USING (company_id IS NULL); SET LOCAL ROLE tb_app");
        assert_eq!(
            rows("SELECT ok::text, detail FROM tenant_backfill.validate('customers') WHERE check_name = 'isolation'"),
            vec!["false|tenant 1 sees 8 rows of other tenants or without one; tenant 2 sees 8 rows of other tenants or without one; tenant 3 sees 8 rows of other tenants or without one"]
        );
    }

    #[pg_test]
    fn the_write_path_checks_privileges_before_writing() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("CREATE ROLE tb_clerk;
             GRANT USAGE ON SCHEMA tenant_backfill TO tb_clerk;
             GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA tenant_backfill TO tb_clerk;
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA tenant_backfill TO tb_clerk;
             GRANT SELECT ON customers, appointments, phone_numbers, calls TO tb_clerk;
             SET LOCAL ROLE tb_clerk;");
        assert_eq!(
            error_of("SELECT * FROM tenant_backfill.run_now('customers')"),
            "42501: permission denied: role tb_clerk cannot UPDATE column company_id of customers"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.soft_delete_orphans('customers')"),
            "42501: permission denied: role tb_clerk cannot UPDATE column deleted_at of customers"
        );
        // A dry run needs no UPDATE.
        assert_eq!(count("SELECT rows_changed FROM tenant_backfill.run_now('customers', dry_run => true)"), 23);
        run("RESET ROLE");
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.audit_log"), 0);
        assert_eq!(count("SELECT count(*) FROM customers WHERE company_id IS NULL"), 31);
    }

    #[pg_test]
    fn undefine_forgets_the_configuration_but_keeps_history() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT * FROM tenant_backfill.run_now('customers')");
        run("SELECT tenant_backfill.undefine('customers')");
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.targets"), 0);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.sources"), 0);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.overrides"), 0);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.audit_log"), 23);
        assert_eq!(
            error_of("SELECT tenant_backfill.undefine('customers')"),
            "42704: customers is not a tenant_backfill target"
        );
    }

    // ---------------------------------------------------------------- keep it fixed

    #[pg_test]
    fn reject_mode_fails_with_23502_naming_table_column_and_key() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT tenant_backfill.enforce('customers')");
        assert_eq!(
            error_of("INSERT INTO customers (id, name) VALUES (100, 'no tenant')"),
            "23502: null value in column \"company_id\" of relation public.customers violates the tenant_backfill guard"
        );
        assert_eq!(
            error_of("UPDATE customers SET company_id = NULL WHERE id = 40"),
            "23502: null value in column \"company_id\" of relation public.customers violates the tenant_backfill guard"
        );
        // Rows with a tenant, and writes to other columns, pass.
        run("INSERT INTO customers (id, name, company_id) VALUES (101, 'ok', 1)");
        run("UPDATE customers SET name = 'renamed' WHERE id = 1");
        assert_eq!(count("SELECT count(*) FROM customers WHERE id IN (100, 101)"), 1);
    }

    #[pg_test]
    fn a_rejected_insert_reaches_violations_although_its_transaction_failed() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT tenant_backfill.enforce('customers')");
        assert_eq!(rows("SELECT preloaded::text FROM tenant_backfill.rejection_queue()"), vec!["true"]);
        // error_of runs the INSERT in a subtransaction that is rolled back with it.
        assert!(error_of("INSERT INTO customers (id, name) VALUES (4711, 'rejected')").starts_with("23502"));
        assert_eq!(count("SELECT count(*) FROM customers WHERE id = 4711"), 0);
        // The background worker writes it to violations from shared memory, in its own
        // transaction: poll for up to ten seconds.
        let found = (0..100).any(|_| {
            let n = count("SELECT count(*) FROM tenant_backfill.violations WHERE target = 'customers'::regclass AND row_key = '4711' AND action = 'rejected'");
            if n == 0 {
                run("SELECT pg_sleep(0.1)");
            }
            n > 0
        });
        assert!(found, "the rejected insert never reached tenant_backfill.violations");
        assert_eq!(
            rows("SELECT target::text, column_name::text, mode, action, operation, role::text FROM tenant_backfill.violations WHERE target = 'customers'::regclass AND row_key = '4711'"),
            vec!["customers|company_id|reject|rejected|INSERT|postgres"]
        );
        // The worker committed it: clean up, since the test's own rollback cannot.
        run("DELETE FROM tenant_backfill.violations WHERE target = 'customers'::regclass AND row_key = '4711'");
    }

    #[pg_test]
    fn log_mode_lets_the_row_through_and_records_it() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT tenant_backfill.enforce('customers', 'log')");
        run("SET LOCAL application_name = 'billing-sync'");
        run("INSERT INTO customers (id, name) VALUES (102, 'logged')");
        assert_eq!(count("SELECT count(*) FROM customers WHERE id = 102"), 1);
        assert_eq!(
            // Filtered by target: the violations worker commits other tests' rejections too.
            rows("SELECT row_key, mode, action, operation, application_name FROM tenant_backfill.violations WHERE target = 'customers'::regclass"),
            vec!["102|log|logged|INSERT|billing-sync"]
        );
    }

    #[pg_test]
    fn quarantine_keeps_the_row_out_until_it_is_released_with_a_tenant() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT tenant_backfill.enforce('customers', 'quarantine')");
        run("INSERT INTO customers (id, name, email) VALUES (103, 'waiting', 'w@example.com')");
        run("UPDATE customers SET company_id = NULL, email = 'changed@example.com' WHERE id = 40");
        assert_eq!(count("SELECT count(*) FROM customers WHERE id = 103"), 0);
        // The UPDATE did not happen either: customer 40 is as it was.
        assert_eq!(rows("SELECT company_id::text, email FROM customers WHERE id = 40"), vec!["2|customer40@example.com"]);
        assert_eq!(
            rows("SELECT row_key, operation, row_data->>'email', coalesce(row_data->>'company_id', 'null') FROM tenant_backfill.quarantine ORDER BY quarantine_id"),
            vec!["103|INSERT|w@example.com|null", "40|UPDATE|changed@example.com|null"]
        );
        // Nothing without a tenant is released.
        assert_eq!(count("SELECT tenant_backfill.release_quarantine('customers')"), 0);
        run("UPDATE tenant_backfill.quarantine SET row_data = jsonb_set(row_data, '{company_id}', '3') WHERE row_key = '103'");
        assert_eq!(count("SELECT tenant_backfill.release_quarantine('customers')"), 1);
        assert_eq!(rows("SELECT name, email, company_id::text FROM customers WHERE id = 103"), vec!["waiting|w@example.com|3"]);
        assert_eq!(count("SELECT tenant_backfill.release_quarantine('customers', '1')"), 1);
        assert_eq!(rows("SELECT company_id::text, email FROM customers WHERE id = 40"), vec!["1|changed@example.com"]);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.quarantine WHERE released_at IS NULL"), 0);
        assert_eq!(
            rows("SELECT row_key, new_value, phase FROM tenant_backfill.audit_log ORDER BY audit_id"),
            vec!["103|3|quarantine", "40|1|quarantine"]
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.release_quarantine('customers', 'three')"),
            "22P02: invalid value \"three\" for column customers.company_id of type integer"
        );
    }

    #[pg_test]
    fn assign_takes_the_parent_tenant_then_the_session_setting_else_rejects() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT tenant_backfill.define('appointments', 'company_id')");
        run("SELECT tenant_backfill.enforce('appointments', 'assign', 'customer_id')");
        // Customer 40 belongs to company 2.
        assert_eq!(count("INSERT INTO appointments (customer_id) VALUES (40) RETURNING company_id::bigint"), 2);
        // Customer 2 has no company yet: the session's tenant decides ...
        run("SET LOCAL tenant_backfill.tenant = '3'");
        assert_eq!(count("INSERT INTO appointments (customer_id) VALUES (2) RETURNING company_id::bigint"), 3);
        // ... and without one, the row is rejected.
        run("SET LOCAL tenant_backfill.tenant = ''");
        assert!(error_of("INSERT INTO appointments (customer_id) VALUES (2)").starts_with("23502: null value in column \"company_id\" of relation public.appointments"));
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.violations WHERE target = 'appointments'::regclass AND action = 'assigned'"), 2);
        assert_eq!(
            error_of("SELECT tenant_backfill.enforce('appointments', 'assign', 'starts_at')"),
            "22023: column starts_at of appointments is not a single-column foreign key"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.enforce('appointments', 'log', 'customer_id')"),
            "22023: parent_column only applies to mode 'assign'"
        );
    }

    #[pg_test]
    fn enforce_replaces_the_mode_and_unenforce_removes_the_guard() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT tenant_backfill.enforce('customers', 'log')");
        run("SELECT tenant_backfill.enforce('customers', 'reject')");
        assert_eq!(count("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'customers'::regclass AND NOT tgisinternal"), 1);
        assert!(error_of("INSERT INTO customers (id, name) VALUES (100, 'x')").starts_with("23502"));
        run("SELECT tenant_backfill.unenforce('customers')");
        run("INSERT INTO customers (id, name) VALUES (100, 'x')");
        assert_eq!(
            error_of("SELECT tenant_backfill.unenforce('customers')"),
            "22023: customers has no tenant_backfill guard"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.enforce('customers', 'block')"),
            "22023: unknown guard mode \"block\""
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.enforce('companies')"),
            "42704: companies is not a tenant_backfill target"
        );
    }

    #[pg_test]
    fn the_guard_lets_a_backfill_run_through() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT tenant_backfill.enforce('customers')");
        assert_eq!(count("SELECT rows_changed FROM tenant_backfill.run_now('customers')"), 23);
    }

    #[pg_test]
    fn monitor_reports_new_nulls_disagreements_and_violations() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT * FROM tenant_backfill.run_now('customers')");
        run("SELECT tenant_backfill.enforce('customers', 'log')");
        run("INSERT INTO customers (id, name, created_at) VALUES (200, 'new', now())");
        run("INSERT INTO appointments (customer_id, company_id) VALUES (1, 3)");
        assert_eq!(
            rows("SELECT check_name, rows::text, coalesce(detail, '') FROM tenant_backfill.monitor('customers', '1 hour')"),
            vec![
                "new_null_rows|1|by created_at; keys 200",
                "sources_disagree|1|appointments: 1 related rows disagree (customers 1); calls: not checked (majority)",
                "violations|1|logged: 1",
                "quarantined|0|rows waiting in tenant_backfill.quarantine",
                "rejections_dropped|0|rejected writes the full queue could not keep (since server start)",
            ]
        );
    }

    #[pg_test]
    fn evidence_jsonb_is_the_cast_whether_parsed_or_remembered() {
        load(&[]);
        // Texts of every shape the engine makes, each asked for several times, so the
        // later calls come from the cache; and more distinct texts than the cache holds,
        // so it starts over on the way.
        let differences = count(
            r#"SELECT count(*) FROM generate_series(1, 12000) i,
                 LATERAL (SELECT CASE i % 4
                     WHEN 0 THEN '{"appointments":{"' || i % 50 || '":3}}'
                     WHEN 1 THEN '{"calls":{"' || i % 7 || '":2,"' || i % 5000 || '":1},"phone_numbers":{"9":1}}'
                     WHEN 2 THEN '{"\"Shift\" \\ ä":{"' || i % 3000 || '":' || i || '}}'
                     ELSE '{}' END AS t) x
               WHERE tenant_backfill._evidence_jsonb(x.t)::text IS DISTINCT FROM x.t::jsonb::text
                  OR tenant_backfill._evidence_jsonb(x.t) IS DISTINCT FROM x.t::jsonb"#,
        );
        assert_eq!(differences, 0);
        assert_eq!(
            text(r#"SELECT tenant_backfill._evidence_jsonb('{"b": {"2": 1}, "a": {"1": 2}}')::text"#).as_deref(),
            Some(r#"{"a": {"1": 2}, "b": {"2": 1}}"#)
        );
        // Two results of one remembered text are separate values.
        assert_eq!(
            text(r#"SELECT (tenant_backfill._evidence_jsonb('{"a": 1}') || tenant_backfill._evidence_jsonb('{"a": 1}') || '{"b": 2}')::text"#)
                .as_deref(),
            Some(r#"{"a": 1, "b": 2}"#)
        );
        assert_eq!(text("SELECT tenant_backfill._evidence_jsonb(NULL)::text"), None);
        assert!(error_of("SELECT tenant_backfill._evidence_jsonb('{not json')").starts_with("22P02: invalid input syntax for type json"));
    }
}
