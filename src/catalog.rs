//! Reads what the extension needs from Postgres' catalog into plain structs: tables,
//! columns and their types, keys and indexes, foreign keys; and checks the caller's
//! rights. The configuration built on them is src/job.rs.

use crate::error::{BackfillError, Result};
use crate::sql::{self, get, get_required, qualified, Value};
use pgrx::pg_sys;

/// A table, resolved from its OID.
#[derive(Clone, Debug)]
pub struct Relation {
    pub oid: pg_sys::Oid,
    pub schema: String,
    pub name: String,
    /// How Postgres prints it as `regclass`, under the pinned search_path, so
    /// schema-qualified: `public.customers`, `public."ShiftTypes"`. Used in messages.
    pub display: String,
}

impl Relation {
    /// The quoted, schema-qualified name to use in generated SQL.
    pub fn sql_name(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

/// A column with the facts the engine needs about its type.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub attnum: i16,
    pub type_oid: pg_sys::Oid,
    /// The quoted, qualified type name to cast to: `pg_catalog.int4`, `pg_catalog.uuid`.
    pub type_sql: String,
    /// The type as `format_type` prints it, for messages: `integer`, `uuid`.
    pub type_display: String,
    pub not_null: bool,
    /// The type has its own `min` and `max` aggregates (uuid, for one, has not).
    pub has_min_max: bool,
    /// The type's text form never holds a character JSON must escape (integers,
    /// numeric, uuid), so it can be quoted as it is.
    pub prints_json_safe: bool,
    /// A string type (text, varchar, char): a cast from it is the target type's input
    /// function.
    pub text_like: bool,
    /// The type compares with operators of `pg_catalog`: a built-in type, a domain over
    /// one, or an enum (whose operators are pg_catalog's polymorphic ones). The extension
    /// runs with `search_path` pinned to `pg_catalog`, so another type's own operators (an
    /// extension's `citext`) would not be found, and a comparison would silently follow a
    /// type it casts to instead.
    pub builtin_ops: bool,
    /// ` COLLATE "schema"."name"`, the column's collation (` COLLATE pg_catalog."default"`
    /// for the database's), or empty for a type without one. A value cast from text to the
    /// column's type takes its type's collation (the default, or a domain's own), not the
    /// column's: the writer sorts keys with this (`ORDER BY c.key{collate}`) to order them
    /// as the column does, since it bounds the UPDATE by the first and last, and
    /// apply_decisions groups them with it.
    pub collate: String,
    /// How the generated SQL compares two values of the type: pg_catalog's operators
    /// (`=`, found under the pinned search_path) for those, else the operators of the
    /// type's default btree operator class, schema-qualified (`OPERATOR(public.=)` for
    /// citext), the same class ORDER BY and GROUP BY use. None: the type has no default
    /// btree class, and the extension cannot compare it (require_comparable refuses it).
    pub ops: Option<Ops>,
}

/// A type's comparison operators, as SQL between two operands.
#[derive(Clone, Debug)]
pub struct Ops {
    pub eq: String,
    pub ne: String,
    pub lt: String,
    pub le: String,
    pub gt: String,
    pub ge: String,
    /// pg_catalog's own: `IS DISTINCT FROM` (which looks `=` up by name) is right for them.
    builtin: bool,
}

impl Ops {
    fn builtin() -> Ops {
        let op = |o: &str| o.to_string();
        Ops { eq: op("="), ne: op("<>"), lt: op("<"), le: op("<="), gt: op(">"), ge: op(">="), builtin: true }
    }

    /// `a IS DISTINCT FROM b` with these operators: NULL is distinct from a value and
    /// not from NULL.
    pub fn distinct(&self, a: &str, b: &str) -> String {
        if self.builtin {
            format!("{a} IS DISTINCT FROM {b}")
        } else {
            format!("COALESCE(({a}) {} ({b}), (({a}) IS NULL) <> (({b}) IS NULL))", self.ne)
        }
    }

    /// `a IS NOT DISTINCT FROM b` with these operators.
    pub fn not_distinct(&self, a: &str, b: &str) -> String {
        if self.builtin {
            format!("{a} IS NOT DISTINCT FROM {b}")
        } else {
            format!("NOT {}", self.distinct(a, b))
        }
    }
}

impl Column {
    pub fn sql_name(&self) -> String {
        sql::ident(&self.name)
    }

    /// Whether its type compares with pg_catalog's operators.
    pub fn builtin_compare(&self) -> bool {
        self.ops.as_ref().is_none_or(|o| o.builtin)
    }

    /// The column's operators; only called on columns require_comparable let through.
    pub fn ops(&self) -> Ops {
        self.ops.clone().unwrap_or_else(Ops::builtin)
    }

    /// A value given as text (`param`, a placeholder), cast to the column's type and
    /// compared in the column's collation: a column may declare another collation than
    /// its type (a domain's own), and two different ones on either side of a comparison
    /// are an error (42P22).
    pub fn from_text(&self, param: &str) -> String {
        format!("{param}::pg_catalog.text::{}{}", self.type_sql, self.collate)
    }

    /// Whether the type's text form depends on the session's TimeZone (timestamptz, or a
    /// domain over it): the one setting the extension leaves to the caller (src/sql.rs,
    /// PINNED_SETTINGS).
    pub fn prints_in_session_time_zone(&self) -> bool {
        // SAFETY: a syscache lookup of a column's type.
        unsafe { pg_sys::getBaseType(self.type_oid) == pg_sys::TIMESTAMPTZOID }
    }

    /// The column's collation (its own, or its type's), as SQL (`pg_catalog."C"`,
    /// `public.german`), when it is not the database's default: two columns of two
    /// different such collations cannot be compared without a COLLATE clause (42P22).
    pub fn explicit_collation(&self) -> Option<&str> {
        let name = self.collate.strip_prefix(" COLLATE ")?;
        (name != "pg_catalog.\"default\"").then_some(name)
    }

    /// Whether the type's text form depends on the session's lc_monetary (money, or a
    /// domain over it), which the extension neither pins nor can print again.
    pub fn prints_by_locale(&self) -> bool {
        // SAFETY: a syscache lookup of a column's type.
        unsafe { pg_sys::getBaseType(self.type_oid) == pg_sys::MONEYOID }
    }
}

/// The operators of the default btree operator class of a type (of its base type, for a
/// domain), schema-qualified; None when it has none, or lacks one of the five strategies
/// or a negator for `=`.
fn btree_ops(type_oid: pg_sys::Oid) -> Result<Option<Ops>> {
    let rows = sql::select_rows(
        "SELECT o.amopstrategy::pg_catalog.int4, pg_catalog.format('OPERATOR(%I.%s)', n.nspname, op.oprname), \
                (SELECT pg_catalog.format('OPERATOR(%I.%s)', nn.nspname, neg.oprname) \
                   FROM pg_catalog.pg_operator neg JOIN pg_catalog.pg_namespace nn ON nn.oid = neg.oprnamespace \
                  WHERE neg.oid = op.oprnegate) \
           FROM pg_catalog.pg_type t \
           JOIN pg_catalog.pg_opclass c ON c.opcintype = COALESCE(NULLIF(t.typbasetype, 0), t.oid) AND c.opcdefault \
                AND c.opcmethod = (SELECT a.oid FROM pg_catalog.pg_am a WHERE a.amname = 'btree') \
           JOIN pg_catalog.pg_amop o ON o.amopfamily = c.opcfamily AND o.amopmethod = c.opcmethod \
                AND o.amoplefttype = c.opcintype AND o.amoprighttype = c.opcintype \
           JOIN pg_catalog.pg_operator op ON op.oid = o.amopopr \
           JOIN pg_catalog.pg_namespace n ON n.oid = op.oprnamespace \
          WHERE t.oid = $1",
        &[Value::Oid(type_oid)],
        |row| Ok((get_required::<i32>(row, 1)?, get_required::<String>(row, 2)?, get::<String>(row, 3)?)),
    )?;
    let strategy = |s: i32| rows.iter().find(|r| r.0 == s);
    let (Some(lt), Some(le), Some(eq), Some(ge), Some(gt)) =
        (strategy(1), strategy(2), strategy(3), strategy(4), strategy(5))
    else {
        return Ok(None);
    };
    let Some(ne) = eq.2.clone() else { return Ok(None) };
    Ok(Some(Ops {
        eq: eq.1.clone(),
        ne,
        lt: lt.1.clone(),
        le: le.1.clone(),
        gt: gt.1.clone(),
        ge: ge.1.clone(),
        builtin: false,
    }))
}

/// Resolves a table OID; only ordinary and partitioned tables are accepted.
pub fn relation(oid: pg_sys::Oid) -> Result<Relation> {
    if oid == pg_sys::InvalidOid {
        return Err(BackfillError::BadArgument(
            "a table argument is NULL".into(),
            "Pass the table as regclass, e.g. 'customers' or 'app.customers'.".into(),
        ));
    }
    let rows = sql::select_rows(
        sql::fixed("SELECT n.nspname::text, c.relname::text, c.relkind::text, c.oid::pg_catalog.regclass::text,\n       \
         n.nspname IN ('pg_catalog', 'information_schema', 'pg_toast'),\n       \
         EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid\n                \
         WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid\n                  \
         AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e'\n                  \
         AND e.extname = 'tenant_backfill')\n  \
         FROM pg_catalog.pg_class c\n  \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n \
         WHERE c.oid = $1"),
        &[Value::Oid(oid)],
        |row| {
            Ok((
                get_required::<String>(row, 1)?,
                get_required::<String>(row, 2)?,
                get_required::<String>(row, 3)?,
                get_required::<String>(row, 4)?,
                get_required::<bool>(row, 5)?,
                get_required::<bool>(row, 6)?,
            ))
        },
    )?;
    let Some((schema, name, kind, display, system, own)) = rows.into_iter().next() else {
        return Err(BackfillError::UnknownTable(format!("with OID {}", u32::from(oid))));
    };
    let why = match kind.as_str() {
        "r" | "p" if system => Some(": it is a system catalog".to_string()),
        "r" | "p" if own => Some(": it is one of tenant_backfill's own tables".to_string()),
        "r" | "p" => None,
        "v" => Some(" (it is a view)".into()),
        "m" => Some(" (it is a materialized view)".into()),
        "f" => Some(" (it is a foreign table)".into()),
        "S" => Some(" (it is a sequence)".into()),
        "i" | "I" => Some(" (it is an index)".into()),
        "c" => Some(" (it is a composite type)".into()),
        _ => Some(String::new()),
    };
    if let Some(why) = why {
        return Err(BackfillError::NotATable { relation: display, why });
    }
    Ok(Relation { oid, schema, name, display })
}

/// Resolves a column of a table by its exact name.
pub fn column(rel: &Relation, name: &str) -> Result<Column> {
    if name.is_empty() {
        return Err(BackfillError::BadArgument(
            format!("a column name for {} is NULL or empty", rel.display),
            "Name the column exactly as it is spelled in the table.".into(),
        ));
    }
    let rows = sql::select_rows(
        sql::fixed("SELECT a.attnum, a.atttypid, tn.nspname::text, t.typname::text, \
                pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                pg_catalog.to_regprocedure(pg_catalog.format('pg_catalog.min(%I.%I)', tn.nspname, t.typname)) IS NOT NULL \
                  AND pg_catalog.to_regprocedure(pg_catalog.format('pg_catalog.max(%I.%I)', tn.nspname, t.typname)) IS NOT NULL, \
                a.atttypid IN ('pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype, \
                               'pg_catalog.int8'::pg_catalog.regtype, 'pg_catalog.numeric'::pg_catalog.regtype, \
                               'pg_catalog.uuid'::pg_catalog.regtype), \
                t.typcategory = 'S', \
                (SELECT b.typnamespace = 'pg_catalog'::pg_catalog.regnamespace OR b.typtype = 'e' \
                   FROM pg_catalog.pg_type b WHERE b.oid = COALESCE(NULLIF(t.typbasetype, 0), t.oid)), \
                COALESCE((SELECT pg_catalog.format(' COLLATE %I.%I', cn.nspname, co.collname) \
                            FROM pg_catalog.pg_collation co \
                            JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace \
                           WHERE co.oid = a.attcollation), '') \
           FROM pg_catalog.pg_attribute a \
           JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
           JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace \
          WHERE a.attrelid = $1 AND a.attname = $2::text::pg_catalog.name \
            AND a.attnum > 0 AND NOT a.attisdropped"),
        &[Value::Oid(rel.oid), Value::text(name)],
        |row| {
            Ok(Column {
                name: name.to_string(),
                attnum: get_required::<i16>(row, 1)?,
                type_oid: get_required::<pg_sys::Oid>(row, 2)?,
                type_sql: qualified(&get_required::<String>(row, 3)?, &get_required::<String>(row, 4)?),
                type_display: get_required::<String>(row, 5)?,
                not_null: get_required::<bool>(row, 6)?,
                has_min_max: get_required::<bool>(row, 7)?,
                prints_json_safe: get_required::<bool>(row, 8)?,
                text_like: get_required::<bool>(row, 9)?,
                builtin_ops: get_required::<bool>(row, 10)?,
                collate: get_required::<String>(row, 11)?,
                ops: None,
            })
        },
    )?;
    let mut col = rows
        .into_iter()
        .next()
        .ok_or_else(|| BackfillError::UnknownColumn { table: rel.display.clone(), column: name.to_string() })?;
    col.ops = if col.builtin_ops { Some(Ops::builtin()) } else { btree_ops(col.type_oid)? };
    Ok(col)
}

/// The single column of the table's primary key.
pub fn primary_key_column(rel: &Relation) -> Result<Column> {
    let names = sql::select_rows(
        "SELECT a.attname::text, i.indnatts \
           FROM pg_catalog.pg_index i \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
          WHERE i.indrelid = $1 AND i.indisprimary",
        &[Value::Oid(rel.oid)],
        |row| Ok((get_required::<String>(row, 1)?, get_required::<i16>(row, 2)?)),
    )?;
    match names.into_iter().next() {
        Some((name, 1)) => column(rel, &name),
        Some((_, n)) => Err(BackfillError::BadArgument(
            format!("{} has a primary key of {n} columns", rel.display),
            "Pass key_column: a single NOT NULL column with a unique index.".into(),
        )),
        None => Err(BackfillError::BadArgument(
            format!("{} has no primary key", rel.display),
            "Pass key_column: a single NOT NULL column with a unique index.".into(),
        )),
    }
}

/// The column of `parent` that the target's `via` holds: what a single-column foreign key
/// of via to the parent references, else the parent's single-column primary key. Either
/// is unique, so a target row has at most one parent.
pub fn parent_key(target: &Relation, via: &Column, parent: &Relation) -> Result<Column> {
    let referenced = sql::select_value::<String>(
        "SELECT pa.attname::text FROM pg_catalog.pg_constraint con \
           JOIN pg_catalog.pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = con.confkey[1] \
          WHERE con.conrelid = $1 AND con.confrelid = $2 AND con.contype = 'f' \
            AND pg_catalog.array_length(con.conkey, 1) = 1 AND con.conkey[1] = $3::pg_catalog.int2 \
          ORDER BY con.conname LIMIT 1",
        &[Value::Oid(target.oid), Value::Oid(parent.oid), Value::Int4(Some(via.attnum.into()))],
    )?;
    // A table with inheritance children is read with them, and a key unique in the parent
    // alone could match a row of each: not one parent.
    let inherited = sql::select_value::<bool>(
        "SELECT c.relkind = 'r' AND EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid) \
           FROM pg_catalog.pg_class c WHERE c.oid = $1",
        &[Value::Oid(parent.oid)],
    )?;
    if inherited == Some(true) {
        return Err(BackfillError::Unsupported(
            format!("{} has inheritance children and cannot be a parent source", parent.display),
            "Its key is unique in the table itself, not across its children: a row could have several parents.".into(),
            "Name the child tables as parent sources of their own, or use a partitioned table.".into(),
        ));
    }
    // A foreign key of via to another table says via holds that table's keys, not these.
    let elsewhere = sql::select_value::<String>(
        "SELECT con.confrelid::pg_catalog.regclass::text FROM pg_catalog.pg_constraint con \
          WHERE con.conrelid = $1 AND con.confrelid <> $2 AND con.contype = 'f' \
            AND pg_catalog.array_length(con.conkey, 1) = 1 AND con.conkey[1] = $3::pg_catalog.int2 \
          ORDER BY con.conname LIMIT 1",
        &[Value::Oid(target.oid), Value::Oid(parent.oid), Value::Int4(Some(via.attnum.into()))],
    )?;
    if let (None, Some(other)) = (&referenced, elsewhere) {
        return Err(BackfillError::BadArgument(
            format!("column {} of {} is a foreign key to {other}, not to {}", via.name, target.display, parent.display),
            format!(
                "Add {other} as the parent source through {}, or name the column that points at {}.",
                via.name, parent.display
            ),
        ));
    }
    let key = match referenced {
        Some(name) => column(parent, &name)?,
        None => primary_key_column(parent).map_err(|_| {
            BackfillError::BadArgument(
                format!(
                    "{} has no single-column primary key for column {} of {} to point at",
                    parent.display, via.name, target.display
                ),
                format!(
                    "A parent source is matched on its key: add a foreign key from {}.{} to the parent's unique \
                     column, or give {} a single-column primary key.",
                    target.display,
                    sql::ident(&via.name),
                    parent.display
                ),
            )
        })?,
    };
    Ok(key)
}

/// Whether any of these tables is a Citus table (distributed or reference): false where
/// Citus is not installed, whose catalog pg_dist_partition then does not exist.
pub fn citus_tables(tables: &[pg_sys::Oid]) -> Result<bool> {
    citus_tables_where(tables, "true")
}

/// Whether any of these tables is a distributed (hash) or reference table of Citus, whose
/// shards run no trigger while citus.enable_unsafe_triggers is off (Citus local tables
/// and single-shard tables do run them).
pub fn citus_without_triggers(tables: &[pg_sys::Oid]) -> Result<bool> {
    citus_tables_where(tables, "(p.partmethod = 'h' OR (p.partmethod = 'n' AND p.repmodel = 't'))")
}

/// `filter`: a condition on pg_dist_partition p, a constant of this file.
fn citus_tables_where(tables: &[pg_sys::Oid], filter: &str) -> Result<bool> {
    let installed = sql::select_value::<bool>(
        sql::fixed("SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL"),
        &[],
    )?
    .unwrap_or(false);
    if !installed {
        return Ok(false);
    }
    let oids: Vec<Option<i64>> = tables.iter().map(|oid| Some(i64::from(u32::from(*oid)))).collect();
    Ok(sql::select_value::<bool>(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p \
                             WHERE p.logicalrelid::pg_catalog.oid::pg_catalog.int8 OPERATOR(pg_catalog.=) ANY ($1) \
                               AND {filter})"
        ),
        &[Value::Int8Array(oids)],
    )?
    .unwrap_or(false))
}

/// Whether a column alone is unique (a valid, non-partial unique index on just it).
pub fn is_unique(rel: &Relation, col: &Column) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        sql::fixed(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                         WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid \
                           AND i.indnkeyatts = 1 AND i.indkey[0] = $2::pg_catalog.int2 \
                           AND i.indpred IS NULL AND i.indexprs IS NULL)",
        ),
        &[Value::Oid(rel.oid), Value::Int4(Some(col.attnum.into()))],
    )?
    .unwrap_or(false))
}

/// Whether `col` can be searched for an array of `key`'s values in one index scan (`col
/// = ANY (ARRAY(...))`, engine::Keys). All of:
/// - neither column has a collation (so that none can keep the index from serving the
///   comparison) or an array type (`ARRAY(...)` over arrays makes one array of more
///   dimensions, not an array of arrays);
/// - a valid, non-partial b-tree index starts with `col`, with the default operator class
///   of `col`'s (base) type itself (a binary-coercible one, such as `oid_ops` on an int4
///   column, does not hold the type's `=`), whose family holds the `=` of `col`'s type and
///   `key`'s (int4 with int8 is one: integer_ops; int2 with numeric is none: the parser
///   would cast the column, and no index serves that), the very operator the comparison
///   takes: pg_catalog's for built-in types (the pinned search_path finds no other), the
///   type's own otherwise (engine::Keys spells it, and a type's own operators compare it
///   only with itself);
/// - the table has no inheritance children, which no index of its own covers (a
///   partitioned table's valid index covers every partition).
///
/// Without such an index the array would be searched from its start for every row read.
pub fn searchable_by_array(rel: &Relation, col: &Column, key: &Column) -> Result<bool> {
    if !col.collate.is_empty() || !key.collate.is_empty() {
        return Ok(false);
    }
    // SAFETY: syscache lookups of the types two columns of locked tables have.
    let (col_base, key_base, is_array) = unsafe {
        let (col_base, key_base) = (pg_sys::getBaseType(col.type_oid), pg_sys::getBaseType(key.type_oid));
        let is_array = pg_sys::get_element_type(col_base) != pg_sys::InvalidOid
            || pg_sys::get_element_type(key_base) != pg_sys::InvalidOid;
        (col_base, key_base, is_array)
    };
    if is_array {
        return Ok(false);
    }
    Ok(sql::select_value::<bool>(
        sql::fixed(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                          JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
                          JOIN pg_catalog.pg_am am ON am.oid = ic.relam \
                          JOIN pg_catalog.pg_opclass oc ON oc.oid = i.indclass[0] \
                         WHERE i.indrelid = $1 AND i.indisvalid AND i.indkey[0] = $2::pg_catalog.int2 \
                           AND i.indpred IS NULL AND am.amname = 'btree' AND oc.opcdefault AND oc.opcintype = $3 \
                           AND EXISTS (SELECT 1 FROM pg_catalog.pg_amop o \
                                         JOIN pg_catalog.pg_operator op ON op.oid = o.amopopr \
                                        WHERE o.amopfamily = oc.opcfamily AND o.amopmethod = am.oid \
                                          AND o.amoplefttype = $3 AND o.amoprighttype = $4 AND o.amopstrategy = 3 \
                                          AND op.oprname = '=' \
                                          AND (NOT $5 OR op.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace))) \
            AND (SELECT c.relkind = 'p' OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h \
                                                        WHERE h.inhparent = c.oid) \
                   FROM pg_catalog.pg_class c WHERE c.oid = $1)",
        ),
        &[
            Value::Oid(rel.oid),
            Value::Int4(Some(col.attnum.into())),
            Value::Oid(col_base),
            Value::Oid(key_base),
            Value::Bool(Some(col.builtin_compare() && key.builtin_compare())),
        ],
    )?
    .unwrap_or(false))
}

/// Whether some valid index of the table starts with this column (so `via = key` lookups are fast).
pub fn has_leading_index(rel: &Relation, col: &Column) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        sql::fixed(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                         WHERE i.indrelid = $1 AND i.indisvalid \
                           AND i.indkey[0] = $2::pg_catalog.int2)",
        ),
        &[Value::Oid(rel.oid), Value::Int4(Some(col.attnum.into()))],
    )?
    .unwrap_or(false))
}

/// Whether Postgres can compare the two types with `=` (directly or after an implicit
/// cast of either side, as the parser would), looking through domains.
pub fn types_comparable(left: pg_sys::Oid, right: pg_sys::Oid) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        sql::fixed("WITH base AS ( \
           SELECT (SELECT COALESCE(NULLIF(t.typbasetype, 0), t.oid) FROM pg_catalog.pg_type t WHERE t.oid = $1) AS l, \
                  (SELECT COALESCE(NULLIF(t.typbasetype, 0), t.oid) FROM pg_catalog.pg_type t WHERE t.oid = $2) AS r), \
         lefts AS (SELECT b.l AS typ FROM base b \
                   UNION SELECT c.casttarget FROM base b JOIN pg_catalog.pg_cast c ON c.castsource = b.l AND c.castcontext = 'i'), \
         rights AS (SELECT b.r AS typ FROM base b \
                   UNION SELECT c.casttarget FROM base b JOIN pg_catalog.pg_cast c ON c.castsource = b.r AND c.castcontext = 'i') \
         SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_operator o \
                         WHERE o.oprname = '=' \
                           AND o.oprleft IN (SELECT typ FROM lefts) \
                           AND o.oprright IN (SELECT typ FROM rights))"),
        &[Value::Oid(left), Value::Oid(right)],
    )?
    .unwrap_or(false))
}

/// Whether a value of type `from` can be cast to `to` with `::` (same type, a catalogued
/// cast, or the I/O conversion Postgres allows to and from string types).
pub fn castable(from: pg_sys::Oid, to: pg_sys::Oid) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        sql::fixed(
            "WITH base AS ( \
           SELECT f.oid AS f, COALESCE(NULLIF(f.typbasetype, 0), f.oid) AS fb, f.typcategory AS fc, \
                  t.oid AS t, COALESCE(NULLIF(t.typbasetype, 0), t.oid) AS tb, t.typcategory AS tc \
             FROM pg_catalog.pg_type f, pg_catalog.pg_type t WHERE f.oid = $1 AND t.oid = $2) \
         SELECT b.fb = b.tb OR b.fc = 'S' OR b.tc = 'S' \
                OR EXISTS (SELECT 1 FROM pg_catalog.pg_cast c WHERE c.castsource = b.fb AND c.casttarget = b.tb) \
           FROM base b",
        ),
        &[Value::Oid(from), Value::Oid(to)],
    )?
    .unwrap_or(false))
}

/// Checks that a column the extension compares (a key, a tenant, a source's `via`) has a
/// type whose comparisons it can write (`Column::ops`): pg_catalog's, or its default btree
/// operator class's.
pub fn require_comparable(rel: &Relation, col: &Column, role: &str) -> Result<()> {
    if col.prints_by_locale() {
        return Err(BackfillError::Unsupported(
            format!("{role} {} of {} is {}, whose text follows lc_monetary", col.name, rel.display, col.type_display),
            "tenant_backfill keeps keys and tenants as text (backup, audit_log, overrides) and casts them back in \
             later sessions, which may print and read money in another locale."
                .into(),
            "Give the column a type whose text is the same in every session (numeric, an integer), or name another key column."
                .into(),
        ));
    }
    if col.ops.is_some() {
        return Ok(());
    }
    Err(BackfillError::Unsupported(
        format!(
            "{role} {} of {} is {}, which has no default btree operator class",
            col.name, rel.display, col.type_display
        ),
        "tenant_backfill compares keys and tenants with the operators of the type's default btree operator class \
         (those ORDER BY uses), and this type has none."
            .into(),
        "Give the column a type that sorts (an integer, uuid, text, citext), or name another key column.".into(),
    ))
}

/// Checks that the caller may SELECT these columns: a clear 42501 naming the table
/// before any query fails half way.
pub fn require_select(rel: &Relation, columns: &[&Column]) -> Result<()> {
    require_column_privilege(rel, columns, "SELECT")
}

/// Checks that the caller may UPDATE the column a run writes.
pub fn require_update(rel: &Relation, column: &Column) -> Result<()> {
    require_column_privilege(rel, &[column], "UPDATE")
}

fn require_column_privilege(rel: &Relation, columns: &[&Column], privilege: &str) -> Result<()> {
    for col in columns {
        let allowed = sql::select_value::<bool>(
            sql::fixed("SELECT pg_catalog.has_column_privilege($1, $2::pg_catalog.int2, $3)"),
            &[Value::Oid(rel.oid), Value::Int4(Some(col.attnum.into())), Value::text(privilege)],
        )?
        .unwrap_or(false);
        if !allowed {
            return Err(BackfillError::NotAllowed(
                format!("role {} cannot {privilege} column {} of {}", sql::current_role(), col.name, rel.display),
                format!("GRANT {privilege} ON {} TO the role that runs tenant_backfill.", rel.display),
            ));
        }
    }
    Ok(())
}

/// Checks a table-level privilege (`SELECT`, `UPDATE`).
pub fn require_table_privilege(rel: &Relation, privilege: &str) -> Result<()> {
    let allowed = sql::select_value::<bool>(
        "SELECT pg_catalog.has_table_privilege($1, $2)",
        &[Value::Oid(rel.oid), Value::text(privilege)],
    )?
    .unwrap_or(false);
    if allowed {
        Ok(())
    } else {
        Err(BackfillError::NotAllowed(
            format!("role {} cannot {privilege} {}", sql::current_role(), rel.display),
            format!("GRANT {privilege} ON {} TO the role that runs tenant_backfill.", rel.display),
        ))
    }
}

/// Whether `value` casts to the column's type; then its canonical text form (`'007'`
/// for an integer column becomes `'7'`), so stored keys match the table's own.
pub fn canonical_value(value: &str, col: &Column, rel: &Relation) -> Result<String> {
    let ok = sql::select_value::<bool>(
        "SELECT tenant_backfill_internal._casts_to($1, $2::pg_catalog.regtype)",
        &[Value::text(value), Value::Oid(col.type_oid)],
    )?
    .unwrap_or(false);
    if !ok {
        return Err(BackfillError::InvalidValue {
            value: value.to_string(),
            column: format!("{}.{}", rel.display, sql::ident(&col.name)),
            type_name: col.type_display.clone(),
        });
    }
    let cast = format!("SELECT ($1::text)::{}::text", col.type_sql);
    sql::select_value::<String>(&cast, &[Value::text(value)])?
        .ok_or_else(|| BackfillError::Internal("a cast of a non-NULL value returned NULL".into()))
}

/// The parent row a guarded table's row points at, for mode `assign`.
pub struct ParentLink {
    pub parent_table: String,
    pub parent_tenant: String,
    /// The parent's key column, resolved as keys are: its `ops` say how to find the row.
    pub parent_key: Column,
}

impl ParentLink {
    /// The parent row is found with its key type's own `=` (Column::ops); a type without
    /// a default btree class is refused by enforce.
    pub fn require_comparable(&self) -> Result<()> {
        if self.parent_key.ops.is_some() {
            return Ok(());
        }
        Err(BackfillError::Unsupported(
            format!(
                "the parent key {} of {} is {}, which has no default btree operator class",
                self.parent_key.name, self.parent_table, self.parent_key.type_display
            ),
            "assign finds the parent row with the equality of its key type's default btree operator class.".into(),
            "Give the parent key a type that sorts, or use assign without parent_column (the tenant_backfill.tenant \
             setting)."
                .into(),
        ))
    }
}

/// The single-column foreign key on `column`, and the parent's tenant column: the
/// parent's configured one if it is a target, else the same name as ours.
pub fn parent_link(rel: &Relation, column_name: &str, tenant_column: &str) -> Result<ParentLink> {
    let rows = sql::select_rows(
        "SELECT con.confrelid, pa.attname::text, \
                COALESCE((SELECT tg.tenant_column::text FROM tenant_backfill.targets tg WHERE tg.target = con.confrelid::pg_catalog.regclass), $3) \
           FROM pg_catalog.pg_constraint con \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1] \
           JOIN pg_catalog.pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = con.confkey[1] \
          WHERE con.conrelid = $1 AND con.contype = 'f' AND pg_catalog.array_length(con.conkey, 1) = 1 \
            AND a.attname = $2::text::pg_catalog.name \
          ORDER BY con.conname LIMIT 1",
        &[Value::Oid(rel.oid), Value::text(column_name), Value::text(tenant_column)],
        |row| {
            Ok((get_required::<pg_sys::Oid>(row, 1)?, get_required::<String>(row, 2)?, get_required::<String>(row, 3)?))
        },
    )?;
    let (parent_oid, key_name, parent_tenant) = rows.into_iter().next().ok_or_else(|| {
        BackfillError::BadArgument(
            format!("column {column_name} of {} is not a single-column foreign key", rel.display),
            "assign reads the parent's tenant through a foreign key column of the guarded table.".into(),
        )
    })?;
    let parent = relation(parent_oid)?;
    Ok(ParentLink { parent_key: column(&parent, &key_name)?, parent_table: parent.sql_name(), parent_tenant })
}
