//! Keep it fixed: the guard in every mode, its durable rejections, monitor, the evidence cache (section 5).

// `cargo pgrx test` calls each test as tests.<name>(), so they live in schema `tests`.
#[pgrx::pg_schema]
mod tests {
    use crate::tests::support::*;
    use pgrx::prelude::*;

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
    fn rejections_in_another_database_reach_that_databases_violations() {
        load(&[]);
        run("CREATE EXTENSION IF NOT EXISTS dblink");
        // CREATE DATABASE cannot run in the test's transaction: through dblink each
        // statement runs in a session and transaction of its own.
        let server = text(
            "SELECT pg_catalog.format('host=%s port=%s user=%s', \
                 pg_catalog.split_part(pg_catalog.current_setting('unix_socket_directories'), ',', 1), \
                 pg_catalog.current_setting('port'), CURRENT_USER)",
        )
        .expect("connection string");
        let (postgres, other) = (format!("{server} dbname=postgres"), format!("{server} dbname=tenant_backfill_other"));
        let exec = |conninfo: &str, sql: &str| {
            Spi::get_one_with_args::<String>("SELECT dblink_exec($1, $2, false)", &[conninfo.into(), sql.into()])
                .expect("dblink_exec failed")
                .unwrap_or_default()
        };
        exec(&postgres, "DROP DATABASE IF EXISTS tenant_backfill_other WITH (FORCE)");
        assert_eq!(exec(&postgres, "CREATE DATABASE tenant_backfill_other"), "CREATE DATABASE");
        exec(
            &other,
            "CREATE EXTENSION tenant_backfill; CREATE TABLE t (id int PRIMARY KEY, org int); \
             DO $$BEGIN PERFORM tenant_backfill.define('t', 'org'); PERFORM tenant_backfill.enforce('t'); END$$",
        );
        assert_eq!(exec(&other, "INSERT INTO t VALUES (1, NULL)"), "ERROR");
        // A writer for that database starts and records it there: poll for ten seconds.
        let recorded = |sql: &str| {
            Spi::get_one_with_args::<i64>(
                "SELECT n FROM dblink($1, $2) AS x(n int8)",
                &[other.as_str().into(), sql.into()],
            )
            .expect("dblink failed")
            .unwrap_or(0)
        };
        let found = (0..100).any(|_| {
            let n =
                recorded("SELECT count(*) FROM tenant_backfill.violations WHERE row_key = '1' AND action = 'rejected'");
            if n == 0 {
                run("SELECT pg_sleep(0.1)");
            }
            n > 0
        });
        assert!(found, "the rejected insert never reached the other database's violations");
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.violations WHERE row_key = '1'"), 0);
        exec(&postgres, "DROP DATABASE tenant_backfill_other WITH (FORCE)");
    }

    #[pg_test]
    fn a_terminated_launcher_is_started_again() {
        load(&[]);
        let launcher = "SELECT max(pid) FROM pg_stat_activity WHERE backend_type = 'tenant_backfill launcher'";
        let first = Spi::get_one::<i32>(launcher).expect("query failed").expect("no launcher runs");
        run(&format!("SELECT pg_terminate_backend({first})"));
        // The postmaster starts it again after its restart time (5 s): poll for fifteen.
        let again = (0..150).any(|_| {
            // pg_stat_activity is read once per transaction unless the snapshot is cleared.
            run("SELECT pg_stat_clear_snapshot()");
            let now = Spi::get_one::<i32>(launcher).expect("query failed");
            if now.is_none() || now == Some(first) {
                run("SELECT pg_sleep(0.1)");
                return false;
            }
            true
        });
        assert!(again, "the terminated launcher was not started again");
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
        assert_eq!(
            rows("SELECT company_id::text, email FROM customers WHERE id = 40"),
            vec!["2|customer40@example.com"]
        );
        assert_eq!(
            rows("SELECT row_key, operation, row_data->>'email', coalesce(row_data->>'company_id', 'null') FROM tenant_backfill.quarantine ORDER BY quarantine_id"),
            vec!["103|INSERT|w@example.com|null", "40|UPDATE|changed@example.com|null"]
        );
        // Nothing without a tenant is released.
        assert_eq!(count("SELECT tenant_backfill.release_quarantine('customers')"), 0);
        run("UPDATE tenant_backfill.quarantine SET row_data = jsonb_set(row_data, '{company_id}', '3') WHERE row_key = '103'");
        assert_eq!(count("SELECT tenant_backfill.release_quarantine('customers')"), 1);
        assert_eq!(
            rows("SELECT name, email, company_id::text FROM customers WHERE id = 103"),
            vec!["waiting|w@example.com|3"]
        );
        assert_eq!(count("SELECT tenant_backfill.release_quarantine('customers', '1')"), 1);
        assert_eq!(rows("SELECT company_id::text, email FROM customers WHERE id = 40"), vec!["1|changed@example.com"]);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.quarantine WHERE released_at IS NULL"), 0);
        assert_eq!(
            rows("SELECT row_key, new_value, phase FROM tenant_backfill.audit_log ORDER BY audit_id"),
            vec!["103|3|quarantine", "40|1|quarantine"]
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.release_quarantine('customers', 'three')"),
            "22P02: invalid value \"three\" for column public.customers.company_id of type integer"
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
        assert!(error_of("INSERT INTO appointments (customer_id) VALUES (2)")
            .starts_with("23502: null value in column \"company_id\" of relation public.appointments"));
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.violations WHERE target = 'appointments'::regclass AND action = 'assigned'"), 2);
        assert_eq!(
            error_of("SELECT tenant_backfill.enforce('appointments', 'assign', 'starts_at')"),
            "22023: column starts_at of public.appointments is not a single-column foreign key"
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
        // Mode reject: the guard and its two AFTER backstops, once each.
        assert_eq!(
            count("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'customers'::regclass AND NOT tgisinternal"),
            3
        );
        assert!(error_of("INSERT INTO customers (id, name) VALUES (100, 'x')").starts_with("23502"));
        run("SELECT tenant_backfill.unenforce('customers')");
        run("INSERT INTO customers (id, name) VALUES (100, 'x')");
        assert_eq!(
            error_of("SELECT tenant_backfill.unenforce('customers')"),
            "22023: public.customers has no tenant_backfill guard"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.enforce('customers', 'block')"),
            "22023: unknown guard mode \"block\""
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.enforce('companies')"),
            "42704: public.companies is not a tenant_backfill target"
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
                "sources_disagree|1|appointments: 1 related rows disagree (public.customers 1); calls: not checked (majority)",
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
               WHERE tenant_backfill_internal._evidence_jsonb(x.t)::text IS DISTINCT FROM x.t::jsonb::text
                  OR tenant_backfill_internal._evidence_jsonb(x.t) IS DISTINCT FROM x.t::jsonb"#,
        );
        assert_eq!(differences, 0);
        assert_eq!(
            text(r#"SELECT tenant_backfill_internal._evidence_jsonb('{"b": {"2": 1}, "a": {"1": 2}}')::text"#)
                .as_deref(),
            Some(r#"{"a": {"1": 2}, "b": {"2": 1}}"#)
        );
        // Two results of one remembered text are separate values.
        assert_eq!(
            text(r#"SELECT (tenant_backfill_internal._evidence_jsonb('{"a": 1}') || tenant_backfill_internal._evidence_jsonb('{"a": 1}') || '{"b": 2}')::text"#)
                .as_deref(),
            Some(r#"{"a": 1, "b": 2}"#)
        );
        assert_eq!(text("SELECT tenant_backfill_internal._evidence_jsonb(NULL)::text"), None);
        assert!(error_of("SELECT tenant_backfill_internal._evidence_jsonb('{not json')")
            .starts_with("22P02: invalid input syntax for type json"));
    }
}
