//! The write path: run_now, dry runs, rollback, apply_decisions, soft_delete_orphans, validate (sections 3 and 4).

// `cargo pgrx test` calls each test as tests.<name>(), so they live in schema `tests`.
#[pgrx::pg_schema]
mod tests {
    use crate::tests::support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn run_now_applies_the_plan_with_backup_and_audit_in_one_transaction() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        let planned =
            rows("SELECT row_key, proposed_tenant FROM tenant_backfill.plan('customers') WHERE action = 'fill'");
        assert_eq!(
            rows("SELECT rows_changed::text, by_phase::text, left_for_review::text FROM tenant_backfill.run_now('customers')"),
            vec![r#"23|{"1": 15, "2": 5, "3": 2, "override": 1}|8"#]
        );
        // What changed is exactly what the plan proposed.
        let written = rows(
            "SELECT a.row_key, c.company_id::text FROM tenant_backfill.audit_log a JOIN customers c ON c.id = a.row_key::int ORDER BY c.id",
        );
        assert_eq!(written, planned);
        assert_eq!(
            count("SELECT count(*) FROM tenant_backfill.backup WHERE old_value IS NULL AND column_name = 'company_id'"),
            23
        );
        assert_eq!(count("SELECT count(*) FROM customers WHERE company_id IS NULL"), 8);
        assert_eq!(
            rows("SELECT kind, mode, status, rows_at_start::text, rows_total::text FROM tenant_backfill.runs"),
            vec!["run_now|fill|done|60|31"]
        );
    }

    /// Counts the UPDATE statements on customers: a statement trigger that takes a value
    /// of a sequence (nextval takes no subtransaction id, which would cut run_now's ranges
    /// short); `SELECT setval('statements', 1, false)` starts the count again.
    const COUNT_UPDATE_STATEMENTS: &str = "CREATE SEQUENCE statements;
         CREATE FUNCTION count_statement() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM nextval('public.statements'); RETURN NULL; END $$;
         CREATE TRIGGER count_statement AFTER UPDATE ON customers
             FOR EACH STATEMENT EXECUTE FUNCTION count_statement();";

    #[pg_test]
    fn run_now_walks_the_key_range_in_statements_of_run_now_statement_rows() {
        // A statement keeps a foreign-key check per row it changes queued until it ends;
        // run_now decides and writes the table a range of keys per statement, and the
        // ranges decide what the whole table would. A statement trigger counts them, on a
        // sequence (nextval takes no subtransaction id, which would cut the ranges short).
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run(COUNT_UPDATE_STATEMENTS);
        let statements_since = |reset: &str| {
            run(&format!("{reset}; SELECT setval('statements', 1, false)"));
        };
        let statements = || count("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM statements");
        let latest = "(SELECT max(run_id) FROM tenant_backfill.runs)";
        let planned = rows(
            "SELECT row_key || ':' || proposed_tenant FROM tenant_backfill.plan('customers') WHERE action = 'fill'",
        );
        // At most 48 statements (each writing one takes a subtransaction id, and a
        // transaction past 64 overflows every snapshot), less the ids the transaction
        // holds (4 here, the configuration's): 1 a statement is 2 here, 30.
        statements_since("SET LOCAL tenant_backfill.run_now_statement_rows = 1");
        assert_eq!(count("SELECT rows_changed FROM tenant_backfill.run_now('customers')"), 23);
        assert_eq!(statements(), 30);
        // 60 rows, 7 a statement: 9 statements, the last one of 4 rows. (The 13 statements
        // above that changed rows took an id each: 48 less 17 still leaves 31.)
        statements_since(
            "UPDATE customers c SET company_id = NULL FROM tenant_backfill.backup b WHERE b.row_key = c.id::text;
             SET LOCAL tenant_backfill.run_now_statement_rows = 7",
        );
        assert_eq!(
            rows("SELECT rows_changed::text, by_phase::text, left_for_review::text FROM tenant_backfill.run_now('customers')"),
            vec![r#"23|{"1": 15, "2": 5, "3": 2, "override": 1}|8"#]
        );
        assert_eq!(statements(), 9);
        assert_eq!(
            rows(&format!(
                "SELECT a.row_key || ':' || c.company_id FROM tenant_backfill.audit_log a JOIN customers c ON c.id = a.row_key::int
                  WHERE a.run_id = {latest} ORDER BY c.id"
            )),
            planned
        );
        assert_eq!(
            rows(&format!(
                "SELECT rows_total::text, rows_done::text, rows_changed::text FROM tenant_backfill.runs WHERE run_id = {latest}"
            )),
            vec!["31|31|23"]
        );
        // 6 a statement: the tenth ends at the last key, and no empty one follows.
        statements_since(&format!(
            "UPDATE customers c SET company_id = NULL FROM tenant_backfill.backup b
              WHERE b.row_key = c.id::text AND b.run_id = {latest};
             SET LOCAL tenant_backfill.run_now_statement_rows = 6"
        ));
        assert_eq!(count("SELECT rows_changed FROM tenant_backfill.run_now('customers')"), 23);
        assert_eq!(statements(), 10);
    }

    /// Text keys in a linguistic collation, where the key order is not the bytes' ('a' <
    /// 'B' < 'c', where bytes put 'B' first): run_now's ranges are cut and read in the
    /// key's collation, so every row is decided once, in statements of 5 keys. Postgres 15
    /// alone here: the Postgres 18 the tests run on is built without ICU.
    #[cfg(feature = "pg15")]
    #[pg_test]
    fn run_now_walks_text_keys_in_their_collation() {
        run(r#"CREATE TABLE words (word text COLLATE "en-x-icu" PRIMARY KEY, company_id int);
             INSERT INTO words SELECT CASE WHEN i % 2 = 0 THEN upper(chr(96 + i)) ELSE chr(96 + i) END, NULL
               FROM generate_series(1, 26) i;
             CREATE TABLE word_uses (word text COLLATE "en-x-icu", company_id int);
             INSERT INTO word_uses SELECT word, 3 FROM words;
             SELECT tenant_backfill.define('words', 'company_id');
             SELECT tenant_backfill.add_source('words', 'word_uses', 'word');"#);
        assert_eq!(rows("SELECT string_agg(word, '' ORDER BY word) FROM words"), vec!["aBcDeFgHiJkLmNoPqRsTuVwXyZ"]);
        run(COUNT_UPDATE_STATEMENTS.replace("customers", "words").as_str());
        run("SET LOCAL tenant_backfill.run_now_statement_rows = 5");
        assert_eq!(count("SELECT rows_changed FROM tenant_backfill.run_now('words')"), 26);
        assert_eq!(count("SELECT last_value FROM statements"), 6);
        assert_eq!(count("SELECT count(*) FROM words WHERE company_id = 3"), 26);
        assert_eq!(count("SELECT count(DISTINCT row_key) FROM tenant_backfill.audit_log"), 26);
    }

    /// A transaction that holds subtransaction ids already (a migration's run_now of
    /// other tables) gets fewer statements, on every version: counted by a statement
    /// trigger on a sequence, as in the walk above.
    #[pg_test]
    fn run_now_takes_fewer_statements_in_a_transaction_that_holds_subtransaction_ids() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run(COUNT_UPDATE_STATEMENTS);
        run("CREATE TEMP TABLE taken (i int)");
        // The configuration took 4 ids, these 40 more: 48 less 44 leaves 4 statements of
        // 15 keys, where run_now_statement_rows = 1 alone would take 30 of 2.
        run("DO $$ BEGIN FOR i IN 1..40 LOOP BEGIN INSERT INTO taken VALUES (i); EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $$");
        run("SET LOCAL tenant_backfill.run_now_statement_rows = 1");
        assert_eq!(count("SELECT rows_changed FROM tenant_backfill.run_now('customers')"), 23);
        assert_eq!(count("SELECT last_value FROM statements"), 4);
    }

    /// What the 48-statement cap is for, read off the backend (Postgres 16 shows a
    /// backend's subtransaction ids): a statement that writes inside a subtransaction
    /// takes an id of its own, and past 64 in one transaction every other session's
    /// snapshots overflow until it commits. A run_now that would take 60 statements
    /// takes 30, and an id for each that changes a row; a read such as plan takes none
    /// (pgrx's `update` gave every statement one: plan took 17). A transaction that has
    /// taken ids already gets fewer statements.
    #[cfg(not(feature = "pg15"))]
    #[pg_test]
    fn run_now_takes_a_subtransaction_id_per_statement_and_a_read_takes_none() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        let subtransactions = || {
            run("SELECT pg_stat_clear_snapshot()");
            rows(
                "SELECT s.subxact_count || ' ' || s.subxact_overflowed
                   FROM pg_stat_get_backend_idset() b, pg_stat_get_backend_subxact(b) s
                  WHERE pg_stat_get_backend_pid(b) = pg_backend_pid()",
            )
        };
        // The configuration's inserts into sources and overrides, which fire the
        // extension's own foreign keys inside a subtransaction (sql.rs, as_extension_owner_checked).
        assert_eq!(subtransactions(), vec!["4 false"]);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.plan('customers')"), 31);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.preflight('customers')"), 12);
        assert_eq!(subtransactions(), vec!["4 false"]);
        run("SET LOCAL tenant_backfill.run_now_statement_rows = 1");
        assert_eq!(count("SELECT rows_changed FROM tenant_backfill.run_now('customers')"), 23);
        // 30 statements of 2 keys (ids 1 to 60); only those that change a row write,
        // and take an id: 13 here.
        let writing = count("SELECT count(DISTINCT (row_key::int + 1) / 2) FROM tenant_backfill.audit_log");
        assert_eq!(writing, 13);
        assert_eq!(subtransactions(), vec![format!("{} false", 4 + writing)]);
        // A transaction that has taken 55 ids (as several run_now of a migration might)
        // leaves run_now room for one statement: the 30 of 2 keys above would take 13
        // more and overflow ("64 true"); one statement over the 60 keys takes one.
        run("CREATE TEMP TABLE taken (i int)");
        run(&format!(
            "DO $$ BEGIN FOR i IN 1..{} LOOP BEGIN INSERT INTO taken VALUES (i); EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $$",
            55 - (4 + writing)
        ));
        assert_eq!(subtransactions(), vec!["55 false"]);
        run("UPDATE customers c SET company_id = NULL FROM tenant_backfill.backup b WHERE b.row_key = c.id::text");
        assert_eq!(count("SELECT rows_changed FROM tenant_backfill.run_now('customers')"), 23);
        assert_eq!(subtransactions(), vec!["56 false"]);
    }

    #[pg_test]
    fn run_now_memory_does_not_grow_with_the_table() {
        // 30,000 rows to fill: one statement, its rows logged in six chunks in one
        // transaction. Whatever a chunk leaves in the transaction's memory (pgrx copies
        // decoded values there) piles up until commit.
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
        // Every chunk was logged, each row once.
        assert_eq!(count("SELECT count(DISTINCT row_key) FROM tenant_backfill.backup"), 30000);
        assert_eq!(
            count("SELECT count(*) FROM tenant_backfill.audit_log WHERE evidence = '{\"appointments\": {\"1\": 1}}'"),
            600
        );
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.audit_log"), 30000);
    }

    #[pg_test]
    fn run_now_logs_only_the_rows_its_update_wrote() {
        // A trigger of the application's that keeps some rows from changing: run_now
        // decides and updates in one statement, and logs what the UPDATE wrote, nothing else.
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("CREATE FUNCTION keep_odd_rows() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RETURN CASE WHEN NEW.id % 2 = 1 THEN NULL ELSE NEW END; END $$");
        run("CREATE TRIGGER keep_odd_rows BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION keep_odd_rows()");
        let even = count(
            "SELECT count(*) FROM tenant_backfill.plan('customers') WHERE action = 'fill' AND row_key::int % 2 = 0",
        );
        assert!(even > 0 && even < 23);
        assert_eq!(count("SELECT rows_changed FROM tenant_backfill.run_now('customers')"), even);
        assert_eq!(count("SELECT rows_skipped FROM tenant_backfill.runs"), 23 - even);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.audit_log WHERE row_key::int % 2 = 0"), even);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.audit_log"), even);
        assert_eq!(count("SELECT count(*) FROM tenant_backfill.backup"), even);
        // What was logged is what the rows hold now.
        assert_eq!(
            count(
                "SELECT count(*) FROM tenant_backfill.audit_log a JOIN customers c ON c.id = a.row_key::int
                    WHERE c.company_id::text IS DISTINCT FROM a.new_value"
            ),
            0
        );
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
        assert_eq!(
            rows(&format!("SELECT restored::text, skipped::text FROM tenant_backfill.rollback({run_id})")),
            vec!["22|1"]
        );
        assert_eq!(count("SELECT count(*) FROM customers WHERE company_id IS NULL"), 30);
        assert_eq!(count("SELECT company_id::bigint FROM customers WHERE id = 2"), 1);
        // The rollback's own run (not run_id + 1: tests running at the same time take ids
        // from the same sequence).
        let rollback_run = || count("SELECT max(run_id) FROM tenant_backfill.runs WHERE kind = 'rollback'");
        assert_eq!(
            error_of(&format!("SELECT * FROM tenant_backfill.rollback({run_id}, true)")),
            format!("22023: run {run_id} was already rolled back by run {}", rollback_run())
        );
        assert_eq!(
            error_of(&format!("SELECT * FROM tenant_backfill.rollback({})", rollback_run())),
            format!("22023: run {} is itself a rollback", rollback_run())
        );
        let second = count("SELECT run_id FROM tenant_backfill.run_now('customers')");
        run("UPDATE customers SET company_id = 2 WHERE id = 3");
        // Customer 2 kept the application's value, so the second run changed 22 rows;
        // forced, the rollback also restores customer 3, which changed after the run.
        assert_eq!(
            rows(&format!(
                "SELECT restored::text, skipped::text FROM tenant_backfill.rollback({second}, force => true)"
            )),
            vec!["22|0"]
        );
        assert_eq!(count("SELECT count(*) FROM customers WHERE company_id IS NULL"), 30);
        assert_eq!(count("SELECT count(*) FROM customers WHERE id = 3 AND company_id IS NULL"), 1);
        assert_eq!(error_of("SELECT * FROM tenant_backfill.rollback(424242)"), "42704: run 424242 does not exist");
    }

    #[pg_test]
    fn a_batch_that_skips_rows_runs_under_a_publication_of_every_table() {
        // A publication FOR ALL TABLES (logical replication, a CDC tool's) publishes the
        // extension's tables too, and Postgres refuses a DELETE from a published table
        // without a replica identity (55000). A batch logs its rows before it writes, and
        // deletes the log rows of those it did not write after all (here the row the
        // application changed since the run, which the rollback skips): the backup, with
        // no key to identify its rows (a BRIN index alone), refused it, and so would the
        // audit log without REPLICA IDENTITY FULL since it has no primary key either.
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("CREATE PUBLICATION everything FOR ALL TABLES");
        let run_id = count("SELECT run_id FROM tenant_backfill.run_now('customers')");
        run("UPDATE customers SET company_id = 1 WHERE id = 2");
        assert_eq!(
            rows(&format!("SELECT restored::text, skipped::text FROM tenant_backfill.rollback({run_id})")),
            vec!["22|1"]
        );
        // Not run_id + 1: tests running at the same time take ids from the same sequence.
        let rollback_run = count("SELECT max(run_id) FROM tenant_backfill.runs WHERE kind = 'rollback'");
        assert_eq!(
            rows(&format!(
                "SELECT (SELECT count(*) FROM tenant_backfill.backup WHERE run_id = {rollback_run})::text || '|' || \
                        (SELECT count(*) FROM tenant_backfill.audit_log WHERE run_id = {rollback_run})::text"
            )),
            vec!["22|22"]
        );
    }

    /// A target keyed by `key_type` with the rows `keys`, each with one source row for
    /// tenant 7, filled by run_now under the session setting `written` and rolled back
    /// under `read`: every row is filled, then every row restored.
    fn written_and_rolled_back(table: &str, key_type: &str, keys: &str, written: &str, read: &str) {
        run(&format!(
            "SET LOCAL {written};
             CREATE TABLE {table} (id {key_type} PRIMARY KEY, company_id int);
             INSERT INTO {table} SELECT k, NULL FROM unnest('{keys}'::{key_type}[]) k;
             CREATE TABLE {table}_sources (row_id {key_type}, company_id int);
             INSERT INTO {table}_sources SELECT id, 7 FROM {table};
             SELECT tenant_backfill.define('{table}', 'company_id');
             SELECT tenant_backfill.add_source('{table}', '{table}_sources', 'row_id');"
        ));
        let rows_in = count(&format!("SELECT count(*) FROM {table}"));
        let run_id = count(&format!("SELECT run_id FROM tenant_backfill.run_now('{table}')"));
        assert_eq!(count(&format!("SELECT count(*) FROM {table} WHERE company_id = 7")), rows_in, "{table} filled");
        run(&format!("SET LOCAL {read}"));
        assert_eq!(
            rows(&format!("SELECT restored::text, skipped::text FROM tenant_backfill.rollback({run_id})")),
            vec![format!("{rows_in}|0")],
            "{table} rolled back"
        );
        assert_eq!(count(&format!("SELECT count(*) FROM {table} WHERE company_id IS NULL")), rows_in);
    }

    #[pg_test]
    fn keys_read_back_as_the_same_value_whatever_the_session_prints() {
        // Keys travel as text: the run's highest key, the backup's row_key. A float8 key
        // printed at extra_float_digits 0 is rounded (1.0000000000000002 as 1): the run
        // stopped at 1 and left the last row NULL, and the rollback found one row twice.
        written_and_rolled_back(
            "readings",
            "float8",
            "{1,1.0000000000000002}",
            "extra_float_digits = 0",
            "extra_float_digits = 0",
        );
        // plan's row_key names each row as run_now, a decisions table and rollback read it.
        assert_eq!(
            rows("SELECT row_key FROM tenant_backfill.plan('readings') ORDER BY row_key"),
            vec!["1", "1.0000000000000002"]
        );
        // A timestamp key written under SQL, DMY (04/03/2026) and rolled back under MDY
        // read as April 3: no row matched, and both read as changed since the run.
        run("SET LOCAL TimeZone = 'UTC'");
        written_and_rolled_back(
            "shifts",
            "timestamptz",
            "{2026-03-04 10:00+00,2026-03-05 10:00+00}",
            "DateStyle = 'SQL, DMY'",
            "DateStyle = 'SQL, MDY'",
        );
        // An interval key written under sql_standard (-1 2:03:04) and rolled back under
        // the default style, which reads that text as -1 day +02:03:04.
        written_and_rolled_back(
            "waits",
            "interval",
            "{-1 day -02:03:04,3 days 04:05:06}",
            "IntervalStyle = 'sql_standard'",
            "IntervalStyle = 'postgres'",
        );
        // The caller's settings are the caller's again, input order included.
        assert_eq!(
            text(
                "SELECT current_setting('extra_float_digits') || ' ' || current_setting('DateStyle') || ' ' \
                 || current_setting('IntervalStyle')"
            ),
            Some("0 SQL, MDY postgres".to_string())
        );
        // TimeZone is the caller's (README, "Keys read back"): an override on a
        // timestamptz key is stored as printed in the zone that set it (+01), and read as
        // a timestamp and printed again in the run's zone to be matched.
        run("SET LOCAL TimeZone = 'Europe/Berlin';
             SELECT tenant_backfill.set_override('shifts', '2026-03-04 11:00:00+01', '3');
             SET LOCAL TimeZone = 'UTC';");
        count("SELECT run_id FROM tenant_backfill.run_now('shifts')");
        assert_eq!(
            rows("SELECT company_id::text FROM shifts ORDER BY id"),
            vec!["3", "7"],
            "the override set in Berlin decides its row in a run in UTC"
        );
    }

    #[pg_test]
    fn rollback_restores_every_row_of_a_key_with_a_collation_of_its_own() {
        // The restore bounds its UPDATE by its first and last key. Keys cast from the
        // backup's text take the database's default collation; sorted so, 'B' < 'Z' < 'a'
        // < 'b', while under ICU's root collation 'a' < 'b' < 'B' < 'Z': the bounds 'B'
        // and 'b' then held no row at all, and every row read as changed since the run.
        // (A build without ICU, Postgres 18 here, has no collation that sorts otherwise
        // than the default; it still runs the statements with the COLLATE clause.)
        let collation = text("SELECT coalesce(max(collname), 'C') FROM pg_collation WHERE collname = 'und-x-icu'")
            .unwrap_or_default();
        run(&format!(
            "CREATE TABLE accounts (code text COLLATE \"{collation}\" PRIMARY KEY, company_id int);
             INSERT INTO accounts VALUES ('a', NULL), ('b', NULL), ('B', NULL), ('Z', NULL);
             CREATE TABLE visits (account_code text, company_id int);
             INSERT INTO visits SELECT code, 7 FROM accounts;
             SELECT tenant_backfill.define('accounts', 'company_id');
             SELECT tenant_backfill.add_source('accounts', 'visits', 'account_code');"
        ));
        let run_id = count("SELECT run_id FROM tenant_backfill.run_now('accounts')");
        assert_eq!(count("SELECT count(*) FROM accounts WHERE company_id = 7"), 4);
        assert_eq!(
            rows(&format!("SELECT restored::text, skipped::text FROM tenant_backfill.rollback({run_id})")),
            vec!["4|0"]
        );
        assert_eq!(count("SELECT count(*) FROM accounts WHERE company_id IS NULL"), 4);
        // A forced rollback of a second run goes the same way.
        let second = count("SELECT run_id FROM tenant_backfill.run_now('accounts')");
        assert_eq!(
            rows(&format!(
                "SELECT restored::text, skipped::text FROM tenant_backfill.rollback({second}, force => true)"
            )),
            vec!["4|0"]
        );
        assert_eq!(count("SELECT count(*) FROM accounts WHERE company_id IS NULL"), 4);
        if collation != "und-x-icu" {
            return;
        }
        load(&[]);
        // A case-insensitive key: 'abc' and 'ABC' are one row, and two decisions for it
        // that differ are refused, not applied one of the two at random.
        run("CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE TABLE handles (code text COLLATE ci PRIMARY KEY, company_id int);
             INSERT INTO handles VALUES ('abc', NULL);
             CREATE TABLE handle_visits (handle text, company_id int);
             SELECT tenant_backfill.define('handles', 'company_id');
             SELECT tenant_backfill.add_source('handles', 'handle_visits', 'handle');
             CREATE TABLE decisions (row_key text, tenant text);
             INSERT INTO decisions VALUES ('abc', '1'), ('ABC', '2');");
        assert_eq!(
            error_of("SELECT tenant_backfill.apply_decisions('handles', 'decisions')"),
            "22023: public.decisions decides rows ABC more than once, differently"
        );
        assert_eq!(count("SELECT count(*) FROM handles WHERE company_id IS NULL"), 1);
    }

    #[pg_test]
    fn apply_decisions_applies_filled_rows_and_rejects_bad_files_whole() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("CREATE TABLE decisions (row_key text, tenant text);
             INSERT INTO decisions VALUES ('16', '1'), ('17', ' 2 '), ('18', ''), ('24', NULL);");
        assert_eq!(count("SELECT tenant_backfill.apply_decisions('customers', 'decisions')"), 2);
        assert_eq!(
            rows(
                "SELECT id::text, coalesce(company_id::text, '-') FROM customers WHERE id IN (16, 17, 18) ORDER BY id"
            ),
            vec!["16|1", "17|2", "18|-"]
        );
        assert_eq!(
            rows("SELECT row_key, new_value, phase, source, rule FROM tenant_backfill.audit_log ORDER BY row_key"),
            vec!["16|1|manual|public.decisions|manual", "17|2|manual|public.decisions|manual"]
        );
        run("INSERT INTO decisions VALUES ('18', 'three')");
        assert_eq!(
            error_of("SELECT tenant_backfill.apply_decisions('customers', 'decisions')"),
            "22P02: invalid value \"three\" for column public.decisions.tenant of type integer"
        );
        run("UPDATE decisions SET tenant = '3' WHERE row_key = '18'; INSERT INTO decisions VALUES ('x9', '1'), ('777', '1')");
        assert_eq!(
            error_of("SELECT tenant_backfill.apply_decisions('customers', 'decisions')"),
            "22P02: invalid value \"x9\" for column public.decisions.row_key of type integer"
        );
        run("DELETE FROM decisions WHERE row_key = 'x9'");
        assert_eq!(
            error_of("SELECT tenant_backfill.apply_decisions('customers', 'decisions')"),
            "22023: public.decisions names rows that public.customers does not have: 777"
        );
        run("DELETE FROM decisions WHERE row_key = '777'; INSERT INTO decisions VALUES ('18', '2')");
        assert_eq!(
            error_of("SELECT tenant_backfill.apply_decisions('customers', 'decisions')"),
            "22023: public.decisions decides rows 18 more than once, differently"
        );
        run("CREATE TABLE wrong_shape (id int, company int)");
        assert_eq!(
            error_of("SELECT tenant_backfill.apply_decisions('customers', 'wrong_shape')"),
            "42703: column \"row_key\" of public.wrong_shape does not exist"
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
        let run_id =
            count("SELECT min(run_id) FROM tenant_backfill.runs WHERE kind = 'soft_delete_orphans' AND NOT dry_run");
        assert_eq!(
            rows(&format!("SELECT restored::text, skipped::text FROM tenant_backfill.rollback({run_id})")),
            vec!["2|0"]
        );
        assert_eq!(count("SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL"), 0);
        run("SELECT tenant_backfill.define('customers', 'company_id', soft_delete_column => 'archived_at')");
        assert_eq!(
            error_of("SELECT tenant_backfill.soft_delete_orphans('customers')"),
            "42703: public.customers has no soft-delete column \"archived_at\""
        );
        run("ALTER TABLE customers ADD COLUMN archived_at text");
        assert_eq!(
            error_of("SELECT tenant_backfill.soft_delete_orphans('customers')"),
            "42804: soft-delete column archived_at of public.customers is text"
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
            rows(
                "SELECT ok::text, detail FROM tenant_backfill.validate('customers') WHERE check_name = 'sources_agree'"
            ),
            vec!["false|appointments: 1 related rows disagree (public.customers 1); calls: not checked (majority)"]
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
            format!("22023: run {run_id} is not a run of public.other")
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
             GRANT SELECT ON customers, appointments, phone_numbers, calls TO tb_app;");
        // The superuser bypasses row-level security: the check says so instead of passing.
        assert_eq!(
            rows("SELECT coalesce(ok::text, 'null'), detail FROM tenant_backfill.validate('customers') WHERE check_name = 'isolation'"),
            vec!["null|skipped: role postgres is not subject to the row-level security of public.customers (superuser, table owner without FORCE, or BYPASSRLS); run validate as an application role"]
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
    fn a_kept_plan_reads_runs_through_the_row_level_security_of_the_role_now_current() {
        // A run's row is read with a kept plan (sql::fixed). Planned for the superuser,
        // whom row-level security does not apply to, it must not show the run to a role
        // that may not see it, nor hide it from the superuser once a role planned it:
        // Postgres replans a plan that depends on row-level security when the role changes.
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        let run_id = count("SELECT run_id FROM tenant_backfill.run_now('customers')");
        let loaded = || crate::runs::load(run_id).map(|run| run.run_id);
        assert_eq!(loaded().ok(), Some(run_id));
        run("CREATE ROLE tb_stranger; SET LOCAL ROLE tb_stranger");
        assert!(matches!(loaded(), Err(crate::error::BackfillError::UnknownRun(id)) if id == run_id));
        run("RESET ROLE; GRANT SELECT ON customers TO tb_stranger; SET LOCAL ROLE tb_stranger");
        assert_eq!(loaded().ok(), Some(run_id));
        run("RESET ROLE; REVOKE SELECT ON customers FROM tb_stranger; SET LOCAL ROLE tb_stranger");
        assert!(matches!(loaded(), Err(crate::error::BackfillError::UnknownRun(_))));
        run("RESET ROLE");
        assert_eq!(loaded().ok(), Some(run_id));
    }

    #[pg_test]
    fn catalog_lookups_are_planned_once_per_backend() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("SELECT * FROM tenant_backfill.plan('customers')");
        let (kept, prepared) = crate::sql::kept_plans();
        assert!(kept >= 5, "plan's catalog lookups keep their plans: {kept}");
        assert_eq!(prepared, kept, "each plan prepared once");
        run("SELECT * FROM tenant_backfill.plan('customers')");
        run("SELECT * FROM tenant_backfill.run_now('customers', dry_run => true)");
        let after = crate::sql::kept_plans();
        run("SELECT * FROM tenant_backfill.plan('customers')");
        run("SELECT * FROM tenant_backfill.run_now('customers', dry_run => true)");
        assert_eq!(crate::sql::kept_plans(), after, "the same statements again prepare nothing");
        // A kept plan reads the catalog as it is now: a column renamed after it was planned.
        let oid = pg_sys::Oid::from(count("SELECT 'customers'::regclass::oid::bigint") as u32);
        let rel = crate::catalog::relation(oid).expect("customers resolves");
        assert!(crate::catalog::column(&rel, "company_id").is_ok());
        run("ALTER TABLE customers RENAME COLUMN company_id TO tenant_id");
        assert!(crate::catalog::column(&rel, "company_id").is_err());
        assert_eq!(crate::catalog::column(&rel, "tenant_id").map(|c| c.name).ok().as_deref(), Some("tenant_id"));
        assert_eq!(crate::sql::kept_plans(), after);
    }

    #[pg_test]
    fn the_write_path_checks_privileges_before_writing() {
        load(&[CUSTOMERS]);
        run(CUSTOMERS_JOB);
        run("CREATE ROLE tb_clerk;
             GRANT SELECT ON customers, appointments, phone_numbers, calls TO tb_clerk;
             SET LOCAL ROLE tb_clerk;");
        assert_eq!(
            error_of("SELECT * FROM tenant_backfill.run_now('customers')"),
            "42501: permission denied: role tb_clerk cannot UPDATE column company_id of public.customers"
        );
        assert_eq!(
            error_of("SELECT tenant_backfill.soft_delete_orphans('customers')"),
            "42501: permission denied: role tb_clerk cannot UPDATE column deleted_at of public.customers"
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
            "42704: public.customers is not a tenant_backfill target"
        );
    }
}
