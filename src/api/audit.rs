//! The whole database, and Citus (API.md section 7). `audit` says, for every table the
//! caller may read, what it is to the tenant (root, tenant, derivable, reference, local),
//! how many of its rows break tenancy, and what stands between it and Citus, each
//! blocker with its fix; `distribution_plan` turns an audit without blockers into the
//! statements that move the schema onto a Citus coordinator.
//!
//! The catalog is read in three set-based statements (tables, foreign keys, unique keys)
//! and the roles are worked out here, over the graph of foreign keys. Counting rows
//! takes a statement per table and per foreign key checked, generated and quoted. Both
//! run with the caller's rights: only what the caller may read is listed and counted,
//! through its row-level security if it has some.

use crate::catalog::{self, Relation};
use crate::error::{required, BackfillError, OrRaise, Result};
use crate::sql::{self, get, get_required, Value};
use crate::types::{RegClass, SqlName};
use pgrx::pg_sys::Oid;
use pgrx::prelude::*;
use pgrx::spi::quote_literal;
use std::collections::{HashMap, VecDeque};

/// `rows` is an exact `count(*)` while Postgres estimates fewer rows than this
/// (`pg_class.reltuples`, summed over a partitioned table's leaves) or has no estimate
/// yet (-1: never vacuumed or analyzed), and the estimate from here on: an exact count
/// would read a big table whole only to print a number. `null_tenant` and
/// `cross_tenant` are always exact, since a blocker must not be a guess.
const EXACT_COUNT_BELOW: f64 = 100_000.0;

type AuditTuple = (RegClass, String, i64, Option<i64>, Option<i64>, String, Vec<String>);

/// Every table of the database the caller may read, with its role, its counts and what
/// blocks it from Citus.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn audit(
    tenant_column: Option<SqlName>,
    root: default!(Option<RegClass>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(table_name, RegClass),
        name!(role, String),
        name!(rows, i64),
        name!(null_tenant, Option<i64>),
        name!(cross_tenant, Option<i64>),
        name!(citus, String),
        name!(blockers, Vec<String>),
    ),
> {
    let rows = (|| {
        let model = Model::load(&tenant_column_of(tenant_column)?, root.map(|r| r.0))?;
        audit_rows(&model)
    })()
    .or_raise();
    TableIterator::new(rows.into_iter().map(AuditRow::into_tuple))
}

/// The statements that distribute the audited schema on a Citus coordinator, in order;
/// an error naming the blocked tables while any remain.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn distribution_plan(
    tenant_column: Option<SqlName>,
    root: default!(Option<RegClass>, "NULL"),
) -> TableIterator<'static, (name!(step, i32), name!(statement, String), name!(why, String))> {
    let steps = (|| {
        let model = Model::load(&tenant_column_of(tenant_column)?, root.map(|r| r.0))?;
        plan_steps(&model)
    })()
    .or_raise();
    TableIterator::new(steps)
}

fn tenant_column_of(tenant_column: Option<SqlName>) -> Result<String> {
    let column = required(tenant_column, "tenant_column")?.0;
    if column.is_empty() {
        return Err(BackfillError::BadArgument(
            "tenant_column is empty".into(),
            "Name the tenant column exactly as it is spelled, case included, without quotes: 'company_id'.".into(),
        ));
    }
    Ok(column)
}

// ------------------------------------------------------------------ the catalog, read once

/// What a table is to the tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The table of tenants itself: the tenant column points at its key.
    Root,
    /// Has the tenant column.
    Tenant,
    /// No tenant column, but foreign keys lead from it to the root or a tenant table.
    Derivable,
    /// No tenant column and no such path, but the root, a tenant or a reference table
    /// points at it.
    Reference,
    /// Unrelated to the tenant.
    Local,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Tenant => "tenant",
            Role::Derivable => "derivable",
            Role::Reference => "reference",
            Role::Local => "local",
        }
    }

    /// Citus distributes it by a column of its own.
    fn distributed(self) -> bool {
        matches!(self, Role::Root | Role::Tenant)
    }

    /// Citus converts it: distributed, or copied to every node.
    fn converted(self) -> bool {
        self.distributed() || self == Role::Reference
    }
}

#[derive(Clone, Debug)]
struct Type {
    oid: Oid,
    display: String,
}

/// A table as audit reports it: a partitioned table stands for its partitions.
struct Table {
    rel: Relation,
    partitioned: bool,
    /// The caller may read it: USAGE on its schema, SELECT on it or on one of its columns.
    readable: bool,
    /// The type of its column named exactly like the tenant column, if it has one.
    tenant: Option<Type>,
    /// `reltuples`, summed over the leaves of a partitioned table; None while unknown.
    estimate: Option<f64>,
    /// A tenant_backfill target with this tenant column (as far as the caller may see).
    configured: bool,
}

/// A foreign key, its ends folded to the tables audit reports.
struct ForeignKey {
    name: String,
    from: Oid,
    to: Oid,
    /// The tables it is declared on and references (a partition, for a foreign key
    /// declared on one only): where its SQL goes.
    on: Relation,
    on_partitioned: bool,
    references: Relation,
    references_partitioned: bool,
    columns: Vec<String>,
    ref_columns: Vec<String>,
    definition: String,
    /// pg_constraint's confupdtype and confdeltype: a (no action), r, c (cascade), n (set
    /// null), d (set default).
    on_update: String,
    on_delete: String,
}

#[derive(PartialEq)]
enum KeyKind {
    Primary,
    Unique,
    Exclude,
    Index,
}

/// A primary key, unique or exclusion constraint, or unique index of a table.
struct UniqueKey {
    table: Oid,
    kind: KeyKind,
    name: String,
    /// Its key columns by name; None for an expression.
    columns: Vec<Option<String>>,
    /// Its key columns as Postgres prints them (expressions included).
    shown: Vec<String>,
}

struct Root {
    oid: Oid,
    /// The root's column the tenant columns hold: its distribution column.
    key: String,
    key_type: Type,
}

/// The audited database: tables, foreign keys and keys, the root, and each table's role.
struct Model {
    tenant_column: String,
    /// The caller named the root (rather than audit finding it).
    root_given: bool,
    tables: Vec<Table>,
    index: HashMap<Oid, usize>,
    fks: Vec<ForeignKey>,
    keys: Vec<UniqueKey>,
    root: Option<Root>,
    roles: HashMap<Oid, Role>,
    /// For a derivable table, its first foreign key on the shortest path to the root or
    /// a tenant table (an index into `fks`).
    next_hop: HashMap<Oid, usize>,
}

/// Ordinary and partitioned tables, partitions left out (their parent stands for them),
/// as are system schemas, the extension's own, other extensions' tables and temporary
/// tables; in `table_name::text` order.
const TABLES: &str = "\
SELECT c.oid, n.nspname::text, c.relname::text, c.oid::pg_catalog.regclass::text, c.relkind = 'p',
       pg_catalog.has_schema_privilege(n.oid, 'USAGE')
         AND (pg_catalog.has_table_privilege(c.oid, 'SELECT')
              OR pg_catalog.has_any_column_privilege(c.oid, 'SELECT')),
       a.atttypid,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       CASE WHEN c.relkind = 'p'
            THEN (SELECT CASE WHEN pg_catalog.bool_and(l.reltuples < 0) THEN NULL
                              ELSE pg_catalog.sum(GREATEST(l.reltuples, 0)) END
                    FROM pg_catalog.pg_partition_tree(c.oid) pt
                    JOIN pg_catalog.pg_class l ON l.oid = pt.relid
                   WHERE pt.isleaf)
            WHEN c.reltuples >= 0 THEN c.reltuples
       END::pg_catalog.float8,
       EXISTS (SELECT 1 FROM tenant_backfill.targets tg
                WHERE tg.target = c.oid::pg_catalog.regclass
                  AND tg.tenant_column = $1::text::pg_catalog.name)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_attribute a
         ON a.attrelid = c.oid AND a.attname = $1::text::pg_catalog.name
        AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenant_backfill', 'tenant_backfill_internal')
   AND n.nspname NOT LIKE 'pg\\_toast%'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY c.oid::pg_catalog.regclass::text";

/// Every foreign key declared by a user (the copies Postgres makes on partitions have a
/// parent constraint and are left out), both ends folded to their partitioned table.
const FOREIGN_KEYS: &str = "\
SELECT con.conname::text,
       COALESCE(pg_catalog.pg_partition_root(con.conrelid), con.conrelid),
       COALESCE(pg_catalog.pg_partition_root(con.confrelid), con.confrelid),
       con.conrelid, fn.nspname::text, f.relname::text, con.conrelid::pg_catalog.regclass::text, f.relkind = 'p',
       con.confrelid, rn.nspname::text, r.relname::text, con.confrelid::pg_catalog.regclass::text, r.relkind = 'p',
       ARRAY(SELECT a.attname::text
               FROM pg_catalog.unnest(con.conkey) WITH ORDINALITY k(attnum, i)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
              ORDER BY k.i),
       ARRAY(SELECT a.attname::text
               FROM pg_catalog.unnest(con.confkey) WITH ORDINALITY k(attnum, i)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
              ORDER BY k.i),
       pg_catalog.pg_get_constraintdef(con.oid), con.confupdtype::text, con.confdeltype::text
  FROM pg_catalog.pg_constraint con
  JOIN pg_catalog.pg_class f ON f.oid = con.conrelid
  JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace
  JOIN pg_catalog.pg_class r ON r.oid = con.confrelid
  JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
 WHERE con.contype = 'f' AND con.conparentid = 0
 ORDER BY con.conrelid::pg_catalog.regclass::text, con.conname";

/// Primary keys, unique and exclusion constraints, and unique indexes that are no
/// constraint, folded to their partitioned table; an index a partition has because its
/// parent has one is the parent's.
const UNIQUE_KEYS: &str = "\
SELECT COALESCE(pg_catalog.pg_partition_root(i.indrelid), i.indrelid),
       COALESCE(con.contype::text, 'i'),
       COALESCE(con.conname, ic.relname)::text,
       ARRAY(SELECT a.attname::text
               FROM pg_catalog.unnest(i.indkey) WITH ORDINALITY k(attnum, n)
               LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE k.n <= i.indnkeyatts
              ORDER BY k.n),
       ARRAY(SELECT pg_catalog.pg_get_indexdef(i.indexrelid, k.n::pg_catalog.int4, true)
               FROM pg_catalog.generate_series(1, i.indnkeyatts) k(n)
              ORDER BY k.n)
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
  LEFT JOIN pg_catalog.pg_constraint con
         ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x')
 WHERE (i.indisunique OR con.contype = 'x')
   AND COALESCE(pg_catalog.pg_partition_root(i.indrelid), i.indrelid)::pg_catalog.int8 = ANY ($1::pg_catalog.int8[])
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = i.indexrelid)
 ORDER BY 1, CASE COALESCE(con.contype::text, 'i') WHEN 'p' THEN 1 WHEN 'u' THEN 2 WHEN 'x' THEN 3 ELSE 4 END, 3";

fn load_tables(tenant_column: &str) -> Result<Vec<Table>> {
    sql::select_rows(TABLES, &[Value::text(tenant_column)], |row| {
        let tenant = match get::<Oid>(row, 7)? {
            Some(oid) => Some(Type { oid, display: get_required(row, 8)? }),
            None => None,
        };
        Ok(Table {
            rel: Relation {
                oid: get_required(row, 1)?,
                schema: get_required(row, 2)?,
                name: get_required(row, 3)?,
                display: get_required(row, 4)?,
            },
            partitioned: get_required(row, 5)?,
            readable: get_required(row, 6)?,
            tenant,
            estimate: get(row, 9)?,
            configured: get_required(row, 10)?,
        })
    })
}

fn load_foreign_keys() -> Result<Vec<ForeignKey>> {
    sql::select_rows(FOREIGN_KEYS, &[], |row| {
        Ok(ForeignKey {
            name: get_required(row, 1)?,
            from: get_required(row, 2)?,
            to: get_required(row, 3)?,
            on: Relation {
                oid: get_required(row, 4)?,
                schema: get_required(row, 5)?,
                name: get_required(row, 6)?,
                display: get_required(row, 7)?,
            },
            on_partitioned: get_required(row, 8)?,
            references: Relation {
                oid: get_required(row, 9)?,
                schema: get_required(row, 10)?,
                name: get_required(row, 11)?,
                display: get_required(row, 12)?,
            },
            references_partitioned: get_required(row, 13)?,
            columns: get_required(row, 14)?,
            ref_columns: get_required(row, 15)?,
            definition: get_required(row, 16)?,
            on_update: get_required(row, 17)?,
            on_delete: get_required(row, 18)?,
        })
    })
}

/// The unique keys of the given tables, and of their partitions (a unique index made on
/// one partition alone blocks the whole table).
fn load_unique_keys(tables: &[Oid]) -> Result<Vec<UniqueKey>> {
    let oids: Vec<Option<i64>> = tables.iter().map(|oid| Some(i64::from(u32::from(*oid)))).collect();
    sql::select_rows(UNIQUE_KEYS, &[Value::Int8Array(oids)], |row| {
        let kind = match get_required::<String>(row, 2)?.as_str() {
            "p" => KeyKind::Primary,
            "u" => KeyKind::Unique,
            "x" => KeyKind::Exclude,
            _ => KeyKind::Index,
        };
        Ok(UniqueKey {
            table: get_required(row, 1)?,
            kind,
            name: get_required(row, 3)?,
            columns: get_required(row, 4)?,
            shown: get_required(row, 5)?,
        })
    })
}

// ------------------------------------------------------------------ roles

impl Model {
    fn load(tenant_column: &str, given_root: Option<Oid>) -> Result<Model> {
        let tables = load_tables(tenant_column)?;
        let index: HashMap<Oid, usize> = tables.iter().enumerate().map(|(i, t)| (t.rel.oid, i)).collect();
        // Only foreign keys between audited tables tie tables together here.
        let fks: Vec<ForeignKey> = load_foreign_keys()?
            .into_iter()
            .filter(|fk| index.contains_key(&fk.from) && index.contains_key(&fk.to))
            .collect();
        let root = match given_root {
            Some(oid) => Some(root_given(oid, &index, &fks, tenant_column)?),
            None => root_detected(&tables, &fks, tenant_column)?,
        };
        let mut model = Model {
            tenant_column: tenant_column.to_string(),
            root_given: given_root.is_some(),
            tables,
            index,
            fks,
            keys: Vec::new(),
            root,
            roles: HashMap::new(),
            next_hop: HashMap::new(),
        };
        model.assign_roles();
        let oids: Vec<Oid> = model.tables.iter().map(|t| t.rel.oid).collect();
        model.keys = load_unique_keys(&oids)?;
        Ok(model)
    }

    fn table(&self, oid: Oid) -> Option<&Table> {
        self.index.get(&oid).map(|i| &self.tables[*i])
    }

    fn role(&self, oid: Oid) -> Role {
        self.roles.get(&oid).copied().unwrap_or(Role::Local)
    }

    /// How a reported table is named in messages and generated SQL.
    fn display(&self, oid: Oid) -> String {
        self.table(oid).map(|t| t.rel.display.clone()).unwrap_or_else(|| format!("table {}", u32::from(oid)))
    }

    fn sql_name(&self, oid: Oid) -> String {
        self.table(oid).map(|t| t.rel.sql_name()).unwrap_or_default()
    }

    /// The table's single-column primary key: the key `tenant_backfill.define` takes by
    /// itself, so a backfill can be suggested as calls that work.
    fn single_key(&self, oid: Oid) -> Option<&str> {
        self.keys
            .iter()
            .find(|k| k.table == oid && k.kind == KeyKind::Primary && k.columns.len() == 1)
            .and_then(|k| k.columns[0].as_deref())
    }

    /// The column Citus distributes a table by: the root's key, a tenant table's tenant column.
    fn dist_column(&self, oid: Oid) -> Option<&str> {
        match self.role(oid) {
            Role::Root => self.root.as_ref().map(|r| r.key.as_str()),
            Role::Tenant => Some(self.tenant_column.as_str()),
            _ => None,
        }
    }

    /// Root and tenant tables first; then, breadth first against the foreign keys, every
    /// table from which they can be reached (derivable, each with its shortest path);
    /// then, along the foreign keys, what the root, tenant and reference tables point at
    /// (reference: a lookup table of a reference table must be one too).
    fn assign_roles(&mut self) {
        let root = self.root.as_ref().map(|r| r.oid);
        for t in &self.tables {
            let role = if Some(t.rel.oid) == root {
                Role::Root
            } else if t.tenant.is_some() {
                Role::Tenant
            } else {
                Role::Local
            };
            self.roles.insert(t.rel.oid, role);
        }
        let targets: Vec<Oid> =
            self.tables.iter().map(|t| t.rel.oid).filter(|oid| self.role(*oid).distributed()).collect();

        let mut queue: VecDeque<Oid> = targets.iter().copied().collect();
        while let Some(to) = queue.pop_front() {
            for (i, fk) in self.fks.iter().enumerate() {
                if fk.to == to && self.role(fk.from) == Role::Local {
                    self.roles.insert(fk.from, Role::Derivable);
                    self.next_hop.insert(fk.from, i);
                    queue.push_back(fk.from);
                }
            }
        }

        let mut queue: VecDeque<Oid> = targets.into_iter().collect();
        while let Some(from) = queue.pop_front() {
            for fk in &self.fks {
                if fk.from == from && self.role(fk.to) == Role::Local {
                    self.roles.insert(fk.to, Role::Reference);
                    queue.push_back(fk.to);
                }
            }
        }
    }
}

/// The foreign keys that say which table is the root: single-column ones on a column
/// named exactly like the tenant column, pointing at another table.
fn tenant_fks<'a>(fks: &'a [ForeignKey], column: &'a str) -> impl Iterator<Item = &'a ForeignKey> + 'a {
    fks.iter().filter(move |fk| fk.columns.len() == 1 && fk.columns[0] == column && fk.from != fk.to)
}

/// The table most tenant foreign keys point at (the first by name on a tie), or none.
fn root_detected(tables: &[Table], fks: &[ForeignKey], column: &str) -> Result<Option<Root>> {
    let mut best: Option<(&Table, usize)> = None;
    for t in tables {
        let n = tenant_fks(fks, column).filter(|fk| fk.to == t.rel.oid).count();
        if n > 0 && best.is_none_or(|(_, most)| n > most) {
            best = Some((t, n));
        }
    }
    match best {
        Some((t, _)) => Ok(Some(root_of(&t.rel, fks, column)?)),
        None => Ok(None),
    }
}

/// The root the caller named: a table audit reports, with a key the tenant column can hold.
fn root_given(oid: Oid, index: &HashMap<Oid, usize>, fks: &[ForeignKey], column: &str) -> Result<Root> {
    let rel = catalog::relation(oid)?;
    if !index.contains_key(&oid) {
        let (partition_of, temporary) = sql::select_one_row(
            "SELECT CASE WHEN c.relispartition\n            \
                         THEN pg_catalog.pg_partition_root(c.oid)::pg_catalog.regclass::text END,\n       \
                    c.relpersistence = 't'\n  \
               FROM pg_catalog.pg_class c\n \
              WHERE c.oid = $1",
            &[Value::Oid(oid)],
            "the root's kind",
            |row| Ok((get::<String>(row, 1)?, get_required::<bool>(row, 2)?)),
        )?;
        let (why, hint) = match (partition_of, temporary) {
            (Some(parent), _) => (
                format!("it is a partition of {parent}"),
                format!("Pass the partitioned table, {parent}: audit reports partitions as their parent."),
            ),
            (None, true) => ("it is a temporary table".to_string(), "Pass a permanent table.".to_string()),
            (None, false) => (
                "it belongs to an extension".to_string(),
                "Pass one of your own tables: audit leaves extensions' tables out.".to_string(),
            ),
        };
        return Err(BackfillError::BadArgument(format!("{} cannot be the root: {why}", rel.display), hint));
    }
    root_of(&rel, fks, column)
}

/// The root's key: the column most tenant foreign keys reference, else its single-column
/// primary key.
fn root_of(rel: &Relation, fks: &[ForeignKey], column: &str) -> Result<Root> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for fk in tenant_fks(fks, column).filter(|fk| fk.to == rel.oid) {
        let referenced = fk.ref_columns.first().map(String::as_str).unwrap_or_default();
        match counts.iter_mut().find(|c| c.0 == referenced) {
            Some(c) => c.1 += 1,
            None => counts.push((referenced, 1)),
        }
    }
    let mut key: Option<&str> = None;
    let mut most = 0;
    for &(name, n) in &counts {
        if n > most {
            (key, most) = (Some(name), n);
        }
    }
    let key = match key {
        Some(name) => catalog::column(rel, name)?,
        None => catalog::primary_key_column(rel).map_err(|_| {
            BackfillError::BadArgument(
                format!("{} has no key for {column} to hold", rel.display),
                format!(
                    "The root's key is the column the {column} foreign keys reference, else its single-column \
                     primary key: give {} one, or pass as root the table {column} points at.",
                    rel.display
                ),
            )
        })?,
    };
    Ok(Root { oid: rel.oid, key_type: Type { oid: key.type_oid, display: key.type_display }, key: key.name })
}

// ------------------------------------------------------------------ audit

struct AuditRow {
    table: Oid,
    display: String,
    role: Role,
    rows: i64,
    null_tenant: Option<i64>,
    cross_tenant: Option<i64>,
    blockers: Vec<String>,
}

impl AuditRow {
    fn citus(&self) -> &'static str {
        match self.role {
            _ if !self.blockers.is_empty() => "blocked",
            Role::Root | Role::Tenant => "distribute",
            Role::Reference => "reference",
            Role::Local => "local",
            Role::Derivable => "blocked",
        }
    }

    fn into_tuple(self) -> AuditTuple {
        let citus = self.citus().to_string();
        (
            RegClass(self.table),
            self.role.as_str().to_string(),
            self.rows,
            self.null_tenant,
            self.cross_tenant,
            citus,
            self.blockers,
        )
    }
}

/// One row per table the caller may read, in `table_name::text` order.
fn audit_rows(model: &Model) -> Result<Vec<AuditRow>> {
    model.tables.iter().filter(|t| t.readable).map(|t| audit_table(model, t)).collect()
}

fn audit_table(model: &Model, t: &Table) -> Result<AuditRow> {
    let role = model.role(t.rel.oid);
    let mut row = AuditRow {
        table: t.rel.oid,
        display: t.rel.display.clone(),
        role,
        rows: row_count(t)?,
        null_tenant: None,
        cross_tenant: None,
        blockers: Vec::new(),
    };
    if role.converted() {
        row.blockers.extend(trigger_blockers(t)?);
    }
    match role {
        Role::Root => {
            row.blockers.extend(key_blockers(model, t));
            row.blockers.extend(pairing_blockers(model, t));
            row.blockers.extend(local_blockers(model, t));
        }
        Role::Tenant => {
            row.blockers.extend(root_blockers(model, t));
            let (nulls, blocker) = null_tenant(model, t)?;
            row.null_tenant = nulls;
            row.blockers.extend(blocker);
            row.blockers.extend(key_blockers(model, t));
            row.blockers.extend(pairing_blockers(model, t));
            let (cross, blockers) = cross_tenant(model, t)?;
            row.cross_tenant = cross;
            row.blockers.extend(blockers);
            row.blockers.extend(local_blockers(model, t));
        }
        Role::Reference => row.blockers.extend(local_blockers(model, t)),
        Role::Derivable => row.blockers.push(derivable_blocker(model, t)),
        Role::Local => {}
    }
    Ok(row)
}

/// The table's own triggers: Citus converts no table that has one while
/// citus.enable_unsafe_triggers is off (and the guard never fires on shards).
fn trigger_blockers(t: &Table) -> Result<Vec<String>> {
    let names = sql::select_rows(
        "SELECT t.tgname::text FROM pg_catalog.pg_trigger t WHERE t.tgrelid = $1 AND NOT t.tgisinternal ORDER BY 1",
        &[Value::Oid(t.rel.oid)],
        |row| get_required::<String>(row, 1),
    )?;
    Ok(names
        .into_iter()
        .map(|name| {
            let fix = if name.starts_with(crate::guard::TRIGGER_NAME) {
                format!("tenant_backfill.unenforce('{}') once its tenants are right, then finalize", t.rel.display)
            } else {
                "drop it, or set citus.enable_unsafe_triggers if it may run on every shard".to_string()
            };
            format!("trigger {}: Citus does not convert a table with triggers: {fix}", sql::ident(&name))
        })
        .collect())
}

/// `FROM` a table alone: a legacy inheritance parent without its children (they are
/// reported on their own), a partitioned table with its partitions.
fn from_clause(rel: &Relation, partitioned: bool) -> String {
    if partitioned {
        rel.sql_name()
    } else {
        format!("ONLY {}", rel.sql_name())
    }
}

fn count(statement: &str) -> Result<i64> {
    sql::select_value::<i64>(statement, &[])?.ok_or_else(|| BackfillError::Internal("count(*) returned no row".into()))
}

/// The table's rows: exact below EXACT_COUNT_BELOW (or without an estimate), else the estimate.
fn row_count(t: &Table) -> Result<i64> {
    match t.estimate {
        Some(estimate) if estimate >= EXACT_COUNT_BELOW => Ok(estimate.round() as i64),
        _ => count(&format!("SELECT pg_catalog.count(*)\n  FROM {}", from_clause(&t.rel, t.partitioned))),
    }
}

/// Whether the caller may read these columns of a table (and use its schema).
fn may_read(rel: &Relation, columns: &[&str]) -> Result<bool> {
    let names = columns.iter().map(|c| Some(c.to_string())).collect();
    Ok(sql::select_value::<bool>(
        "SELECT pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')\n       \
                AND pg_catalog.bool_and(pg_catalog.has_column_privilege(c.oid, col, 'SELECT'))\n  \
           FROM pg_catalog.pg_class c, pg_catalog.unnest($2::pg_catalog.text[]) col\n \
          WHERE c.oid = $1\n \
          GROUP BY c.oid, c.relnamespace",
        &[Value::Oid(rel.oid), Value::TextArray(names)],
    )?
    .unwrap_or(false))
}

fn cannot_read(rel: &Relation, columns: &[&str], what: &str) -> String {
    format!(
        "role {} cannot read {} of {}, so {what}: audit as a role that may read them",
        sql::current_role(),
        idents(columns),
        rel.display
    )
}

/// The quoted names, comma-separated: `org_id, "Id"`.
fn idents<S: AsRef<str>>(names: &[S]) -> String {
    names.iter().map(|n| sql::ident(n.as_ref())).collect::<Vec<_>>().join(", ")
}

/// "1 row has" / "3 rows have".
fn rows_have(n: i64) -> String {
    if n == 1 {
        "1 row has".into()
    } else {
        format!("{n} rows have")
    }
}

/// A tenant table needs a root to be colocated with, of the same type.
fn root_blockers(model: &Model, t: &Table) -> Vec<String> {
    let column = &model.tenant_column;
    let Some(root) = &model.root else {
        return vec![format!(
            "no root table: no single-column foreign key on {col} points at a table of tenants: pass root => the \
             tenants table, or add FOREIGN KEY ({col}) REFERENCES it",
            col = sql::ident(column)
        )];
    };
    match &t.tenant {
        Some(tenant) if tenant.oid != root.key_type.oid => vec![format!(
            "{col} is {}, but the root's key {}.{} is {}: Citus colocates only columns of one type: ALTER TABLE {} \
             ALTER COLUMN {col} TYPE {}",
            tenant.display,
            model.display(root.oid),
            sql::ident(&root.key),
            root.key_type.display,
            t.rel.display,
            root.key_type.display,
            col = sql::ident(column),
        )],
        _ => Vec::new(),
    }
}

/// Rows without a tenant cannot be placed on any node.
fn null_tenant(model: &Model, t: &Table) -> Result<(Option<i64>, Option<String>)> {
    let column = model.tenant_column.as_str();
    if !may_read(&t.rel, &[column])? {
        return Ok((None, Some(cannot_read(&t.rel, &[column], "its NULL rows went uncounted"))));
    }
    let n = count(&format!(
        "SELECT pg_catalog.count(*)\n  FROM {} t\n WHERE t.{} IS NULL",
        from_clause(&t.rel, t.partitioned),
        sql::ident(column)
    ))?;
    if n == 0 {
        return Ok((Some(0), None));
    }
    let them = if n == 1 { "it" } else { "them" };
    Ok((
        Some(n),
        Some(format!("{} a NULL {}: backfill {them}: {}", rows_have(n), sql::ident(column), how_to_backfill(model, t))),
    ))
}

/// The tenant_backfill calls that would fill a tenant table's NULL rows.
fn how_to_backfill(model: &Model, t: &Table) -> String {
    let table = quote_literal(&t.rel.display);
    let column = model.tenant_column.as_str();
    if t.configured {
        return format!(
            "{} is a configured target (tenant_backfill.targets): CALL tenant_backfill.run({table}), then decide what \
             is left (review_queue)",
            t.rel.display
        );
    }
    let mut sources = Vec::new();
    // Parents: tenant tables this one points at through one column.
    for fk in model.fks.iter().filter(|fk| fk.from == t.rel.oid && fk.to != t.rel.oid) {
        if fk.columns.len() == 1 && fk.columns[0] != column && model.role(fk.to) == Role::Tenant {
            sources.push(format!(
                "add_parent({table}, {}, {})",
                quote_literal(model.display(fk.to)),
                quote_literal(&fk.columns[0])
            ));
        }
    }
    // Children: tenant tables that point at this one through one column, at the key
    // define takes (a child's via is matched with the target's key).
    let key = model.single_key(t.rel.oid);
    for fk in model.fks.iter().filter(|fk| fk.to == t.rel.oid && fk.from != t.rel.oid) {
        let at_key = key.is_some_and(|k| fk.ref_columns.len() == 1 && fk.ref_columns[0] == k);
        if fk.columns.len() == 1 && fk.columns[0] != column && at_key && model.role(fk.from) == Role::Tenant {
            sources.push(format!(
                "add_source({table}, {}, {})",
                quote_literal(model.display(fk.from)),
                quote_literal(&fk.columns[0])
            ));
        }
    }
    if model.single_key(t.rel.oid).is_none() {
        return format!(
            "by hand: {} has no single-column primary key for tenant_backfill.define to take as its key",
            t.rel.display
        );
    }
    if sources.is_empty() {
        return format!(
            "by hand, or with tenant_backfill.define({table}, {}) and set_override for each row: no foreign key links \
             {} to another tenant table to take it from",
            quote_literal(column),
            t.rel.display
        );
    }
    format!(
        "tenant_backfill.define({table}, {}), {}, then run_now or CALL run",
        quote_literal(column),
        sources.join(", ")
    )
}

/// Citus enforces a primary key, unique or exclusion constraint, or unique index of a
/// distributed table on each node alone, so each must include the distribution column.
fn key_blockers(model: &Model, t: &Table) -> Vec<String> {
    let Some(dist) = model.dist_column(t.rel.oid) else {
        return Vec::new();
    };
    let d = sql::ident(dist);
    model
        .keys
        .iter()
        .filter(|k| k.table == t.rel.oid && !k.columns.iter().any(|c| c.as_deref() == Some(dist)))
        .map(|k| {
            let (name, shown) = (sql::ident(&k.name), k.shown.join(", "));
            match k.kind {
                KeyKind::Primary => format!("PRIMARY KEY {name} ({shown}) lacks {d}: make it ({d}, {shown})"),
                KeyKind::Unique => format!("UNIQUE constraint {name} ({shown}) lacks {d}: make it ({d}, {shown})"),
                KeyKind::Exclude => format!("EXCLUDE constraint {name} ({shown}) lacks {d}: add {d} WITH ="),
                KeyKind::Index => format!(
                    "unique index {name} ({shown}) lacks {d}: an index, not a constraint, but it blocks the same: \
                     recreate it on ({d}, {shown})"
                ),
            }
        })
        .collect()
}

/// A foreign key between distributed tables must join row to row on the node both live
/// on: it must pair the distribution column of one with that of the other.
fn pairing_blockers(model: &Model, t: &Table) -> Vec<String> {
    let Some(from_dist) = model.dist_column(t.rel.oid) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for fk in model.fks.iter().filter(|fk| fk.from == t.rel.oid) {
        let Some(to_dist) = model.dist_column(fk.to) else {
            continue;
        };
        let paired = fk.columns.iter().zip(&fk.ref_columns).any(|(c, r)| c == from_dist && r == to_dist);
        let (name, to) = (sql::ident(&fk.name), model.display(fk.to));
        // Citus refuses these actions on a foreign key between distributed tables.
        if fk.on_update == "c" {
            out.push(format!(
                "foreign key {name} -> {to} is ON UPDATE CASCADE, which Citus does not support between distributed \
                 tables: make it ON UPDATE NO ACTION (or RESTRICT)"
            ));
        }
        if (fk.on_delete == "n" || fk.on_delete == "d") && fk.columns.iter().any(|c| c == from_dist) {
            out.push(format!(
                "foreign key {name} -> {to} is ON DELETE SET {}, which Citus refuses on the distribution column: make \
                 it ON DELETE NO ACTION, CASCADE or RESTRICT",
                if fk.on_delete == "n" { "NULL" } else { "DEFAULT" }
            ));
        }
        if paired {
            continue;
        }
        let (cols, refs) = (idents(&fk.columns), idents(&fk.ref_columns));
        let (fd, td) = (sql::ident(from_dist), sql::ident(to_dist));
        out.push(if model.role(fk.to) == Role::Root {
            let fix = if model.role(fk.from) == Role::Root {
                "drop it".to_string()
            } else {
                format!("make it ({fd}) -> {to} ({td}), or drop it")
            };
            format!(
                "foreign key {name} ({cols}) -> {to} does not go from {fd} to {td}: Citus keeps a foreign key to the \
                 root only on the distribution column: {fix}"
            )
        } else if fk.columns.iter().any(|c| c == from_dist) {
            format!(
                "foreign key {name} ({cols}) -> {to} ({refs}) pairs {fd} with another column than {td}: make {fd} \
                 reference {to} ({td})"
            )
        } else {
            format!("foreign key {name} ({cols}) -> {to} lacks {fd}: make it ({fd}, {cols}) -> {to} ({td}, {refs})")
        });
    }
    out
}

/// Rows of a tenant table that point, through a foreign key without the tenant column,
/// at a row of the root or of a tenant table (itself included) of another tenant: both
/// tenants set and different. A row is counted once per such foreign key.
fn cross_tenant(model: &Model, t: &Table) -> Result<(Option<i64>, Vec<String>)> {
    let column = model.tenant_column.as_str();
    let mut total = Some(0);
    let mut blockers = Vec::new();
    for fk in model.fks.iter().filter(|fk| fk.from == t.rel.oid && !fk.columns.iter().any(|c| c == column)) {
        let Some(parent_tenant) = model.dist_column(fk.to) else {
            continue;
        };
        // Tenants of types that do not compare (a root keyed by text): the type blocker
        // says so, and there is nothing to count.
        if !comparable_tenants(model, t, fk.to)? {
            total = None;
            continue;
        }
        let mut own: Vec<&str> = fk.columns.iter().map(String::as_str).collect();
        own.push(column);
        let mut theirs: Vec<&str> = fk.ref_columns.iter().map(String::as_str).collect();
        theirs.push(parent_tenant);
        if !may_read(&fk.on, &own)? {
            total = None;
            blockers.push(cannot_read(&fk.on, &own, &format!("the rows of {} were not checked", sql::ident(&fk.name))));
            continue;
        }
        if !may_read(&fk.references, &theirs)? {
            total = None;
            blockers.push(cannot_read(
                &fk.references,
                &theirs,
                &format!("the rows of {} were not checked", sql::ident(&fk.name)),
            ));
            continue;
        }
        let n = count(&cross_tenant_count(fk, column, parent_tenant))?;
        total = total.map(|sum| sum + n);
        if n > 0 {
            blockers.push(cross_tenant_blocker(model, t, fk, n));
        }
    }
    Ok((total, blockers))
}

/// Whether a table's tenant compares with `=` to the tenant of a table it references.
fn comparable_tenants(model: &Model, t: &Table, to: Oid) -> Result<bool> {
    let theirs = match (model.role(to), &model.root) {
        (Role::Root, Some(root)) => Some(root.key_type.oid),
        _ => model.table(to).and_then(|p| p.tenant.as_ref()).map(|p| p.oid),
    };
    match (&t.tenant, theirs) {
        (Some(ours), Some(theirs)) => catalog::types_comparable(ours.oid, theirs),
        _ => Ok(false),
    }
}

fn cross_tenant_count(fk: &ForeignKey, column: &str, parent_tenant: &str) -> String {
    let join: Vec<String> = fk
        .columns
        .iter()
        .zip(&fk.ref_columns)
        .map(|(c, r)| format!("p.{} = t.{}", sql::ident(r), sql::ident(c)))
        .collect();
    format!(
        "SELECT pg_catalog.count(*)\n  \
           FROM {} t\n  \
           JOIN {} p ON {}\n \
          WHERE t.{} <> p.{}",
        from_clause(&fk.on, fk.on_partitioned),
        from_clause(&fk.references, fk.references_partitioned),
        join.join(" AND "),
        sql::ident(column),
        sql::ident(parent_tenant)
    )
}

fn cross_tenant_blocker(model: &Model, t: &Table, fk: &ForeignKey, n: i64) -> String {
    let (name, to, cols) = (sql::ident(&fk.name), model.display(fk.to), idents(&fk.columns));
    let column = sql::ident(&model.tenant_column);
    let reference = if n == 1 { "1 row references".to_string() } else { format!("{n} rows reference") };
    let (them, lists) = if n == 1 { ("it", "lists it") } else { ("them", "lists them") };
    let how = if model.role(fk.to) == Role::Tenant && fk.columns.len() == 1 && model.single_key(t.rel.oid).is_some() {
        let table = quote_literal(&t.rel.display);
        format!(
            "with tenant_backfill.define({table}, {}) and add_parent({table}, {}, {}), \
             plan({table}, 'reassign') {lists} and a run in mode reassign corrects {column}; or correct {cols}",
            quote_literal(&model.tenant_column),
            quote_literal(&to),
            quote_literal(&fk.columns[0])
        )
    } else {
        format!("correct {column} or {cols}")
    };
    format!("{reference} a row of another tenant through {name} ({cols}) -> {to}: decide {them}: {how}")
}

/// A foreign key from a table that stays local into one Citus converts. By the roles
/// only a reference table can have one (a local table pointing at the root or a tenant
/// table is derivable, and whatever those point at is a reference table). Citus would
/// keep it only by taking the local table into its metadata as a Citus local table
/// (`citus.enable_local_reference_table_foreign_keys`), which the plan does not do.
fn local_blockers(model: &Model, t: &Table) -> Vec<String> {
    let column = sql::ident(&model.tenant_column);
    model
        .fks
        .iter()
        .filter(|fk| fk.to == t.rel.oid && model.role(fk.from) == Role::Local)
        .map(|fk| {
            let local = model.display(fk.from);
            format!(
                "foreign key {} ({}) of {local}, a table that stays local, references it ({}): Citus would have to \
                 turn {local} into a Citus local table to keep it: drop it, or give {local} a column {column} so it \
                 moves too",
                sql::ident(&fk.name),
                idents(&fk.columns),
                idents(&fk.ref_columns)
            )
        })
        .collect()
}

/// A table without the tenant column that foreign keys tie to the tenant: where its
/// tenant would come from.
fn derivable_blocker(model: &Model, t: &Table) -> String {
    let column = sql::ident(&model.tenant_column);
    // Each hop leads to a table the search reached earlier, so the path ends, at the
    // root or a tenant table.
    let mut path = Vec::new();
    let mut at = t.rel.oid;
    while let Some(fk) = model.next_hop.get(&at).map(|i| &model.fks[*i]) {
        path.push(fk);
        at = fk.to;
    }
    let Some(first) = path.first() else {
        return format!("no {column} column: add it and backfill it");
    };
    let (to, via) = (model.display(first.to), idents(&first.columns));
    let how = match model.role(first.to) {
        Role::Root if first.columns.len() == 1 => {
            format!(" ({to} is the root: {column} is {via} itself, UPDATE {} SET {column} = {via})", t.rel.display)
        }
        Role::Tenant if first.columns.len() == 1 && model.single_key(t.rel.oid).is_some() => format!(
            " (tenant_backfill.define({table}, {}) and add_parent({table}, {}, {}))",
            quote_literal(&model.tenant_column),
            quote_literal(&to),
            quote_literal(&first.columns[0]),
            table = quote_literal(&t.rel.display)
        ),
        Role::Derivable => {
            let hops: Vec<String> =
                path.iter().map(|fk| format!("{} -> {}", idents(&fk.columns), model.display(fk.to))).collect();
            format!(", once {to} has one (the path: {})", hops.join(", "))
        }
        _ => String::new(),
    };
    format!("no {column} column: add it and backfill it from {to} through {via}{how}")
}

// ------------------------------------------------------------------ distribution_plan

const WHY_BEGIN: &str = "all the steps in one transaction: one Citus refuses leaves the schema as it was";
const WHY_SEQUENTIAL: &str =
    "in one transaction Citus may convert tables that foreign keys tie together only over one connection per node";
const WHY_COMMIT: &str = "the schema is on Citus";
const WHY_DROP: &str = "Citus refuses to distribute a table whose foreign key points at one not converted yet";
const WHY_REFERENCE: &str = "no tenant column, used by tenant tables: a copy on every node";
const WHY_ROOT: &str = "the root: its key is the distribution column every tenant table is colocated with";
const WHY_TENANT: &str = "a tenant table: its rows live on the node of their tenant's root row";
const WHY_READD: &str = "the original foreign key, now between colocated or reference tables";

/// The audit must be clean, and every table the plan converts one the caller may read
/// (an unread table could hide a blocker); then, in order: drop the foreign keys between
/// the converted tables, the reference tables, the root, the tenant tables, the foreign
/// keys again.
fn plan_steps(model: &Model) -> Result<Vec<(i32, String, String)>> {
    require_unblocked(model, &audit_rows(model)?)?;
    let unread: Vec<&str> = model
        .tables
        .iter()
        .filter(|t| !t.readable && model.role(t.rel.oid) != Role::Local)
        .map(|t| t.rel.display.as_str())
        .collect();
    if !unread.is_empty() {
        return Err(BackfillError::NotAllowed(
            format!("role {} cannot read {}, which the plan would convert", sql::current_role(), unread.join(", ")),
            "Ask for the plan as a role that may read every table the tenant reaches (its owner, or a superuser)."
                .into(),
        ));
    }
    let Some(root) = &model.root else {
        return Err(BackfillError::WrongState(
            format!("no table has a column named {}", sql::ident(&model.tenant_column)),
            "audit found no root and no tenant table, so nothing would be distributed.".into(),
            "Name the tenant column exactly as it is spelled, case included, or pass root.".into(),
        ));
    };

    let converted: Vec<&ForeignKey> =
        model.fks.iter().filter(|fk| model.role(fk.from).converted() && model.role(fk.to).converted()).collect();
    let of_role = |role: Role| model.tables.iter().filter(move |t| model.role(t.rel.oid) == role);
    let root_name = quote_literal(model.sql_name(root.oid));

    // One transaction: a step Citus refuses half way leaves the schema as it was, its
    // foreign keys included.
    let mut steps: Vec<(String, &str)> = vec![
        ("BEGIN".into(), WHY_BEGIN),
        ("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'".into(), WHY_SEQUENTIAL),
    ];
    for fk in &converted {
        steps.push((format!("ALTER TABLE {} DROP CONSTRAINT {}", fk.on.sql_name(), sql::ident(&fk.name)), WHY_DROP));
    }
    for t in of_role(Role::Reference) {
        steps.push((format!("SELECT create_reference_table({})", quote_literal(t.rel.sql_name())), WHY_REFERENCE));
    }
    // The distribution column goes as its exact name: Citus looks it up as written, not
    // as an identifier to quote or fold.
    steps.push((format!("SELECT create_distributed_table({root_name}, {})", quote_literal(&root.key)), WHY_ROOT));
    for t in of_role(Role::Tenant) {
        steps.push((
            format!(
                "SELECT create_distributed_table({}, {}, colocate_with => {root_name})",
                quote_literal(t.rel.sql_name()),
                quote_literal(&model.tenant_column)
            ),
            WHY_TENANT,
        ));
    }
    for fk in &converted {
        steps.push((
            format!("ALTER TABLE {} ADD CONSTRAINT {} {}", fk.on.sql_name(), sql::ident(&fk.name), fk.definition),
            WHY_READD,
        ));
    }
    steps.push(("COMMIT".into(), WHY_COMMIT));
    Ok(steps.into_iter().enumerate().map(|(i, (statement, why))| (i as i32 + 1, statement, why.to_string())).collect())
}

/// 55000 while audit reports a table blocked: how many, each with its first blocker.
fn require_unblocked(model: &Model, rows: &[AuditRow]) -> Result<()> {
    let blocked: Vec<&AuditRow> = rows.iter().filter(|r| r.citus() == "blocked").collect();
    if blocked.is_empty() {
        return Ok(());
    }
    let detail: Vec<String> = blocked
        .iter()
        .map(|r| format!("{}: {}", r.display, r.blockers.first().map(String::as_str).unwrap_or("blocked")))
        .collect();
    let arguments = match &model.root {
        Some(root) if model.root_given => {
            format!("{}, {}", quote_literal(&model.tenant_column), quote_literal(model.display(root.oid)))
        }
        _ => quote_literal(&model.tenant_column),
    };
    Err(BackfillError::WrongState(
        if blocked.len() == 1 {
            "1 table is blocked from moving onto Citus".to_string()
        } else {
            format!("{} tables are blocked from moving onto Citus", blocked.len())
        },
        detail.join("\n"),
        format!("SELECT * FROM tenant_backfill.audit({arguments}) shows every blocker and its fix."),
    ))
}
