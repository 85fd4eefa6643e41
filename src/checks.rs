//! Checks that several capabilities share: the rows still without a tenant (validate,
//! finalize, monitor) and the related rows whose tenant disagrees with their target row
//! (validate, monitor).

use crate::catalog::{Job, Rule, Target};
use crate::engine;
use crate::error::Result;
use crate::sql::{self, get, get_required, Statement, Value};

/// How many offending keys a message names.
pub const FIRST_KEYS: i64 = 5;

/// Rows of a target whose tenant is NULL.
pub struct NullRows {
    pub count: i64,
    /// The first keys, in key order, as text.
    pub first_keys: Vec<String>,
}

impl NullRows {
    /// "16, 17, 18, 24, 28" and ", …" when there are more.
    pub fn key_list(&self) -> String {
        let more = if self.count > self.first_keys.len() as i64 { ", …" } else { "" };
        format!("{}{more}", self.first_keys.join(", "))
    }
}

/// The target's rows with a NULL tenant that also satisfy `filter` (a condition on
/// alias `t`, `true` for all), with `params` for the filter's placeholders.
pub fn null_tenant_rows(target: &Target, filter: &str, params: &[Value]) -> Result<NullRows> {
    let table = target.rel.sql_name();
    let key = target.key.sql_name();
    let tenant = target.tenant.sql_name();
    sql::select_one_row(
        &format!(
            "SELECT (SELECT pg_catalog.count(*) FROM {table} t WHERE t.{tenant} IS NULL AND {filter}),\n       \
             (SELECT pg_catalog.array_agg(x.k::text ORDER BY x.k) FROM\n         \
             (SELECT t.{key} AS k\n            \
             FROM {table} t WHERE t.{tenant} IS NULL AND {filter}\n           \
             ORDER BY t.{key} LIMIT {FIRST_KEYS}) x)"
        ),
        params,
        "the count of NULL tenants",
        |row| {
            Ok(NullRows {
                count: get_required(row, 1)?,
                first_keys: get::<Vec<Option<String>>>(row, 2)?.unwrap_or_default().into_iter().flatten().collect(),
            })
        },
    )
}

/// Related rows (of unanimous sources) whose tenant differs from their target row's,
/// but for rows an override decides (a human said so): the count, and a detail per
/// source. Majority sources are not checked: they may disagree by design.
pub fn disagreements(job: &Job) -> Result<(i64, Option<String>)> {
    let t = &job.target;
    let mut total = 0;
    let mut detail = Vec::new();
    for s in &job.sources {
        if s.rule == Rule::Majority {
            detail.push(format!("{}: not checked (majority)", s.label));
            continue;
        }
        let mut st = Statement::new();
        let overridden = engine::overridden_keys(job, &mut st);
        st.sql = format!(
            "WITH bad AS (\n    SELECT t.{key} AS key FROM {source} s JOIN {target} t ON t.{key} = s.{via}\n     \
             WHERE s.{stenant} IS NOT NULL AND t.{tenant} IS NOT NULL\n       \
             AND s.{stenant}::{tt} <> t.{tenant} AND t.{key}::text NOT IN ({overridden}))\n\
             SELECT (SELECT pg_catalog.count(*) FROM bad),\n       \
             (SELECT pg_catalog.string_agg(x.key::text, ', ' ORDER BY x.key)\n          \
             FROM (SELECT DISTINCT b.key FROM bad b ORDER BY b.key LIMIT {FIRST_KEYS}) x),\n       \
             (SELECT pg_catalog.count(DISTINCT b.key) FROM bad b)",
            key = t.key.sql_name(),
            tenant = t.tenant.sql_name(),
            tt = t.tenant.type_sql,
            target = t.rel.sql_name(),
            source = s.rel.sql_name(),
            via = s.via.sql_name(),
            stenant = s.tenant.sql_name(),
        );
        let (n, keys, distinct) = sql::select_one_row(&st.sql, &st.params, "the disagreement count", |row| {
            Ok((get_required::<i64>(row, 1)?, get::<String>(row, 2)?, get_required::<i64>(row, 3)?))
        })?;
        total += n;
        if n > 0 {
            let more = if distinct > FIRST_KEYS { ", …" } else { "" };
            detail.push(format!(
                "{}: {n} related rows disagree ({} {}{more})",
                s.label,
                t.rel.display,
                keys.unwrap_or_default()
            ));
        }
    }
    Ok((total, (!detail.is_empty()).then(|| detail.join("; "))))
}
