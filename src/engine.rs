//! The decision engine: from a target's configuration it builds the one SQL statement
//! that decides, for a set of target rows, what their tenant should be (API.md, "How a
//! row's tenant is decided"). `plan`, `preflight`, `conflicts`, `review_queue` and the
//! write path are all this statement plus a little, so what a DBA reviews and what a
//! run changes cannot disagree.
//!
//! Shape of the statement (one grouped query per source, never a query per row), each
//! part built by its own function below:
//!
//! ```text
//! WITH scope      -- the target rows considered: a key range, or all     (scope_cte)
//!    , ev_<i>     -- per source: GROUP BY via over the scope's keys (counts, lowest
//!                 --   and highest tenant)                                (source_ctes)
//!    , cand_<i>   -- per source and row: none, one or several tenants, the tenant it
//!                 --   proposes, evidence json (several: counted per tenant by probe)
//!    , ov         -- the override in force per key (own table, then config tables)
//!    , decided    -- scope LEFT JOIN every cand_<i> and ov               (decided_cte)
//! SELECT key, current, proposed, action, phase, source, rule, evidence, unattributed
//!                 -- the cascade                                          (cascade)
//! ```
//!
//! `key`, `current` and `proposed` keep the columns' own types (so ties go to the lowest
//! tenant in the tenant's own order, and writers can join back without casts); `action`
//! is NULL for rows whose tenant is already right. `evidence` is JSON text (NULL without
//! `Detail::Full`): readers that show it cast it to jsonb, the write path parses it once,
//! into the audit log.
//!
//! The statement is laid out over lines, one clause or CTE a line, so that what a DBA
//! sees in an error, in `auto_explain` or in `pg_stat_activity` can be read.

use crate::catalog::Column;
use crate::error::{BackfillError, Result};
use crate::job::{Direction, Job, Rule, Source, Target};
use crate::sql::{Statement, Value};
use pgrx::pg_sys;

/// API.md's `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only NULL-tenant rows are decided.
    Fill,
    /// Every row is decided; a non-NULL tenant that the decision contradicts is corrected.
    Reassign,
}

impl Mode {
    pub fn parse(text: Option<&str>) -> Result<Mode> {
        match text {
            Some("fill") => Ok(Mode::Fill),
            Some("reassign") => Ok(Mode::Reassign),
            other => Err(BackfillError::BadArgument(
                format!("unknown mode \"{}\"", other.unwrap_or("NULL")),
                "mode is 'fill' (only NULL tenants) or 'reassign' (also correct tenants the evidence contradicts)."
                    .into(),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fill => "fill",
            Mode::Reassign => "reassign",
        }
    }

    /// The actions that change a row in this mode, as a SQL list.
    pub fn writing_actions(self) -> &'static str {
        match self {
            Mode::Fill => "('fill')",
            Mode::Reassign => "('fill', 'reassign')",
        }
    }
}

/// How much a decision query computes per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Everything, evidence included (plan, the write path).
    Full,
    /// Actions and counts only, no evidence json (preflight).
    Counts,
}

/// Which target rows one decision query considers.
#[derive(Clone, Debug)]
pub enum Scope {
    /// The whole table.
    All,
    /// The keys after `after` (exclusive, None: from the first) up to `up_to`
    /// (inclusive), read as the whole table is: a statement of `run_now`, whose last
    /// ends where its run recorded the table's end (rows inserted after that belong to
    /// the guard, as for every run).
    /// `rows`: at most how many rows of the target the range holds, when that is known.
    Range { after: Option<String>, up_to: String, rows: Option<i64> },
    /// Keyset pagination (the batches of the write path): keys after `after` (exclusive)
    /// up to `up_to` (inclusive), at most `limit` rows, in key order. Keys are text,
    /// cast to the key's type.
    Batch { after: Option<String>, up_to: Option<String>, limit: Option<i64> },
    /// These keys, in key order (a later pass of a run of committed batches: rows the
    /// pass before did not write, `run_skipped`), as text, cast to the key's type.
    Keys(Vec<String>),
}

/// The decision query for `job` over `scope`, its values added to `st`. Consumers wrap
/// it (`WITH d AS (...) SELECT ... FROM d`).
pub fn decision_query(st: &mut Statement, job: &Job, mode: Mode, scope: &Scope, detail: Detail) -> String {
    let mut ctes = vec![scope_cte(st, job, mode, scope)];
    let keys = keys_in_scope(st, job, mode, scope);
    let mut labels = Vec::with_capacity(job.sources.len());
    for (i, source) in job.sources.iter().enumerate() {
        let label = st.param(Value::text(source.label.clone()));
        // preflight counts as if values that do not cast were not there (it reports
        // them on a row of their own); everything else stops at them first (checks.rs).
        let castable_only = (detail == Detail::Counts && casts_tenant(job, source)).then(|| {
            ["s", "r"].map(|alias| {
                let casts = tenant_casts(
                    st,
                    &format!("{alias}.{}", source.tenant.sql_name()),
                    &source.tenant,
                    &job.target.tenant,
                );
                format!(" AND ({alias}.{} IS NULL OR {casts})", source.tenant.sql_name())
            })
        });
        ctes.push(source_ctes(i + 1, source, &job.target, &label, &keys, detail, castable_only.as_ref(), job.citus));
        labels.push(label);
    }
    ctes.push(overrides_cte(st, job));
    ctes.push(decided_cte(job.sources.len(), detail, &job.target.key.ops().eq));
    format!("WITH {}\n{}", ctes.join("\n, "), cascade(st, job, &labels))
}

/// The CTE `scope` and its keys, for a statement that reads the same rows a decision
/// query over `scope` reads (checks.rs).
pub fn scope_keys(st: &mut Statement, job: &Job, mode: Mode, scope: &Scope) -> (String, Keys) {
    let scope_cte = scope_cte(st, job, mode, scope);
    (format!("WITH {scope_cte}"), keys_in_scope(st, job, mode, scope))
}

/// Whether a source's tenants are cast to the target's tenant type (so a value that
/// does not cast stops any statement that reads it).
pub fn casts_tenant(job: &Job, source: &Source) -> bool {
    let (from, to) = (source.tenant.type_oid, job.target.tenant.type_oid);
    from != to && !cast_cannot_fail(from, to)
}

/// Casts that no value can fail: to text, and integers to wider integers or numeric.
/// (A domain is never among them: its CHECK may refuse a value.)
fn cast_cannot_fail(from: pg_sys::Oid, to: pg_sys::Oid) -> bool {
    use pg_sys::{INT2OID, INT4OID, INT8OID, NUMERICOID, TEXTOID};
    to == TEXTOID
        || matches!((from, to), (INT2OID, INT4OID) | (INT2OID, INT8OID) | (INT4OID, INT8OID))
        || (to == NUMERICOID && [INT2OID, INT4OID, INT8OID].contains(&from))
}

/// A SQL condition: `expr`, a value of the source column `from`, casts to the type of
/// `to` as the decision query casts it. From a string type the cast is `to`'s input
/// function, which Postgres 16 and later try without raising (`pg_input_is_valid`);
/// otherwise (and on 15) each value is cast in a subtransaction of its own (`_casts_to`),
/// which is why this is used only where a source's type differs.
pub fn tenant_casts(st: &mut Statement, expr: &str, from: &Column, to: &Column) -> String {
    if from.text_like {
        return text_reads_as(st, &format!("{expr}::text"), to);
    }
    casts_to(st, expr, to)
}

/// A SQL condition: the text `expr` reads as a value of `to`'s type, tried without
/// raising on Postgres 16 and later, in a subtransaction on 15.
fn text_reads_as(st: &mut Statement, expr: &str, to: &Column) -> String {
    if cfg!(feature = "pg15") {
        return casts_to(st, expr, to);
    }
    // The type without its modifier, as the decision query casts to it.
    let type_name = st.param(Value::text(to.type_sql.clone()));
    format!("pg_catalog.pg_input_is_valid({expr}, {type_name}::text)")
}

/// `_casts_to`: `expr` casts to `to`'s type, tried in a subtransaction of its own.
fn casts_to(st: &mut Statement, expr: &str, to: &Column) -> String {
    let type_oid = st.param(Value::Oid(to.type_oid));
    format!("tenant_backfill_internal._casts_to({expr}, {type_oid}::pg_catalog.oid::pg_catalog.regtype)")
}

/// `scope`: the rows to decide, with their current tenant.
fn scope_cte(st: &mut Statement, job: &Job, mode: Mode, scope: &Scope) -> String {
    let target = &job.target;
    let key = target.key.sql_name();
    let mut filters: Vec<String> = Vec::new();
    if mode == Mode::Fill {
        filters.push(format!("t.{} IS NULL", target.tenant.sql_name()));
    }
    let mut limit_clause = String::new();
    let column = format!("t.{key}");
    if let Scope::Range { after, up_to, .. } = scope {
        filters.extend(key_range_filters(st, &target.key, &column, after.as_deref(), Some(up_to)));
    }
    if let Scope::Batch { after, up_to, limit } = scope {
        filters.extend(key_range_filters(st, &target.key, &column, after.as_deref(), up_to.as_deref()));
        if let Some(limit) = limit {
            let p = st.param(Value::Int8(Some(*limit)));
            limit_clause = format!(" LIMIT {p}::pg_catalog.int8");
        }
    }
    if let Scope::Keys(keys) = scope {
        // A probe of the key index per key: a later pass's keys are few, and scattered.
        let keys = st.param(Value::TextArray(keys.iter().cloned().map(Some).collect()));
        let listed = format!(
            "SELECT {} FROM pg_catalog.unnest({keys}::pg_catalog.text[]) AS k(key)",
            target.key.from_text("k.key")
        );
        filters.push(in_subquery(&target.key.ops(), &column, &listed));
    }
    let where_clause = if filters.is_empty() { String::new() } else { format!(" WHERE {}", filters.join(" AND ")) };
    // A batch's scope is read by every source and must hold the same keys each time (its
    // LIMIT): materialized once. The whole table is better left to the planner, which
    // then reads it in key order from the key index and merges it with the evidence;
    // materialized, it was sorted again, on disk, for the merge.
    let materialized = match scope {
        Scope::All | Scope::Range { .. } => "NOT MATERIALIZED",
        Scope::Batch { .. } | Scope::Keys(_) => "MATERIALIZED",
    };
    format!(
        "scope AS {materialized} (\n    SELECT t.{key} AS key, t.{tenant} AS current FROM {table} t{where_clause}\n     ORDER BY t.{key}{limit_clause})",
        tenant = target.tenant.sql_name(),
        table = target.rel.sql_name(),
    )
}

/// The keys a source's rows are read for, as a subquery, and how a condition tests
/// for one of them.
pub struct Keys {
    subquery: String,
    /// Tested as `= ANY (ARRAY(subquery))`, not `IN (subquery)`.
    as_array: bool,
    /// A range scope's bounds (`Scope::Range`).
    range: Option<Bounds>,
}

/// A range of keys: after one (exclusive) and up to another (inclusive), each given as
/// text and cast to the key's type, each optional.
struct Bounds {
    after: Option<String>,
    up_to: Option<String>,
}

/// The conditions that keep `column`, a column of the key's type, after `after`
/// (exclusive) and up to `up_to` (inclusive), each given as text.
pub fn key_range_filters(
    st: &mut Statement,
    key: &Column,
    column: &str,
    after: Option<&str>,
    up_to: Option<&str>,
) -> Vec<String> {
    Bounds::new(st, key, after, up_to).on(key, column)
}

impl Bounds {
    fn new(st: &mut Statement, key: &Column, after: Option<&str>, up_to: Option<&str>) -> Bounds {
        let mut cast = |bound: Option<&str>| bound.map(|b| key.from_text(&st.param(Value::text(b.to_string()))));
        Bounds { after: cast(after), up_to: cast(up_to) }
    }

    /// The conditions that keep `column`, a column of the key's type, within the range,
    /// compared with the key's operators.
    fn on(&self, key: &Column, column: &str) -> Vec<String> {
        let ops = key.ops();
        let after = self.after.as_ref().map(|a| format!("{column} {} {a}", ops.gt));
        let up_to = self.up_to.as_ref().map(|u| format!("{column} {} {u}", ops.le));
        [after, up_to].into_iter().flatten().collect()
    }
}

impl Keys {
    /// `left`, the column `source` is read by, is one of the keys, compared with the
    /// operator of `ops`. Over a range of keys, a column of the key's type is also
    /// bounded by the range itself: then the source's index on it is read for that
    /// range alone, where a semi-join with the keys would read the whole source for
    /// every range.
    pub fn contain(&self, source: &Source, target: &Target, ops: &crate::catalog::Ops, left: &str) -> String {
        let contained = if self.as_array && source.keys_by_array {
            format!("{left} {} ANY (ARRAY({}))", ops.eq, self.subquery)
        } else {
            in_subquery(ops, left, &self.subquery)
        };
        let column = match source.direction {
            Direction::Child => &source.via,
            Direction::Parent => &target.key,
        };
        match &self.range {
            Some(range) if column.type_oid == target.key.type_oid => {
                std::iter::once(contained).chain(range.on(&target.key, left)).collect::<Vec<_>>().join(" AND ")
            }
            _ => contained,
        }
    }
}

/// The most keys a batch reads its sources for as one array: each source's array is
/// built whole in memory (8 MB of datums at this size), and one past 2^26 of them cannot
/// be built at all, where IN has no limit.
const ARRAY_KEYS_MAX: i64 = 1_000_000;

/// Which keys a source's rows are read for. Over the whole table the filter names the
/// target itself, so the planner sees its real size and hashes; a CTE's distinct count
/// is unknown to it (it guesses 200) and would make it probe the index once per key.
///
/// A batch's keys are few and its scope sorted: they are one array, so that the
/// source's index is read in a single scan that walks the sorted keys
/// (`= ANY (ARRAY(...))`, a ScalarArrayOp index scan) and yields the rows in key order,
/// instead of a hash of the keys, a probe per key and a sort: the decision of a batch of
/// 5000 takes a sixth to a quarter less time (BENCHMARKS.md, 2026-12-03). Only where a
/// b-tree index serves the array (Source::keys_by_array): without one, every row read
/// would search it from the start. A batch of more than ARRAY_KEYS_MAX keys keeps the
/// subquery, and so does Citus, which plans that form over a distributed source.
///
/// A range of `run_now` of at most ARRAY_KEYS_MAX rows reads its keys as one array too,
/// built from the target's range: the source's index is then read for the keys in scope
/// alone (in a fill, the NULL rows' related rows), where a semi-join read every related
/// row of the range, those of rows that have a tenant too.
fn keys_in_scope(st: &mut Statement, job: &Job, mode: Mode, scope: &Scope) -> Keys {
    let target = &job.target;
    let mut filters: Vec<String> = Vec::new();
    if mode == Mode::Fill {
        filters.push(format!("t.{} IS NULL", target.tenant.sql_name()));
    }
    let mut range = None;
    let mut as_array = false;
    match scope {
        Scope::All => {}
        Scope::Range { after, up_to, rows } => {
            let bounds = Bounds::new(st, &target.key, after.as_deref(), Some(up_to));
            filters.extend(bounds.on(&target.key, &format!("t.{}", target.key.sql_name())));
            range = Some(bounds);
            as_array = rows.is_some_and(|n| n <= ARRAY_KEYS_MAX) && !job.citus;
        }
        Scope::Batch { limit, .. } => {
            let few = limit.is_some_and(|n| n <= ARRAY_KEYS_MAX);
            return Keys {
                subquery: "SELECT sc.key FROM scope sc".to_string(),
                as_array: few && !job.citus,
                range: None,
            };
        }
        Scope::Keys(keys) => {
            return Keys {
                subquery: "SELECT sc.key FROM scope sc".to_string(),
                as_array: keys.len() as i64 <= ARRAY_KEYS_MAX && !job.citus,
                range: None,
            };
        }
    }
    let where_clause = if filters.is_empty() { String::new() } else { format!(" WHERE {}", filters.join(" AND ")) };
    Keys {
        subquery: format!(
            "SELECT t.{key} FROM {table} t{where_clause}",
            key = target.key.sql_name(),
            table = target.rel.sql_name()
        ),
        as_array,
        range,
    }
}

/// `ev_<i>` and `cand_<i>` for source `i`.
///
/// One grouped query per source, one row per key: how many related rows carry a tenant
/// and how many do not, and the lowest and highest tenant among them. When those two
/// are equal (the common case by far) the key's evidence is one tenant and its count,
/// and the row is decided from this pass alone. Only keys whose rows name several
/// tenants, the conflicts, go back to the source (an index probe on the via column,
/// inside this statement) for their per-tenant counts. Grouping every key by (key,
/// tenant) instead, as this engine first did, doubled the cost of a whole-table plan
/// (BENCHMARKS.md).
fn source_ctes(
    i: usize,
    source: &Source,
    target: &Target,
    label: &str,
    keys: &Keys,
    detail: Detail,
    castable_only: Option<&[String; 2]>,
    citus: bool,
) -> String {
    // The filter that leaves out values that do not cast, for alias s and alias r.
    let (castable_s, castable_r) = match castable_only {
        Some([s, r]) => (s.as_str(), r.as_str()),
        None => ("", ""),
    };
    let tenant = &target.tenant;
    // The comparisons, each with its type's operators (catalog::Ops).
    let (via_ops, tenant_ops) = (source.via.ops(), tenant.ops());
    let (via_eq, lo_eq_hi, lo_ne_hi) =
        (&via_ops.eq, format!("e.lo {} e.hi", tenant_ops.eq), format!("e.lo {} e.hi", tenant_ops.ne));
    let via = source.via.sql_name();
    let stenant = source.tenant.sql_name();
    let source_table = source.rel.sql_name();
    let tenant_type = &tenant.type_sql;
    let tenant_of = |alias: &str| format!("{alias}.{stenant}::{tenant_type}");
    let (lo, hi) = if tenant.has_min_max {
        (format!("pg_catalog.min({})", tenant_of("s")), format!("pg_catalog.max({})", tenant_of("s")))
    } else {
        // uuid and friends have no min()/max() but compare as one-element arrays.
        (
            format!("(pg_catalog.min(ARRAY[{}]) FILTER (WHERE s.{stenant} IS NOT NULL))[1]", tenant_of("s")),
            format!("(pg_catalog.max(ARRAY[{}]) FILTER (WHERE s.{stenant} IS NOT NULL))[1]", tenant_of("s")),
        )
    };
    // A conflicting key's related rows with a tenant, counted per tenant.
    let per_tenant = format!(
        "SELECT {tenant} AS tenant, pg_catalog.count(*) AS n FROM {source_table} r \
         WHERE r.{via} {via_eq} e.key AND r.{stenant} IS NOT NULL{castable_r} GROUP BY 1",
        tenant = tenant_of("r"),
    );
    // Citus cannot plan a subquery correlated with a CTE row when a Citus table is in the
    // statement: there, the conflicting keys' per-tenant counts are a CTE of their own,
    // `several_<i>`, grouped once for all of them and joined.
    let several_cte = (citus && source.direction == Direction::Child).then(|| {
        format!(
            "several_{i} AS (\n    SELECT x.key, pg_catalog.json_object_agg(x.tenant::text, x.n)::text AS counts,\n           \
             (pg_catalog.array_agg(x.tenant ORDER BY x.n DESC, x.tenant))[1] AS top\n      \
             FROM (SELECT r.{via} AS key, {tenant} AS tenant, pg_catalog.count(*) AS n FROM {source_table} r\n             \
             WHERE {in_several} AND r.{stenant} IS NOT NULL{castable_r}\n             \
             GROUP BY 1, 2) x\n     GROUP BY x.key)",
            tenant = tenant_of("r"),
            in_several = in_subquery(&via_ops, &format!("r.{via}"), &format!("SELECT e.key FROM ev_{i} e WHERE {lo_ne_hi}")),
        )
    });
    // Several tenants: a unanimous phase stops at a conflict and proposes nothing; a
    // majority phase takes the most frequent, ties to the lowest. (A parent is one row:
    // never several.)
    let top_of_several = match (source.direction, source.rule) {
        (Direction::Parent, _) | (_, Rule::Unanimous) => "NULL".to_string(),
        (Direction::Child, Rule::Majority) if several_cte.is_some() => "sv.top".to_string(),
        (Direction::Child, Rule::Majority) => {
            format!("(SELECT x.tenant FROM ({per_tenant}) x ORDER BY x.n DESC, x.tenant LIMIT 1)")
        }
    };
    let several_evidence = match source.direction {
        Direction::Child if several_cte.is_some() => {
            format!("(SELECT pg_catalog.to_json({label}::text)::text) || ':' || sv.counts")
        }
        Direction::Child => format!(
            "(SELECT pg_catalog.to_json({label}::text)::text) || ':' ||\n\
             \x20                  (SELECT pg_catalog.json_object_agg(x.tenant::text, x.n) FROM ({per_tenant}) x)::text"
        ),
        Direction::Parent => "NULL".to_string(),
    };
    // The source's member of the evidence object, as JSON text: `"calls": {"7": 3}`.
    // Text, not jsonb, until a consumer needs jsonb: the write path carries it into the
    // audit log as text and parses it once there.
    let evidence = match detail {
        Detail::Full => format!(
            "CASE WHEN e.n = 0 THEN NULL\n\
             \x20             WHEN {lo_eq_hi} THEN (SELECT pg_catalog.to_json({label}::text)::text) || ':{{' || {key} || ':' || e.n || '}}'\n\
             \x20             ELSE {several_evidence} END",
            key = json_string(tenant, "e.lo"),
        ),
        Detail::Counts => "NULL::text".to_string(),
    };
    let ev = match (source.direction, &source.parent_key) {
        (Direction::Parent, Some(parent_key)) => format!(
            // The target row's one parent (c: the target row, s: its parent). Grouped by
            // the target's key although each group is one row (both keys are unique): the
            // same shape as a child's, and the one Citus plans right (the ungrouped CASE
            // form came back as no evidence there when the target was distributed).
            "ev_{i} AS (\n    SELECT c.{key} AS key, pg_catalog.count(s.{stenant}) AS n,\n           \
             pg_catalog.count(*) - pg_catalog.count(s.{stenant}) AS n_null, {lo} AS lo, {hi} AS hi\n      \
             FROM {target_table} c JOIN {source_table} s ON s.{parent_key} {parent_eq} c.{via}\n     \
             WHERE {in_keys}{castable_s} GROUP BY 1)",
            key = target.key.sql_name(),
            parent_key = parent_key.sql_name(),
            parent_eq = parent_key.ops().eq,
            in_keys = keys.contain(source, target, &target.key.ops(), &format!("c.{}", target.key.sql_name())),
            target_table = target.rel.sql_name(),
        ),
        _ => format!(
            "ev_{i} AS (\n    SELECT s.{via} AS key, pg_catalog.count(s.{stenant}) AS n,\n           \
             pg_catalog.count(*) - pg_catalog.count(s.{stenant}) AS n_null, {lo} AS lo, {hi} AS hi\n      \
             FROM {source_table} s WHERE {in_keys}{castable_s} GROUP BY 1)",
            in_keys = keys.contain(source, target, &via_ops, &format!("s.{via}")),
        ),
    };
    let (several, several_join) = match several_cte {
        Some(cte) => (format!("\n, {cte}"), format!(" LEFT JOIN several_{i} sv ON sv.key {via_eq} e.key")),
        None => (String::new(), String::new()),
    };
    format!(
        "{ev}{several}\n\
         , cand_{i} AS (\n    SELECT e.key,\n           \
         CASE WHEN e.n = 0 THEN 0 WHEN {lo_eq_hi} THEN 1 ELSE 2 END AS ntenants,\n           \
         CASE WHEN e.n = 0 THEN NULL WHEN {lo_eq_hi} THEN e.lo ELSE {top_of_several} END AS top,\n           \
         {evidence} AS evidence,\n           \
         CASE WHEN e.n_null > 0 THEN pg_catalog.jsonb_build_object({label}::text, e.n_null) END AS unattributed\n      \
         FROM ev_{i} e{several_join})",
    )
}

/// `ov`: the override in force for each key in scope.
fn overrides_cte(st: &mut Statement, job: &Job) -> String {
    let overrides = override_union(job, st);
    format!(
        "ov AS (\n    SELECT DISTINCT ON (u.key_text) u.key_text, u.tenant_text::{tenant_type} AS tenant, u.origin\n      \
         FROM ({overrides}) u\n     WHERE u.key_text IN (SELECT {sc_key} FROM scope sc)\n     \
         ORDER BY u.key_text, u.priority)",
        tenant_type = job.target.tenant.type_sql,
        sc_key = key_text("sc.key"),
    )
}

/// `decided`: every candidate side by side; `idx` is the first phase with evidence.
fn decided_cte(n: usize, detail: Detail, key_eq: &str) -> String {
    let idx = if n == 0 {
        "NULL::pg_catalog.int4".to_string()
    } else {
        let whens: String = (1..=n).map(|i| format!(" WHEN cand_{i}.ntenants > 0 THEN {i}")).collect();
        format!("CASE{whens} END")
    };
    let per_source: String =
        (1..=n).map(|i| format!(", cand_{i}.ntenants AS n_{i}, cand_{i}.top AS top_{i}")).collect();
    let has_related = if n == 0 {
        "false".to_string()
    } else {
        (1..=n).map(|i| format!("cand_{i}.key IS NOT NULL")).collect::<Vec<_>>().join(" OR ")
    };
    // `{"calls": {...}, "phone_numbers": {...}}` (JSON text): the candidates' members.
    let evidence = match detail {
        Detail::Full if n > 0 => {
            let members: Vec<String> = (1..=n).map(|i| format!("cand_{i}.evidence")).collect();
            format!("'{{' || pg_catalog.concat_ws(',', {}) || '}}'", members.join(", "))
        }
        Detail::Full => "'{}'::text".to_string(),
        Detail::Counts => "NULL::text".to_string(),
    };
    // `{"calls": 2}`, per source, the related rows without a tenant (jsonb: rare).
    let unattributed = if n == 0 {
        "'{}'::pg_catalog.jsonb".to_string()
    } else {
        (1..=n)
            .map(|i| format!("COALESCE(cand_{i}.unattributed, '{{}}'::pg_catalog.jsonb)"))
            .collect::<Vec<_>>()
            .join(" || ")
    };
    let joins: String =
        (1..=n).map(|i| format!("\n      LEFT JOIN cand_{i} ON cand_{i}.key {key_eq} sc.key")).collect();
    format!(
        "decided AS (\n    SELECT sc.key, sc.current, ov.tenant AS override_tenant, ov.origin AS override_origin,\n           \
         {idx} AS idx{per_source}, ({has_related}) AS has_related,\n           \
         {evidence} AS evidence,\n           {unattributed} AS unattributed\n      \
         FROM scope sc{joins}\n      LEFT JOIN ov ON ov.key_text = {sc_key})",
        sc_key = key_text("sc.key"),
    )
}

/// The final SELECT: the cascade. An override decides, else the first phase with
/// evidence; a unanimous phase whose evidence names several tenants is a conflict and
/// stops the cascade.
///
/// It ends in `OFFSET 0` so that a consumer's filter on `action` (plan's `action IS NOT
/// NULL`, conflicts, review_queue) reads the computed column instead of being pushed
/// down into the merge of the scope with the evidence: pushed down, it evaluated the
/// cascade a second time and made the merge materialize its evidence side, a tenth of a
/// whole-table plan (BENCHMARKS.md). The ORDER BY keeps the key order visible to the
/// consumer, so nothing sorts again.
fn cascade(st: &mut Statement, job: &Job, labels: &[String]) -> String {
    let tenant_ne = job.target.tenant.ops().ne;
    let mut proposed = String::from("CASE WHEN d.override_tenant IS NOT NULL THEN d.override_tenant");
    let mut phase = String::from("CASE WHEN d.override_tenant IS NOT NULL THEN 0");
    let mut source = String::from("CASE WHEN d.override_tenant IS NOT NULL THEN d.override_origin");
    let mut rule = String::from("CASE WHEN d.override_tenant IS NOT NULL THEN 'override'");
    let mut conflicts = Vec::new();
    for (i, (s, label)) in job.sources.iter().zip(labels).enumerate() {
        let i = i + 1;
        let phase_param = st.param(Value::Int4(Some(s.phase)));
        let rule_param = st.param(Value::text(s.rule.as_str()));
        proposed.push_str(&format!(" WHEN d.idx = {i} THEN d.top_{i}"));
        phase.push_str(&format!(" WHEN d.idx = {i} THEN {phase_param}::pg_catalog.int4"));
        source.push_str(&format!(" WHEN d.idx = {i} THEN {label}::text"));
        rule.push_str(&format!(" WHEN d.idx = {i} THEN {rule_param}::text"));
        if s.rule == Rule::Unanimous {
            conflicts.push(format!("(d.idx = {i} AND d.n_{i} > 1)"));
        }
    }
    for expr in [&mut proposed, &mut phase, &mut source, &mut rule] {
        expr.push_str(" END");
    }
    let conflict = if conflicts.is_empty() {
        "false".to_string()
    } else {
        format!("(d.override_tenant IS NULL AND ({}))", conflicts.join(" OR "))
    };
    format!(
        "SELECT d.key, d.current,\n       \
         CASE WHEN x.conflict THEN NULL ELSE x.proposed END AS proposed,\n       \
         CASE WHEN x.conflict THEN 'conflict'\n            \
         WHEN x.proposed IS NOT NULL THEN\n                 \
         CASE WHEN d.current IS NULL THEN 'fill' WHEN d.current {tenant_ne} x.proposed THEN 'reassign' END\n            \
         WHEN d.current IS NOT NULL THEN NULL\n            \
         WHEN d.has_related THEN 'unresolved'\n            \
         ELSE 'orphan' END AS action,\n       \
         x.phase, x.source, x.rule, d.evidence, d.unattributed\n  \
         FROM decided d\n  \
         CROSS JOIN LATERAL (SELECT {proposed} AS proposed,\n                             \
         {conflict} AS conflict,\n                             \
         {phase} AS phase,\n                             \
         {source} AS source,\n                             \
         {rule} AS rule) x\n \
         ORDER BY d.key OFFSET 0"
    )
}

/// A key (`expr`, of any type) as the text overrides are matched with: as this session
/// prints it, compared byte for byte. Collated "C" on both sides of every match, because
/// the key text of a config table and the target's key carry their columns' collations:
/// two different ones (a key COLLATE "POSIX", a config table's COLLATE "C") cannot be
/// compared at all (42P22), and a nondeterministic one ('ABC' = 'abc') neither searched by
/// prefix (starts_with refuses it) nor matched only where the text is the same.
pub fn key_text(expr: &str) -> String {
    format!("({expr})::pg_catalog.text COLLATE pg_catalog.\"C\"")
}

/// Every override of the target as (key_text, tenant_text, priority, origin): the own
/// `overrides` table first, then each config table in the order it was added. Overrides
/// are matched with a row's key as this session prints it (`key_text`).
fn override_union(job: &Job, st: &mut Statement) -> String {
    let target = st.param(Value::Oid(job.target.rel.oid));
    let (own_key, own_valid) = override_key(st, &job.target.key, &key_text("o.row_key"));
    let mut parts = vec![format!(
        "SELECT {own_key} AS key_text, o.tenant AS tenant_text, 0 AS priority, 'overrides'::text AS origin \
         FROM tenant_backfill.overrides o WHERE o.target = {target}::pg_catalog.oid::pg_catalog.regclass{own_valid}"
    )];
    for (i, table) in job.override_tables.iter().enumerate() {
        let prefix = st.param(Value::text(table.prefix.clone()));
        let origin = st.param(Value::text(table.rel.name.clone()));
        let key = key_text(&format!("c.{}", table.key.sql_name()));
        let value = table.value.sql_name();
        let (config_key, valid) = override_key(
            st,
            &job.target.key,
            &format!("pg_catalog.substr({key}, pg_catalog.length({prefix}::text) + 1)"),
        );
        parts.push(format!(
            "SELECT {config_key}, c.{value}::text, {priority}, {origin}::text \
             FROM {config} c WHERE pg_catalog.starts_with({key}, {prefix}::text) AND c.{value} IS NOT NULL{valid}",
            priority = i + 1,
            config = table.rel.sql_name(),
        ));
    }
    parts.join("\n           UNION ALL ")
}

/// An override's key (`expr`, text) as this session prints the key's value, and a
/// condition (` AND ...`, or empty) that keeps out keys no value of the key's type
/// reads. The text as it is, except for a timestamptz key: its text carries the offset
/// of the TimeZone it was printed in, an override set under Europe/Paris names
/// `2024-01-01 11:00:00+01`, and a run under UTC prints the row as `2024-01-01
/// 10:00:00+00`. Such a key is read as a timestamptz and printed again here; the
/// condition keeps a config table's text that reads as none (the CASE, a qual the
/// planner may evaluate first, never casts it) out of the keys overrides decide.
fn override_key(st: &mut Statement, key: &Column, expr: &str) -> (String, String) {
    if !key.prints_in_session_time_zone() {
        return (expr.to_string(), String::new());
    }
    let valid = text_reads_as(st, expr, key);
    (format!("CASE WHEN {valid} THEN ({expr})::{}::pg_catalog.text END", key.type_sql), format!(" AND {valid}"))
}

/// The override in force for one key (already in canonical text form), as text.
pub fn override_query(job: &Job, key_text: &str) -> Statement {
    let mut st = Statement::new();
    let overrides = override_union(job, &mut st);
    let key = st.param(Value::text(key_text));
    st.sql = format!(
        "SELECT u.tenant_text::{tenant_type}::text\n  FROM ({overrides}) u\n WHERE u.key_text = {key}::text\n \
         ORDER BY u.priority LIMIT 1",
        tenant_type = job.target.tenant.type_sql,
    );
    st
}

/// The keys (as text) that an override decides, as a subquery: `SELECT key_text FROM (...)`.
pub fn overridden_keys(job: &Job, st: &mut Statement) -> String {
    format!("SELECT u.key_text FROM ({}) u", override_union(job, st))
}

/// `expr` (a value of the tenant's type) as a JSON string literal, as text. Numbers and
/// uuids print nothing JSON must escape and are quoted as they are; anything else goes
/// through to_json, which escapes.
fn json_string(tenant: &Column, expr: &str) -> String {
    if tenant.prints_json_safe {
        format!("'\"' || {expr}::text || '\"'")
    } else {
        format!("pg_catalog.to_json({expr}::text)::text")
    }
}

/// `left IN (sub)` with the operator of `ops`: `= ANY` spelled with it for a type of its
/// own operators (IN has no place for one); IN as before for pg_catalog's.
fn in_subquery(ops: &crate::catalog::Ops, left: &str, sub: &str) -> String {
    if ops.eq == "=" {
        format!("{left} IN ({sub})")
    } else {
        format!("{left} {} ANY ({sub})", ops.eq)
    }
}
