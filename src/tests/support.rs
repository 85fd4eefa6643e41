//! What every `#[pg_test]` file shares: the fixtures (tests/fixtures/, which the
//! pg_regress suite and the demo load too), the jobs configured on them, and small
//! helpers that run SQL and read its results.

use pgrx::prelude::*;

pub const CUSTOMERS: &str = include_str!("../../tests/fixtures/customers.sql");
pub const SHIFT_TYPES: &str = include_str!("../../tests/fixtures/shift_types.sql");
pub const SALES_OPS: &str = include_str!("../../tests/fixtures/sales_ops.sql");

/// The customers job of the runbook, configured as a DBA would.
pub const CUSTOMERS_JOB: &str = "
    SELECT tenant_backfill.define('customers', 'company_id');
    SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id');
    SELECT tenant_backfill.add_source('customers', 'phone_numbers', 'customer_id');
    SELECT tenant_backfill.add_source('customers', 'calls', 'customer_id', rule => 'majority');
    SELECT tenant_backfill.set_override('customers', '27', '3', 'confirmed by support');
";

pub const SHIFT_TYPES_JOB: &str = r#"
    SELECT tenant_backfill.define('"ShiftTypes"', 'CompanyId');
    SELECT tenant_backfill.add_source('"ShiftTypes"', '"ShiftInstances"', 'ShiftTypeId', rule => 'majority');
    SELECT tenant_backfill.add_override_table('"ShiftTypes"', '"Configs"', 'Key', 'Value', 'ShiftTypeCompanyOverride:');
"#;

pub fn run(sql: &str) {
    Spi::run(sql).expect("SQL failed");
}

pub fn load(fixtures: &[&str]) {
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
pub fn error_of(statement: &str) -> String {
    Spi::get_one_with_args::<String>("SELECT pg_temp.error_of($1)", &[statement.into()])
        .expect("error_of failed")
        .expect("error_of returned NULL")
}

pub fn text(query: &str) -> Option<String> {
    Spi::get_one::<String>(query).expect("query failed")
}

pub fn count(query: &str) -> i64 {
    Spi::get_one::<i64>(query).expect("query failed").expect("count was NULL")
}

/// Rows of a query as text columns joined by '|', in the query's order.
pub fn rows(query: &str) -> Vec<String> {
    Spi::connect(|client| {
        let table = client.select(query, None, &[]).expect("query failed");
        let mut out = Vec::new();
        for row in table {
            let n = row.columns();
            let cols: Vec<String> =
                (1..=n).map(|i| row.get::<String>(i).expect("cast every column to text").unwrap_or_default()).collect();
            out.push(cols.join("|"));
        }
        out
    })
}
