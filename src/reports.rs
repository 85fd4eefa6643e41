//! Look before you leap (API.md section 2): read-only reports over the decision query.

use crate::catalog::{self, Job};
use crate::engine::{self, Detail, Mode, Scope};
use crate::error::{OrRaise, Result};
use crate::sql::{self, get, get_required, Statement, Value};
use crate::types::RegClass;
use pgrx::prelude::*;

/// The decision query over the whole table, wrapped by `outer` (which reads it as `d`).
fn over_decisions(job: &Job, mode: Mode, detail: Detail, outer: &str) -> Statement {
    let mut st = engine::decision_query(job, mode, &Scope::All, detail);
    st.sql = format!("WITH d AS ({}) {outer}", st.sql);
    st
}

fn load(target: RegClass) -> Result<Job> {
    let job = catalog::job(target.0)?;
    job.require_read_access()?;
    Ok(job)
}

/// The statement behind `plan` (sql/procedures.sql), which runs it with PL/pgSQL's
/// `RETURN QUERY EXECUTE`: the rows stream from the executor into the result without
/// a detour through Rust values, which for a big table cost as much as the query.
#[pg_extern]
fn _plan_statement(
    target: RegClass,
    mode: default!(Option<String>, "'fill'"),
) -> TableIterator<'static, (name!(sql, String), name!(params, Vec<Option<String>>))> {
    TableIterator::once(plan_statement(target, mode.as_deref()).or_raise())
}

fn plan_statement(target: RegClass, mode: Option<&str>) -> Result<(String, Vec<Option<String>>)> {
    let mode = Mode::parse(mode)?;
    let job = load(target)?;
    let st = over_decisions(
        &job,
        mode,
        Detail::Full,
        "SELECT d.key::text, d.current::text, d.proposed::text, d.action, d.phase, d.source, d.rule, tenant_backfill._evidence_jsonb(d.evidence) \
           FROM d WHERE d.action IS NOT NULL ORDER BY d.key",
    );
    st.with_array_argument()
}

/// The counts a DBA reads first.
#[pg_extern]
fn preflight(
    target: RegClass,
    mode: default!(Option<String>, "'fill'"),
) -> TableIterator<'static, (name!(check_name, String), name!(rows, i64), name!(detail, Option<String>))> {
    TableIterator::new(sql::without_jit(|| preflight_rows(target, mode.as_deref())).or_raise())
}

fn preflight_rows(target: RegClass, mode: Option<&str>) -> Result<Vec<(String, i64, Option<String>)>> {
    let mode = Mode::parse(mode)?;
    let job = load(target)?;
    let t = &job.target;

    let (total, nulls) = sql::select_rows(
        &format!(
            "SELECT pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE t.{} IS NULL) FROM {} t",
            t.tenant.sql_name(),
            t.rel.sql_name()
        ),
        &[],
        |row| Ok((get_required::<i64>(row, 1)?, get_required::<i64>(row, 2)?)),
    )?
    .into_iter()
    .next()
    .unwrap_or((0, 0));

    // One pass over the decisions, without evidence: counts per (action, phase, source)
    // and, per source, the related rows that carry no tenant.
    let unattributed_sums: String = job
        .sources
        .iter()
        .enumerate()
        .map(|(i, _)| format!(", pg_catalog.sum((d.unattributed->>($1::text[])[{}])::pg_catalog.int8)::pg_catalog.int8", i + 1))
        .collect();
    // The labels go first, as one text[] argument: the decision query's own
    // placeholders move up by one.
    let mut st = engine::decision_query(&job, mode, &Scope::All, Detail::Counts);
    st.sql = format!(
        "WITH d AS ({}) SELECT d.action, d.phase, d.source, pg_catalog.count(*)::pg_catalog.int8{unattributed_sums} \
           FROM d GROUP BY 1, 2, 3",
        sql::map_placeholders(&st.sql, |n| format!("${}", n + 1))
    );
    let labels: Vec<Option<String>> = job.sources.iter().map(|s| Some(s.label.clone())).collect();
    st.params.insert(0, Value::TextArray(labels));
    let n = job.sources.len();
    let rows = sql::select_rows(&st.sql, &st.params, |row| {
        let mut sums = Vec::with_capacity(n);
        for i in 0..n {
            sums.push(get::<i64>(row, 5 + i)?.unwrap_or(0));
        }
        Ok((get::<String>(row, 1)?, get::<i32>(row, 2)?, get::<String>(row, 3)?, get_required::<i64>(row, 4)?, sums))
    })?;
    let mut groups: Vec<(String, Option<String>, Option<i32>, Option<String>, i64)> = rows
        .iter()
        .filter(|r| r.0.is_some())
        .map(|r| ("action".to_string(), r.0.clone(), r.1, r.2.clone(), r.3))
        .collect();
    for (i, s) in job.sources.iter().enumerate() {
        let total: i64 = rows.iter().map(|r| r.4[i]).sum();
        groups.push(("unattributed".into(), None, None, Some(s.label.clone()), total));
    }
    let count = |pred: &dyn Fn(&(String, Option<String>, Option<i32>, Option<String>, i64)) -> bool| -> i64 {
        groups.iter().filter(|g| pred(g)).map(|g| g.4).sum()
    };
    let changes = |g: &(String, Option<String>, Option<i32>, Option<String>, i64)| {
        g.0 == "action" && matches!(g.1.as_deref(), Some("fill") | Some("reassign"))
    };
    let is_action = |g: &(String, Option<String>, Option<i32>, Option<String>, i64), a: &str| {
        g.0 == "action" && g.1.as_deref() == Some(a)
    };

    let mut out: Vec<(String, i64, Option<String>)> = vec![
        ("total_rows".into(), total, Some(t.rel.display.clone())),
        ("null_tenant".into(), nulls, Some(format!("{} IS NULL", t.tenant.name))),
    ];

    let by_override = count(&|g| changes(g) && g.2 == Some(0));
    let origins: Vec<String> = ordered_names(
        groups.iter().filter(|g| changes(g) && g.2 == Some(0)).map(|g| (g.3.clone().unwrap_or_default(), g.4)),
    );
    out.push(("by_override".into(), by_override, joined(origins)));

    for s in &job.sources {
        let n = count(&|g| changes(g) && g.2 == Some(s.phase));
        out.push((format!("by_phase_{}", s.phase), n, Some(format!("{} ({})", s.label, s.rule.as_str()))));
    }

    let conflicts = count(&|g| is_action(g, "conflict"));
    let conflict_sources = ordered_names(
        groups.iter().filter(|g| is_action(g, "conflict")).map(|g| (g.3.clone().unwrap_or_default(), g.4)),
    );
    out.push(("conflicts".into(), conflicts, joined(conflict_sources)));
    out.push((
        "orphans".into(),
        count(&|g| is_action(g, "orphan")),
        Some("no related rows in any source".into()),
    ));
    out.push((
        "unresolved".into(),
        count(&|g| is_action(g, "unresolved")),
        Some("related rows exist but none carries a tenant".into()),
    ));

    // Per source, in phase order, so the detail reads like the configuration.
    let unattributed: Vec<(String, i64)> = job
        .sources
        .iter()
        .filter_map(|s| {
            let n: i64 = groups
                .iter()
                .filter(|g| g.0 == "unattributed" && g.3.as_deref() == Some(s.label.as_str()))
                .map(|g| g.4)
                .sum();
            (n > 0).then(|| (s.label.clone(), n))
        })
        .collect();
    out.push((
        "source_null_tenant".into(),
        unattributed.iter().map(|u| u.1).sum(),
        joined(unattributed.iter().map(|(l, n)| format!("{l}: {n}")).collect()),
    ));

    let mut missing = Vec::new();
    for s in &job.sources {
        if !catalog::has_leading_index(&s.rel, &s.via)? {
            missing.push(format!("{}.{}", s.rel.display, sql::ident(&s.via.name)));
        }
    }
    out.push(("missing_index".into(), missing.len() as i64, joined(missing)));

    if mode == Mode::Reassign {
        out.push((
            "mismatched".into(),
            count(&|g| is_action(g, "reassign")),
            Some(format!("non-NULL {} contradicted by the decision", t.tenant.name)),
        ));
    }
    Ok(out)
}

/// "name: n" for each name, summed, in first-seen order.
fn ordered_names(items: impl Iterator<Item = (String, i64)>) -> Vec<String> {
    let mut sums: Vec<(String, i64)> = Vec::new();
    for (name, n) in items {
        match sums.iter_mut().find(|s| s.0 == name) {
            Some(s) => s.1 += n,
            None => sums.push((name, n)),
        }
    }
    sums.sort();
    sums.into_iter().map(|(name, n)| format!("{name}: {n}")).collect()
}

fn joined(parts: Vec<String>) -> Option<String> {
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The rows `unanimous` refuses, with their candidates.
#[pg_extern]
fn conflicts(
    target: RegClass,
    mode: default!(Option<String>, "'fill'"),
) -> TableIterator<'static, (name!(row_key, Option<String>), name!(evidence, Option<pgrx::JsonB>))> {
    TableIterator::new(sql::without_jit(|| conflict_rows(target, mode.as_deref())).or_raise())
}

fn conflict_rows(target: RegClass, mode: Option<&str>) -> Result<Vec<(Option<String>, Option<pgrx::JsonB>)>> {
    let mode = Mode::parse(mode)?;
    let job = load(target)?;
    let st = over_decisions(
        &job,
        mode,
        Detail::Full,
        "SELECT d.key::text, tenant_backfill._evidence_jsonb(d.evidence) FROM d WHERE d.action = 'conflict' ORDER BY d.key",
    );
    sql::select_rows(&st.sql, &st.params, |row| Ok((get(row, 1)?, get(row, 2)?)))
}

type ReviewRow = (Option<String>, Option<String>, Option<pgrx::JsonB>, Option<pgrx::JsonB>, Option<String>);

/// Everything left for a human, for `\copy (...) TO 'review.csv' CSV HEADER`. The last
/// column, `tenant`, is left empty for the reviewer to fill in; the filled file loads
/// back into a table that `apply_decisions` reads.
#[pg_extern]
fn review_queue(
    target: RegClass,
    mode: default!(Option<String>, "'fill'"),
) -> TableIterator<
    'static,
    (
        name!(row_key, Option<String>),
        name!(reason, Option<String>),
        name!(evidence, Option<pgrx::JsonB>),
        name!(row_data, Option<pgrx::JsonB>),
        name!(tenant, Option<String>),
    ),
> {
    TableIterator::new(sql::without_jit(|| review_rows(target, mode.as_deref())).or_raise())
}

fn review_rows(target: RegClass, mode: Option<&str>) -> Result<Vec<ReviewRow>> {
    let mode = Mode::parse(mode)?;
    let job = load(target)?;
    // row_data shows the whole row, so the reviewer needs to read all of it.
    catalog::require_table_privilege(&job.target.rel, "SELECT")?;
    let st = over_decisions(
        &job,
        mode,
        Detail::Full,
        &format!(
            "SELECT d.key::text, d.action, tenant_backfill._evidence_jsonb(d.evidence), pg_catalog.to_jsonb(t.*), NULL::text \
               FROM d JOIN {table} t ON t.{key} = d.key \
              WHERE d.action IN ('conflict', 'unresolved', 'orphan') ORDER BY d.key",
            table = job.target.rel.sql_name(),
            key = engine::key_column(&job),
        ),
    );
    sql::select_rows(&st.sql, &st.params, |row| Ok((get(row, 1)?, get(row, 2)?, get(row, 3)?, get(row, 4)?, get(row, 5)?)))
}
