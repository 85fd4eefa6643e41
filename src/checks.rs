//! Checks that several capabilities share: the rows still without a tenant (validate,
//! finalize, monitor), the related rows whose tenant disagrees with their target row
//! (validate, monitor), and source tenants that do not cast to the target's type
//! (preflight reports them, everything that decides stops at them first).

use crate::engine::{self, Mode, Scope};
use crate::error::{BackfillError, Result};
use crate::job::{Direction, Job, Rule, Source, Target};
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
    let bad = bad_source_values(job, Mode::Reassign, &Scope::All)?;
    for s in &job.sources {
        // (A parent is one row: it cannot disagree by design, whatever its rule.)
        if s.rule == Rule::Majority && s.direction == Direction::Child {
            detail.push(format!("{}: not checked (majority)", s.label));
            continue;
        }
        let mut st = Statement::new();
        let overridden = engine::overridden_keys(job, &mut st);
        // Values that do not cast cannot be compared: they are left out, and named.
        let castable = match bad.iter().find(|b| std::ptr::eq(b.source, s)) {
            Some(b) => {
                detail.push(format!("{} (not compared)", b.describe(job)));
                let casts = engine::tenant_casts(&mut st, &format!("s.{}", s.tenant.sql_name()), &s.tenant, &t.tenant);
                casts
            }
            None => "true".into(),
        };
        st.sql = format!(
            "WITH bad AS (\n    SELECT t.{key} AS key FROM {source} s JOIN {target} t ON {related}\n     \
             WHERE s.{stenant} IS NOT NULL AND t.{tenant} IS NOT NULL\n       \
             AND {key_text} NOT IN ({overridden})\n       \
             AND CASE WHEN {castable} THEN s.{stenant}::{tt} {tenant_ne} t.{tenant} ELSE false END)\n\
             SELECT (SELECT pg_catalog.count(*) FROM bad),\n       \
             (SELECT pg_catalog.string_agg(x.key::text, ', ' ORDER BY x.key)\n          \
             FROM (SELECT DISTINCT b.key FROM bad b ORDER BY b.key LIMIT {FIRST_KEYS}) x),\n       \
             (SELECT pg_catalog.count(DISTINCT b.key) FROM bad b)",
            key = t.key.sql_name(),
            key_text = engine::key_text(&format!("t.{}", t.key.sql_name())),
            tenant = t.tenant.sql_name(),
            tt = t.tenant.type_sql,
            target = t.rel.sql_name(),
            source = s.rel.sql_name(),
            related = related_rows(job, s),
            tenant_ne = t.tenant.ops().ne,
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

/// The join condition of a source's rows (alias s) and the target rows (alias t) they are
/// evidence for: a child's via holds the target's key; a parent's key is what the target's
/// via holds.
fn related_rows(job: &Job, source: &Source) -> String {
    let t = &job.target;
    match &source.parent_key {
        None => format!("t.{} {} s.{}", t.key.sql_name(), t.key.ops().eq, source.via.sql_name()),
        Some(key) => format!("s.{} {} t.{}", key.sql_name(), key.ops().eq, source.via.sql_name()),
    }
}

/// A source's tenants that do not cast to the target's tenant type.
pub struct BadValues<'a> {
    pub source: &'a Source,
    pub count: i64,
    /// The first (key, value) pairs, in key order.
    pub first: Vec<(String, String)>,
}

impl BadValues<'_> {
    /// `calls.tenant: 2 values do not cast to integer (key 3: "abc", key 4: "x")`
    pub fn describe(&self, job: &Job) -> String {
        let first: Vec<String> = self.first.iter().map(|(k, v)| format!("key {k}: \"{v}\"")).collect();
        format!(
            "{}.{}: {} value{} {} not cast to {} ({}{})",
            self.source.label,
            self.source.tenant.name,
            self.count,
            if self.count == 1 { "" } else { "s" },
            if self.count == 1 { "does" } else { "do" },
            job.target.tenant.type_display,
            first.join(", "),
            if self.count > self.first.len() as i64 { ", …" } else { "" }
        )
    }
}

/// For every source whose tenant type differs from the target's, its related rows (of
/// the target rows in `scope`) whose tenant does not cast: any statement that reads one
/// of them as evidence stops with a bare cast error, so they are found first.
pub fn bad_source_values<'a>(job: &'a Job, mode: Mode, scope: &Scope) -> Result<Vec<BadValues<'a>>> {
    let mut out = Vec::new();
    for source in job.sources.iter().filter(|s| engine::casts_tenant(job, s)) {
        let mut st = Statement::new();
        let (with_scope, keys) = engine::scope_keys(&mut st, job, mode, scope);
        let stenant = source.tenant.sql_name();
        let casts = engine::tenant_casts(&mut st, &format!("s.{stenant}"), &source.tenant, &job.target.tenant);
        // The target key each value is evidence for: a child's via, a parent's target row's key.
        let key_ops = match &source.parent_key {
            None => source.via.ops(),
            Some(_) => job.target.key.ops(),
        };
        let (from, key) = match &source.parent_key {
            None => (format!("{} s", source.rel.sql_name()), format!("s.{}", source.via.sql_name())),
            Some(_) => (
                format!(
                    "{} s JOIN {} t ON {}",
                    source.rel.sql_name(),
                    job.target.rel.sql_name(),
                    related_rows(job, source)
                ),
                format!("t.{}", job.target.key.sql_name()),
            ),
        };
        st.sql = format!(
            "{with_scope}\n\
             SELECT pg_catalog.count(*) OVER (), {key}::text, s.{stenant}::text\n  \
             FROM {from}\n \
             WHERE {in_keys} AND s.{stenant} IS NOT NULL AND NOT {casts}\n \
             ORDER BY {key} LIMIT {FIRST_KEYS}",
            in_keys = keys.contain(source, &job.target, &key_ops, &key),
        );
        let rows = sql::select_rows(&st.sql, &st.params, |row| {
            Ok((get_required::<i64>(row, 1)?, get_required::<String>(row, 2)?, get_required::<String>(row, 3)?))
        })?;
        if let Some((count, _, _)) = rows.first() {
            let count = *count;
            out.push(BadValues { source, count, first: rows.into_iter().map(|(_, k, v)| (k, v)).collect() });
        }
    }
    Ok(out)
}

/// Stops before a decision over `scope` reads a source tenant that does not cast, with
/// an error naming the source, the column, the key and the value.
pub fn require_castable_sources(job: &Job, mode: Mode, scope: &Scope) -> Result<()> {
    let Some(bad) = bad_source_values(job, mode, scope)?.into_iter().next() else {
        return Ok(());
    };
    let (key, value) = bad.first.first().cloned().unwrap_or_default();
    Err(BackfillError::BadSourceValue {
        table: bad.source.rel.display.clone(),
        column: bad.source.tenant.name.clone(),
        key,
        value,
        target: job.target.rel.display.clone(),
        type_name: job.target.tenant.type_display.clone(),
        count: bad.count,
    })
}
