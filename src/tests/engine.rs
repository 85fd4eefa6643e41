//! The decision engine and the reports over it: plan, preflight, conflicts, review_queue (section 2).

// `cargo pgrx test` calls each test as tests.<name>(), so they live in schema `tests`.
#[pgrx::pg_schema]
mod tests {
    use crate::tests::support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn plan_follows_the_cascade_for_every_bucket() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        assert_eq!(
            rows(
                "SELECT action, count(*)::text FROM tenant_backfill.plan('customers') GROUP BY action ORDER BY action"
            ),
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
                "total_rows|60|public.customers",
                "null_tenant|31|company_id IS NULL",
                "by_override|1|overrides: 1",
                "by_phase_1|15|appointments (unanimous)",
                "by_phase_2|5|phone_numbers (unanimous)",
                "by_phase_3|2|calls (majority)",
                "conflicts|4|appointments: 3, phone_numbers: 1",
                "orphans|2|no related rows in any source",
                "unresolved|2|related rows exist but none carries a tenant",
                "source_null_tenant|4|appointments: 2, phone_numbers: 1, calls: 1",
                "source_bad_tenant|0|",
                "missing_index|1|public.phone_numbers.customer_id",
            ]
        );
    }

    #[pg_test]
    fn conflicts_and_review_queue_list_what_is_left_for_a_human() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        assert_eq!(rows("SELECT row_key FROM tenant_backfill.conflicts('customers')"), vec!["16", "17", "18", "24"]);
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
            rows(
                r#"SELECT row_key, current_tenant, proposed_tenant, action, phase::text, source, rule FROM tenant_backfill.plan('"ShiftTypes"', 'reassign')"#
            ),
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
            rows(
                r#"SELECT check_name, rows::text FROM tenant_backfill.preflight('"ShiftTypes"', 'reassign') WHERE check_name IN ('by_override', 'by_phase_1', 'mismatched')"#
            ),
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
            rows(
                "SELECT action, count(*)::text FROM tenant_backfill.plan('customers') GROUP BY action ORDER BY action"
            ),
            vec!["fill|1", "orphan|30"]
        );
    }

    #[pg_test]
    fn quoted_names_uuid_keys_and_bigint_tenants_work() {
        load(&[SALES_OPS]);
        run(r#"SELECT tenant_backfill.define('"Sales Ops"."client; DROP TABLE x--"', 'Tenant Id');
               SELECT tenant_backfill.add_source('"Sales Ops"."client; DROP TABLE x--"', '"Sales Ops"."Deal Log"', 'Account Ref');"#);
        assert_eq!(
            rows(
                r#"SELECT row_key, coalesce(proposed_tenant, '-'), action FROM tenant_backfill.plan('"Sales Ops"."client; DROP TABLE x--"')"#
            ),
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
        decide_batch("customers", after, up_to, limit).0
    }

    /// One batch of a target's decision query: its keys with their actions, and the
    /// query's text.
    fn decide_batch(
        target: &str,
        after: Option<&str>,
        up_to: Option<&str>,
        limit: Option<i64>,
    ) -> (Vec<String>, String) {
        let scope = crate::engine::Scope::Batch { after: after.map(Into::into), up_to: up_to.map(Into::into), limit };
        decide_scope(target, &scope)
    }

    /// The decision over `scope` (fill), as in `decide_batch`.
    fn decide_scope(target: &str, scope: &crate::engine::Scope) -> (Vec<String>, String) {
        use crate::engine::{decision_query, Mode};
        let oid = Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{target}'::regclass::oid")).unwrap().unwrap();
        let job = crate::job::job(oid).unwrap();
        let mut st = crate::sql::Statement::new();
        let decision = decision_query(&mut st, &job, Mode::Fill, scope, crate::engine::Detail::Full);
        let decided = crate::sql::select_rows(
            &format!("WITH d AS ({decision}) SELECT d.key::text, d.action FROM d ORDER BY d.key"),
            &st.params,
            |row| {
                Ok(format!(
                    "{}:{}",
                    crate::sql::get_required::<String>(row, 1)?,
                    crate::sql::get_required::<String>(row, 2)?
                ))
            },
        )
        .unwrap();
        (decided, decision)
    }

    #[pg_test]
    fn a_key_whose_column_declares_another_collation_than_its_domain_is_compared_in_the_columns() {
        // A key given as text is cast to the key's type, a domain here, which brings the
        // domain's collation ("C"); the column declares its own ("POSIX"). Two different
        // implicit collations on either side of a comparison cannot be compared (42P22):
        // every cast of a key carries the column's collation.
        run("CREATE DOMAIN account_code AS text COLLATE \"C\";
             CREATE TABLE accounts (code account_code COLLATE \"POSIX\" PRIMARY KEY, company_id int);
             INSERT INTO accounts VALUES ('a', NULL), ('b', NULL), ('c', NULL), ('d', NULL);
             CREATE TABLE visits (account_code text, company_id int);
             INSERT INTO visits VALUES ('a', 7), ('b', 7), ('c', 8);
             SELECT tenant_backfill.define('accounts', 'company_id');
             SELECT tenant_backfill.add_source('accounts', 'visits', 'account_code');
             SELECT tenant_backfill.set_override('accounts', 'b', '9');");
        assert_eq!(rows("SELECT tenant_backfill.override_for('accounts', 'b')"), vec!["9"]);
        // run_now ends at the key its run recorded (a key cast from text).
        let run_id = count("SELECT run_id FROM tenant_backfill.run_now('accounts')");
        assert_eq!(
            rows("SELECT code || '=' || coalesce(company_id::text, '-') FROM accounts ORDER BY code"),
            vec!["a=7", "b=9", "c=8", "d=-"]
        );
        // A batch starts after the last key of the one before (cast from text).
        assert_eq!(decide_batch("accounts", Some("c"), None, Some(2)).0, vec!["d:orphan"]);
        // The rollback bounds its UPDATE by its first and last key, and casts each.
        assert_eq!(
            rows(&format!("SELECT restored::text, skipped::text FROM tenant_backfill.rollback({run_id})")),
            vec!["3|0"]
        );
        // apply_decisions joins its row_key, cast to the key's type, to the table.
        run("CREATE TABLE decisions (row_key text, tenant text); INSERT INTO decisions VALUES ('d', '5');");
        assert_eq!(count("SELECT tenant_backfill.apply_decisions('accounts', 'decisions')"), 1);
        assert_eq!(
            rows("SELECT code || '=' || coalesce(company_id::text, '-') FROM accounts ORDER BY code"),
            vec!["a=-", "b=-", "c=-", "d=5"]
        );
    }

    /// Which of a target's sources a batch reads by an array of its keys.
    fn sources_read_by_array(target: &str) -> Vec<String> {
        let oid = Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{target}'::regclass::oid")).unwrap().unwrap();
        let job = crate::job::job(oid).unwrap();
        job.sources.iter().map(|s| format!("{}:{}", s.label, s.keys_by_array)).collect()
    }

    /// A batch reads a source by `= ANY (ARRAY(keys))` only where a plain b-tree index
    /// on the column it is read by serves that search (for the key's type, or one its
    /// operator family compares with it); anywhere else by IN, and the batches decide the
    /// same either way.
    #[pg_test]
    fn a_batch_reads_a_source_by_an_array_of_its_keys_only_where_a_btree_index_serves_it() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        let batches = |size: i64| -> Vec<String> {
            let (mut all, mut after) = (Vec::new(), None::<String>);
            loop {
                let (decided, _) = decide_batch("customers", after.as_deref(), None, Some(size));
                let Some(last) = decided.last() else { return all };
                after = last.split(':').next().map(Into::into);
                all.extend(decided);
            }
        };
        let by_array = "s.customer_id = ANY (ARRAY(SELECT sc.key FROM scope sc))";
        let by_in = "s.customer_id IN (SELECT sc.key FROM scope sc)";

        // appointments and calls have a b-tree index on customer_id, phone_numbers none.
        assert_eq!(sources_read_by_array("customers"), vec!["appointments:true", "phone_numbers:false", "calls:true"]);
        let (_, query) = decide_batch("customers", None, None, Some(4));
        assert_eq!((query.matches(by_array).count(), query.matches(by_in).count()), (2, 1));
        let indexed = batches(4);
        assert_eq!(indexed.len(), 31);

        // A hash index and a partial b-tree index do not serve the array; a b-tree index
        // on a bigint via does, for int keys (integer_ops holds int8 = int4).
        run("DROP INDEX appointments_customer_id_idx;
             CREATE INDEX ON appointments USING hash (customer_id);
             DROP INDEX calls_customer_id_idx;
             CREATE INDEX ON calls (customer_id) WHERE customer_id > 0;
             ALTER TABLE phone_numbers ALTER customer_id TYPE bigint;
             CREATE INDEX ON phone_numbers (customer_id)");
        assert_eq!(sources_read_by_array("customers"), vec!["appointments:false", "phone_numbers:true", "calls:false"]);
        let (_, query) = decide_batch("customers", None, None, Some(4));
        assert_eq!((query.matches(by_array).count(), query.matches(by_in).count()), (1, 2));
        assert_eq!(batches(4), indexed);
        // numeric_ops holds no numeric = int4: a numeric via keeps IN (the array would be
        // cast to numeric[], which its index serves, but only a family's own cross-type
        // operators are taken for sure).
        run("ALTER TABLE phone_numbers DROP CONSTRAINT phone_numbers_customer_id_fkey, ALTER customer_id TYPE numeric");
        assert_eq!(
            sources_read_by_array("customers"),
            vec!["appointments:false", "phone_numbers:false", "calls:false"]
        );
        let (_, query) = decide_batch("customers", None, None, Some(4));
        assert_eq!((query.matches(by_array).count(), query.matches(by_in).count()), (0, 3));
        assert_eq!(batches(4), indexed);
        assert_eq!(batches(31), indexed);

        // Nor does an index with another type's operator class (oid_ops holds oid's =, not
        // int4's), nor one of a table with inheritance children, which it does not cover.
        run("CREATE INDEX ON calls (customer_id oid_ops)");
        assert_eq!(
            sources_read_by_array("customers"),
            vec!["appointments:false", "phone_numbers:false", "calls:false"]
        );
        run("CREATE INDEX ON calls (customer_id); CREATE TABLE old_calls () INHERITS (calls)");
        assert_eq!(
            sources_read_by_array("customers"),
            vec!["appointments:false", "phone_numbers:false", "calls:false"]
        );
        assert_eq!(batches(4), indexed);

        // A plain b-tree index of the key's type does, whatever else it holds after the column.
        run("CREATE INDEX ON appointments (customer_id, company_id); DROP TABLE old_calls");
        assert_eq!(sources_read_by_array("customers"), vec!["appointments:true", "phone_numbers:false", "calls:true"]);
        assert_eq!(batches(4), indexed);
        // Except for a batch of more than a million keys, whose arrays would be too large.
        let (_, query) = decide_batch("customers", None, None, Some(1_000_001));
        assert_eq!((query.matches(by_array).count(), query.matches(by_in).count()), (0, 3));
        assert_eq!(decide_batch("customers", None, None, Some(1_000_001)).0, indexed);
        let (_, query) = decide_batch("customers", None, None, Some(1_000_000));
        assert_eq!((query.matches(by_array).count(), query.matches(by_in).count()), (2, 1));
    }

    /// A partitioned source's index covers its partitions once every partition has one
    /// (the partitioned index is valid then): the array is used. An index created ON ONLY
    /// the partitioned table, which no partition's index is attached to yet, is not valid.
    #[pg_test]
    fn a_partitioned_source_is_read_by_an_array_once_its_index_covers_every_partition() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        // Customer 28 has no evidence with a company; visits give it company 3.
        run("CREATE TABLE visits (id int, customer_id int, company_id int) PARTITION BY RANGE (id);
             CREATE TABLE visits_low PARTITION OF visits FOR VALUES FROM (0) TO (100);
             CREATE TABLE visits_high PARTITION OF visits FOR VALUES FROM (100) TO (200);
             INSERT INTO visits VALUES (1, 28, 3), (150, 28, 3);
             CREATE INDEX visits_customer_id_idx ON ONLY visits (customer_id);
             SELECT tenant_backfill.add_source('customers', 'visits', 'customer_id')");
        let by_array = |want: bool| {
            vec![
                "appointments:true",
                "phone_numbers:false",
                "calls:true",
                if want { "visits:true" } else { "visits:false" },
            ]
        };
        assert_eq!(sources_read_by_array("customers"), by_array(false));
        let without = decide_batch("customers", Some("27"), None, Some(2)).0;
        assert_eq!(without, vec!["28:fill", "29:unresolved"]);
        run("CREATE INDEX visits_low_customer_id_idx ON visits_low (customer_id);
             ALTER INDEX visits_customer_id_idx ATTACH PARTITION visits_low_customer_id_idx");
        assert_eq!(sources_read_by_array("customers"), by_array(false));
        run("CREATE INDEX visits_high_customer_id_idx ON visits_high (customer_id);
             ALTER INDEX visits_customer_id_idx ATTACH PARTITION visits_high_customer_id_idx");
        assert_eq!(sources_read_by_array("customers"), by_array(true));
        assert_eq!(decide_batch("customers", Some("27"), None, Some(2)).0, without);
    }

    /// An array of arrays is no array of more dimensions: a target whose key is an array
    /// is read by IN (`ARRAY(SELECT k ...)` over int[] keys makes an int[] of two
    /// dimensions, which `= ANY` would compare element by element with int[] keys). A
    /// child's via must have the key's type, which add_source refuses for arrays; a parent
    /// is read by the target's key. int[]'s index is of array_ops, declared for anyarray,
    /// so its operator class alone keeps it off; oidvector, an array with an operator class
    /// of its own, is kept off only for being an array.
    #[pg_test]
    fn a_target_keyed_by_an_array_is_read_by_in() {
        run("CREATE TABLE accounts (id int PRIMARY KEY, company_id int);
             INSERT INTO accounts VALUES (1, 7), (2, NULL)");
        // In key order: oidvector sorts by length first.
        for (table, key_type, keys, decided) in [
            ("tags", "int[]", ["{1,2}", "{3}", "{4}"], ["{1,2}:fill", "{3}:unresolved", "{4}:orphan"]),
            ("vtags", "oidvector", ["1 2", "3", "4"], ["3:unresolved", "4:orphan", "1 2:fill"]),
        ] {
            run(&format!(
                "CREATE TABLE {table} (k {key_type} PRIMARY KEY, account_id int REFERENCES accounts, company_id int);
                 INSERT INTO {table} VALUES ('{}', 1, NULL), ('{}', 2, NULL), ('{}', NULL, NULL);
                 SELECT tenant_backfill.define('{table}', 'company_id');
                 SELECT tenant_backfill.add_parent('{table}', 'accounts', 'account_id')",
                keys[0], keys[1], keys[2]
            ));
            assert_eq!(sources_read_by_array(table), vec!["accounts:false"]);
            assert_eq!(decide_batch(table, None, None, Some(10)).0, decided);
        }
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

    /// A later pass decides the keys its pass before did not write, and no others: in key
    /// order, whatever order they come in, without the rows that have a tenant meanwhile
    /// (a fill) and those that are gone.
    #[pg_test]
    fn the_engine_decides_listed_keys() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        let keys = ["31", "10", "40", "28", "999", "25", "9"].map(String::from).to_vec();
        let (decided, _) = decide_scope("customers", &crate::engine::Scope::Keys(keys));
        assert_eq!(decided, vec!["9:fill", "10:fill", "25:fill", "28:unresolved", "31:orphan"]);
        assert_eq!(decide_scope("customers", &crate::engine::Scope::Keys(Vec::new())).0, Vec::<String>::new());
    }

    #[pg_test]
    fn configuration_survives_pg_dump() {
        // pg_extension_config_dump registers the configuration, the runs (their parts, their skipped rows), the backups and
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
                "run_parts",
                "run_skipped",
                "runs",
                "runs_run_id_seq",
                "sources",
                "targets",
                "violations",
                "violations_violation_id_seq",
            ]
        );
    }
}
