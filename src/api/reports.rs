//! Look before you leap (API.md section 2): read-only reports over the decision query.

use crate::catalog;
use crate::checks;
use crate::engine::{self, Detail, Mode, Scope};
use crate::error::{required, OrRaise, Result};
use crate::job::{self, Job};
use crate::sql::{self, get, get_required, Statement, Value};
use crate::types::RegClass;
use pgrx::prelude::*;

/// The decision query over the whole table, wrapped by `outer` (which reads it as `d`).
fn over_decisions(mut st: Statement, job: &Job, mode: Mode, detail: Detail, outer: &str) -> Statement {
    let decision = engine::decision_query(&mut st, job, mode, &Scope::All, detail);
    st.sql = format!("WITH d AS (\n{decision})\n{outer}");
    st
}

fn load(target: Option<RegClass>) -> Result<Job> {
    let job = job::job(required(target, "target")?.0)?;
    job.require_read_access()?;
    Ok(job)
}

/// The statement behind `plan` (sql/procedures.sql), which runs it with PL/pgSQL's
/// `RETURN QUERY EXECUTE`: the rows stream from the executor into the result without
/// a detour through Rust values, which for a big table cost as much as the query.
/// `EXECUTE ... USING` takes a fixed number of arguments, so the statement reads all
/// its values from one `text[]`.
#[pg_extern(schema = "tenant_backfill_internal")]
#[search_path(pg_catalog, pg_temp)]
fn _plan_statement(
    target: Option<RegClass>,
    mode: default!(Option<String>, "'fill'"),
) -> TableIterator<'static, (name!(sql, String), name!(params, Vec<Option<String>>))> {
    TableIterator::once(plan_statement(target, mode.as_deref()).or_raise())
}

fn plan_statement(target: Option<RegClass>, mode: Option<&str>) -> Result<(String, Vec<Option<String>>)> {
    let mode = Mode::parse(mode)?;
    let job = load(target)?;
    checks::require_castable_sources(&job, mode, &Scope::All)?;
    let st = over_decisions(
        Statement::with_text_array(),
        &job,
        mode,
        Detail::Full,
        "SELECT d.key::text, d.current::text, d.proposed::text, d.action, d.phase, d.source, d.rule,\n       \
         tenant_backfill_internal._evidence_jsonb(d.evidence)\n  FROM d WHERE d.action IS NOT NULL ORDER BY d.key",
    );
    st.into_text_array()
}

/// A count of decided rows: by action, phase and source, or (for `unattributed`) the
/// related rows of a source that carry no tenant.
struct Group {
    kind: GroupKind,
    phase: Option<i32>,
    /// The source's label, or the override's origin.
    source: Option<String>,
    rows: i64,
}

#[derive(PartialEq)]
enum GroupKind {
    Action(String),
    Unattributed,
}

impl Group {
    fn is(&self, action: &str) -> bool {
        self.kind == GroupKind::Action(action.into())
    }

    /// Whether the rows are written by a run: filled or reassigned.
    fn changes(&self) -> bool {
        self.is("fill") || self.is("reassign")
    }
}

/// The counts a DBA reads first.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn preflight(
    target: Option<RegClass>,
    mode: default!(Option<String>, "'fill'"),
) -> TableIterator<'static, (name!(check_name, String), name!(rows, i64), name!(detail, Option<String>))> {
    TableIterator::new(sql::without_jit(|| preflight_rows(target, mode.as_deref())).or_raise())
}

/// One pass over the decisions, without evidence: counts per (action, phase, source)
/// and, per source, the related rows that carry no tenant.
fn decision_groups(job: &Job, mode: Mode) -> Result<Vec<Group>> {
    let mut st = Statement::new();
    let decision = engine::decision_query(&mut st, job, mode, &Scope::All, Detail::Counts);
    let unattributed_sums: String = job
        .sources
        .iter()
        .map(|s| {
            let label = st.param(Value::text(s.label.clone()));
            format!(",\n       pg_catalog.sum((d.unattributed->>{label}::text)::pg_catalog.int8)::pg_catalog.int8")
        })
        .collect();
    st.sql = format!(
        "WITH d AS (\n{decision})\n\
         SELECT d.action, d.phase, d.source, pg_catalog.count(*)::pg_catalog.int8{unattributed_sums}\n  \
         FROM d GROUP BY 1, 2, 3"
    );
    let n = job.sources.len();
    let rows = sql::select_rows(&st.sql, &st.params, |row| {
        let mut sums = Vec::with_capacity(n);
        for i in 0..n {
            sums.push(get::<i64>(row, 5 + i)?.unwrap_or(0));
        }
        let group = Group {
            kind: GroupKind::Action(get::<String>(row, 1)?.unwrap_or_default()),
            phase: get(row, 2)?,
            source: get(row, 3)?,
            rows: get_required(row, 4)?,
        };
        Ok((get::<String>(row, 1)?.is_some(), group, sums))
    })?;
    let mut groups = Vec::new();
    for (i, s) in job.sources.iter().enumerate() {
        let total: i64 = rows.iter().map(|r| r.2[i]).sum();
        groups.push(Group { kind: GroupKind::Unattributed, phase: None, source: Some(s.label.clone()), rows: total });
    }
    // Rows with no action (their tenant is right) count only for unattributed rows.
    groups.splice(0..0, rows.into_iter().filter(|r| r.0).map(|r| r.1));
    Ok(groups)
}

fn preflight_rows(target: Option<RegClass>, mode: Option<&str>) -> Result<Vec<(String, i64, Option<String>)>> {
    let mode = Mode::parse(mode)?;
    let job = load(target)?;
    let t = &job.target;

    let (total, nulls) = sql::select_one_row(
        &format!(
            "SELECT pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE t.{} IS NULL) FROM {} t",
            t.tenant.sql_name(),
            t.rel.sql_name()
        ),
        &[],
        "the row count",
        |row| Ok((get_required::<i64>(row, 1)?, get_required::<i64>(row, 2)?)),
    )?;
    let groups = decision_groups(&job, mode)?;
    let count = |pred: &dyn Fn(&Group) -> bool| -> i64 { groups.iter().filter(|g| pred(g)).map(|g| g.rows).sum() };
    let sources_of = |pred: &dyn Fn(&Group) -> bool| {
        ordered_names(groups.iter().filter(|g| pred(g)).map(|g| (g.source.clone().unwrap_or_default(), g.rows)))
    };

    let mut out: Vec<(String, i64, Option<String>)> = vec![
        ("total_rows".into(), total, Some(t.rel.display.clone())),
        ("null_tenant".into(), nulls, Some(format!("{} IS NULL", t.tenant.name))),
    ];

    let by_override = |g: &Group| g.changes() && g.phase == Some(0);
    out.push(("by_override".into(), count(&by_override), joined(sources_of(&by_override))));

    for s in &job.sources {
        let n = count(&|g| g.changes() && g.phase == Some(s.phase));
        out.push((format!("by_phase_{}", s.phase), n, Some(format!("{} ({})", s.label, s.rule.as_str()))));
    }

    let conflict = |g: &Group| g.is("conflict");
    out.push(("conflicts".into(), count(&conflict), joined(sources_of(&conflict))));
    out.push(("orphans".into(), count(&|g| g.is("orphan")), Some("no related rows in any source".into())));
    out.push((
        "unresolved".into(),
        count(&|g| g.is("unresolved")),
        Some("related rows exist but none carries a tenant".into()),
    ));

    // Per source, in phase order, so the detail reads like the configuration.
    let unattributed: Vec<(String, i64)> = job
        .sources
        .iter()
        .filter_map(|s| {
            let n = count(&|g| g.kind == GroupKind::Unattributed && g.source.as_deref() == Some(s.label.as_str()));
            (n > 0).then(|| (s.label.clone(), n))
        })
        .collect();
    out.push((
        "source_null_tenant".into(),
        unattributed.iter().map(|u| u.1).sum(),
        joined(unattributed.iter().map(|(l, n)| format!("{l}: {n}")).collect()),
    ));

    // Counted above as if they were not there; a run stops at the first.
    let bad = checks::bad_source_values(&job, mode, &Scope::All)?;
    out.push((
        "source_bad_tenant".into(),
        bad.iter().map(|b| b.count).sum(),
        joined(bad.iter().map(|b| b.describe(&job)).collect()),
    ));

    let mut missing = Vec::new();
    for s in &job.sources {
        // A child is read by its via column; a parent by its key (unique, so indexed).
        let column = s.parent_key.as_ref().unwrap_or(&s.via);
        if !catalog::has_leading_index(&s.rel, column)? {
            missing.push(format!("{}.{}", s.rel.display, sql::ident(&column.name)));
        }
    }
    out.push(("missing_index".into(), missing.len() as i64, joined(missing)));

    if mode == Mode::Reassign {
        out.push((
            "mismatched".into(),
            count(&|g| g.is("reassign")),
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
#[search_path(pg_catalog, pg_temp)]
fn conflicts(
    target: Option<RegClass>,
    mode: default!(Option<String>, "'fill'"),
) -> TableIterator<'static, (name!(row_key, Option<String>), name!(evidence, Option<pgrx::JsonB>))> {
    TableIterator::new(sql::without_jit(|| conflict_rows(target, mode.as_deref())).or_raise())
}

fn conflict_rows(target: Option<RegClass>, mode: Option<&str>) -> Result<Vec<(Option<String>, Option<pgrx::JsonB>)>> {
    let mode = Mode::parse(mode)?;
    let job = load(target)?;
    checks::require_castable_sources(&job, mode, &Scope::All)?;
    let st = over_decisions(
        Statement::new(),
        &job,
        mode,
        Detail::Full,
        "SELECT d.key::text, tenant_backfill_internal._evidence_jsonb(d.evidence)\n  FROM d WHERE d.action = 'conflict' ORDER BY d.key",
    );
    sql::select_rows(&st.sql, &st.params, |row| Ok((get(row, 1)?, get(row, 2)?)))
}

type ReviewRow = (Option<String>, Option<String>, Option<pgrx::JsonB>, Option<pgrx::JsonB>, Option<String>);

/// Everything left for a human, for `\copy (...) TO 'review.csv' CSV HEADER`. The last
/// column, `tenant`, is left empty for the reviewer to fill in; the filled file loads
/// back into a table that `apply_decisions` reads.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn review_queue(
    target: Option<RegClass>,
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

fn review_rows(target: Option<RegClass>, mode: Option<&str>) -> Result<Vec<ReviewRow>> {
    let mode = Mode::parse(mode)?;
    let job = load(target)?;
    checks::require_castable_sources(&job, mode, &Scope::All)?;
    // row_data shows the whole row, so the reviewer needs to read all of it.
    catalog::require_table_privilege(&job.target.rel, "SELECT")?;
    let st = over_decisions(
        Statement::new(),
        &job,
        mode,
        Detail::Full,
        &format!(
            "SELECT d.key::text, d.action, tenant_backfill_internal._evidence_jsonb(d.evidence), pg_catalog.to_jsonb(t.*), NULL::text\n  \
             FROM d JOIN {table} t ON t.{key} {key_eq} d.key\n \
             WHERE d.action IN ('conflict', 'unresolved', 'orphan') ORDER BY d.key",
            table = job.target.rel.sql_name(),
            key = job.target.key.sql_name(),
            key_eq = job.target.key.ops().eq,
        ),
    );
    sql::select_rows(&st.sql, &st.params, |row| {
        Ok((get(row, 1)?, get(row, 2)?, get(row, 3)?, get(row, 4)?, get(row, 5)?))
    })
}
