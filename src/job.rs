//! A target's configuration, read from the extension's tables and checked against the
//! catalog as it is now: every table and column re-resolved, the columns `define` named
//! still the same columns, the sources' types still fitting the target. Read afresh for
//! every call (and every batch of a run), so a change made meanwhile is seen, and an
//! impossible one is a clear error here rather than a failed query half way.

use crate::catalog::{castable, column, relation, require_select, types_comparable, Column, Relation};
use crate::error::{BackfillError, Result};
use crate::sql::{self, get, get_required, Value};
use pgrx::pg_sys;

/// The rule of a source: API.md's `unanimous` or `majority`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Unanimous,
    Majority,
}

impl Rule {
    pub fn parse(text: Option<&str>) -> Result<Rule> {
        match text {
            Some("unanimous") => Ok(Rule::Unanimous),
            Some("majority") => Ok(Rule::Majority),
            other => Err(BackfillError::BadArgument(
                format!("unknown rule \"{}\"", other.unwrap_or("NULL")),
                "A source's rule is 'unanimous' (every related row with a tenant agrees) or 'majority' (most related rows; ties go to the lowest tenant).".into(),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Unanimous => "unanimous",
            Rule::Majority => "majority",
        }
    }
}

/// Which way a source's rows relate to the target's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The source's rows point at the target row (`appointments.customer_id`): any number
    /// of them, each with a tenant, are the evidence.
    Child,
    /// The target row points at one source row (`customers.company_id` of the customer an
    /// appointment names): that row's tenant is the evidence.
    Parent,
}

impl Direction {
    pub fn parse(text: Option<&str>) -> Result<Direction> {
        match text {
            Some("child") => Ok(Direction::Child),
            Some("parent") => Ok(Direction::Parent),
            other => Err(BackfillError::BadArgument(
                format!("unknown direction \"{}\"", other.unwrap_or("NULL")),
                "tenant_backfill.sources holds a direction this release does not know: add the source again \
                 (add_source for a child, add_parent for a parent)."
                    .into(),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Child => "child",
            Direction::Parent => "parent",
        }
    }
}

/// A configured target table.
#[derive(Clone, Debug)]
pub struct Target {
    pub rel: Relation,
    pub key: Column,
    pub tenant: Column,
    pub soft_delete_column: String,
}

/// A configured source of evidence.
#[derive(Clone, Debug)]
pub struct Source {
    pub rel: Relation,
    /// A child's column that holds the target's key, or the target's column that holds a
    /// parent's key (`direction`).
    pub via: Column,
    pub direction: Direction,
    /// A parent's column that `via` holds: unique (its primary key, or what via's foreign
    /// key references), so a target row has at most one parent. None for a child.
    pub parent_key: Option<Column>,
    pub tenant: Column,
    pub phase: i32,
    pub rule: Rule,
    /// How the source is named in `plan.source` and in evidence: the table's name,
    /// made unique among the target's sources when two would read the same.
    pub label: String,
    /// Whether a batch's keys can be looked up in the column the source is read by (a
    /// child's via, the target's key for a parent) as one array (catalog::searchable_by_array).
    pub keys_by_array: bool,
}

/// A config table read live for overrides (the `"Configs"` adapter).
#[derive(Clone, Debug)]
pub struct OverrideTable {
    pub rel: Relation,
    pub key: Column,
    pub value: Column,
    pub prefix: String,
}

/// Everything configured for one target: what the decision engine is built from.
#[derive(Clone, Debug)]
pub struct Job {
    pub target: Target,
    /// In phase order.
    pub sources: Vec<Source>,
    /// In the order they were added, which is their precedence.
    pub override_tables: Vec<OverrideTable>,
    /// Whether the target or a source is a Citus table (distributed or reference): the
    /// decision query then takes a form Citus can plan (engine.rs).
    pub citus: bool,
    /// Whether the target itself is a Citus table: a batch then cannot skip rows other
    /// sessions hold (committed.rs).
    pub target_in_citus: bool,
}

/// Checks that a source's columns fit its target: `via` compares with the key (for a
/// parent: the target's `via` with the parent's key), and the tenant column casts to the
/// target's tenant type.
pub fn require_source_types(
    target: &Target,
    rel: &Relation,
    via: &Column,
    parent_key: Option<&Column>,
    tenant: &Column,
) -> Result<()> {
    // The two columns compared, each with its table: (via, the target's key) for a child,
    // (the target's via, the parent's key) for a parent.
    let ((left_rel, left), (right_rel, right)) = match parent_key {
        None => ((rel, via), (&target.rel, &target.key)),
        Some(key) => ((&target.rel, via), (rel, key)),
    };
    crate::catalog::require_comparable(left_rel, left, "column")?;
    crate::catalog::require_comparable(right_rel, right, "column")?;
    // A type's own operators (citext's) compare two values of that type; pg_catalog's
    // cross-type ones (int4 with int8) are found by name under the pinned path.
    let own_operators = !left.builtin_compare() || !right.builtin_compare();
    if (own_operators && left.type_oid != right.type_oid) || !types_comparable(left.type_oid, right.type_oid)? {
        return Err(BackfillError::TypeMismatch(
            format!(
                "column {} of {} is {} and cannot be compared with key {} of {} ({})",
                left.name, left_rel.display, left.type_display, right.name, right_rel.display, right.type_display
            ),
            match parent_key {
                None => "via must hold values of the target's key type (or one comparable with it).",
                Some(_) => "A parent's via is the target's column that holds the parent's key: of its type (or one comparable with it).",
            }
            .into(),
        ));
    }
    // The engine compares the two columns as they are: Postgres refuses (42P22) to compare
    // two columns of two different collations, neither the database's default, without a
    // COLLATE clause, and which of the two to compare in is the schema's choice.
    if let (Some(left_collation), Some(right_collation)) = (left.explicit_collation(), right.explicit_collation()) {
        if left_collation != right_collation {
            return Err(BackfillError::Unsupported(
                format!(
                    "column {} of {} (collation {left_collation}) cannot be compared with key {} of {} (collation {right_collation})",
                    left.name, left_rel.display, right.name, right_rel.display
                ),
                "Postgres compares two columns of two different collations, neither the database's default, \
                 only under a COLLATE clause, and tenant_backfill compares the two columns as they are."
                    .into(),
                "Give both columns the same collation, or one of them the database's default \
                 (ALTER TABLE ... ALTER COLUMN ... TYPE ... COLLATE ..., which rewrites the table)."
                    .into(),
            ));
        }
    }
    require_tenant_cast(
        target,
        rel,
        tenant,
        "tenant column",
        "A source's tenant column must hold the target's tenant type or one that casts to it.",
    )
}

/// Checks that a column holding tenants (`what`: a source's tenant column, a config
/// table's value column) casts to the target's tenant type; `todo` says what to do if not.
pub fn require_tenant_cast(target: &Target, rel: &Relation, column: &Column, what: &str, todo: &str) -> Result<()> {
    if castable(column.type_oid, target.tenant.type_oid)? {
        return Ok(());
    }
    Err(BackfillError::TypeMismatch(
        format!(
            "{what} {} of {} is {} and cannot be cast to {} ({} of {})",
            column.name,
            rel.display,
            column.type_display,
            target.tenant.type_display,
            target.tenant.name,
            target.rel.display
        ),
        todo.into(),
    ))
}

/// The configured target, with its key and tenant columns re-resolved: by name, and
/// checked against the numbers they had when defined.
pub fn target(oid: pg_sys::Oid) -> Result<Target> {
    let rel = relation(oid)?;
    // The three names, then the two numbers define recorded: NULL when the table is not
    // the one define saw (restored from a dump, or dropped and created again), whose
    // columns may be numbered differently.
    let rows = sql::select_rows(
        sql::fixed(
            "SELECT ARRAY[tenant_column::text, key_column::text, soft_delete_column::text],\n       \
         CASE WHEN target_oid = target::pg_catalog.oid THEN tenant_attnum END,\n       \
         CASE WHEN target_oid = target::pg_catalog.oid THEN key_attnum END\n  \
         FROM tenant_backfill.targets WHERE target = $1::pg_catalog.regclass",
        ),
        &[Value::Oid(oid)],
        |row| Ok((get_required::<Vec<String>>(row, 1)?, get::<i16>(row, 2)?, get::<i16>(row, 3)?)),
    )?;
    let Some((names, tenant_attnum, key_attnum)) = rows.into_iter().next() else {
        return Err(BackfillError::NotDefined(rel.display));
    };
    let [tenant, key, soft_delete_column]: [String; 3] = names
        .try_into()
        .map_err(|_| BackfillError::Internal("a target's row did not hold its three column names".into()))?;
    let tenant = defined_column(&rel, &tenant, tenant_attnum)?;
    let key = defined_column(&rel, &key, key_attnum)?;
    crate::catalog::require_comparable(&rel, &key, "key column")?;
    crate::catalog::require_comparable(&rel, &tenant, "tenant column")?;
    Ok(Target { key, tenant, rel, soft_delete_column })
}

/// A column the configuration names, which must still be the column it named: a rename
/// keeps a column's number, and another column may then be added under the old name;
/// using that one would guard or fill the wrong column. Without a number (`attnum`
/// None: the table is not the one define saw) the name is all there is.
fn defined_column(rel: &Relation, name: &str, attnum: Option<i16>) -> Result<Column> {
    let found = column(rel, name);
    let Some(attnum) = attnum else {
        return found;
    };
    if matches!(&found, Ok(col) if col.attnum == attnum) {
        return found;
    }
    let now_named = sql::select_value::<String>(
        "SELECT a.attname::text FROM pg_catalog.pg_attribute a\n \
         WHERE a.attrelid = $1 AND a.attnum = $2 AND NOT a.attisdropped",
        &[Value::Oid(rel.oid), Value::Int4(Some(attnum.into()))],
    )?;
    match (now_named, found) {
        (Some(new_name), found) => Err(BackfillError::WrongState(
            format!("column {name} of {} was renamed to {new_name} since it was defined", rel.display),
            match found {
                Ok(_) => format!("The column now named {name} is another column, added later."),
                Err(_) => format!("{} has no column {name} now.", rel.display),
            },
            format!("Call tenant_backfill.define again with the column's name now ({new_name}); sources and overrides stay."),
        )),
        // Dropped and added again under its name: the name is all that is left of it.
        (None, found) => found,
    }
}

/// The whole configuration of a target, every table and column re-resolved.
pub fn job(oid: pg_sys::Oid) -> Result<Job> {
    let target = target(oid)?;
    let source_rows = config_rows(
        "SELECT source::pg_catalog.oid, via::text, tenant_column::text, rule, phase, direction, source_key::text\n  \
         FROM tenant_backfill.sources WHERE target = $1::pg_catalog.regclass ORDER BY phase",
        oid,
    )?;
    let mut sources = Vec::with_capacity(source_rows.len());
    for (source_oid, [via, tenant, rule], phase, direction, source_key) in source_rows {
        let rel = relation(source_oid)?;
        let direction = Direction::parse(Some(&direction))?;
        // A parent's via is the target's column; a child's is its own.
        let via = match direction {
            Direction::Child => column(&rel, &via)?,
            Direction::Parent => column(&target.rel, &via)?,
        };
        let parent_key = source_key.map(|key| column(&rel, &key)).transpose()?;
        if let Some(key) = &parent_key {
            // One parent per target row is what makes its tenant the evidence.
            if !crate::catalog::is_unique(&rel, key)? {
                return Err(BackfillError::WrongState(
                    format!("column {} of parent source {} is no longer unique", key.name, rel.display),
                    "add_parent found it unique (a primary key, or what a foreign key references); its unique index is gone."
                        .into(),
                    "Create the unique index again, or remove the parent source and add it through another key.".into(),
                ));
            }
        }
        let tenant = column(&rel, &tenant)?;
        // Checked again at every use: a key or tenant type changed since add_source
        // would otherwise fail deep inside the decision query.
        require_source_types(&target, &rel, &via, parent_key.as_ref(), &tenant)?;
        let keys_by_array = match direction {
            Direction::Child => crate::catalog::searchable_by_array(&rel, &via, &target.key)?,
            Direction::Parent => crate::catalog::searchable_by_array(&target.rel, &target.key, &target.key)?,
        };
        sources.push(Source {
            via,
            direction,
            parent_key,
            tenant,
            phase,
            rule: Rule::parse(Some(&rule))?,
            label: rel.name.clone(),
            rel,
            keys_by_array,
        });
    }
    label_sources(&mut sources);

    let table_rows = config_rows(
        "SELECT config_table::pg_catalog.oid, key_column::text, value_column::text, key_prefix, position, \
                NULL::text, NULL::text\n  \
         FROM tenant_backfill.override_tables WHERE target = $1::pg_catalog.regclass ORDER BY position",
        oid,
    )?;
    let override_tables = table_rows
        .into_iter()
        .map(|(table_oid, [key, value, prefix], _position, _, _)| {
            let rel = relation(table_oid)?;
            Ok(OverrideTable { key: column(&rel, &key)?, value: column(&rel, &value)?, rel, prefix })
        })
        .collect::<Result<Vec<_>>>()?;
    let citus = crate::catalog::citus_tables(
        &std::iter::once(target.rel.oid).chain(sources.iter().map(|s| s.rel.oid)).collect::<Vec<_>>(),
    )?;
    let target_in_citus = citus && crate::catalog::citus_tables(&[target.rel.oid])?;
    Ok(Job { target, sources, override_tables, citus, target_in_citus })
}

/// The rows of a configuration table (sources, override tables) for one target, each a
/// table, three names or texts, its order (phase, position), and for a source its
/// direction and parent key.
type ConfigRow = (pg_sys::Oid, [String; 3], i32, String, Option<String>);

fn config_rows(query: &'static str, target: pg_sys::Oid) -> Result<Vec<ConfigRow>> {
    sql::select_rows(sql::fixed(query), &[Value::Oid(target)], |row| {
        let text = |i| get_required::<String>(row, i);
        Ok((
            get_required::<pg_sys::Oid>(row, 1)?,
            [text(2)?, text(3)?, text(4)?],
            get_required::<i32>(row, 5)?,
            get::<String>(row, 6)?.unwrap_or_default(),
            get::<String>(row, 7)?,
        ))
    })
}

/// Sources are labelled by table name; where two share a name (the same table through
/// two columns, or same-named tables in two schemas) the label grows until it is unique.
fn label_sources(sources: &mut [Source]) {
    relabel(sources, |s| format!("{}.{}", s.rel.name, s.via.name));
    relabel(sources, |s| format!("{}.{}.{}", s.rel.schema, s.rel.name, s.via.name));
}

/// Gives every source whose label is shared by another a longer label.
fn relabel(sources: &mut [Source], longer: impl Fn(&Source) -> String) {
    let shared: Vec<bool> = sources.iter().map(|s| sources.iter().filter(|o| o.label == s.label).count() > 1).collect();
    for (source, shared) in sources.iter_mut().zip(shared) {
        if shared {
            source.label = longer(source);
        }
    }
}

impl Job {
    /// Checks that the caller can read everything the decision query reads.
    pub fn require_read_access(&self) -> Result<()> {
        let t = &self.target;
        require_select(&t.rel, &[&t.key, &t.tenant])?;
        for s in &self.sources {
            match &s.parent_key {
                None => require_select(&s.rel, &[&s.via, &s.tenant])?,
                Some(key) => {
                    require_select(&t.rel, &[&s.via])?;
                    require_select(&s.rel, &[key, &s.tenant])?;
                }
            }
        }
        for o in &self.override_tables {
            require_select(&o.rel, &[&o.key, &o.value])?;
        }
        Ok(())
    }
}
