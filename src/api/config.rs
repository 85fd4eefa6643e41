//! Describe the job (API.md section 1): targets, sources, overrides, discovery.
//! Everything is validated up front, so a mistake is a clear error here rather than a
//! failed query in the middle of a run.

use crate::catalog::{self, Column, Relation};
use crate::engine;
use crate::error::{required, BackfillError, OrRaise, Result};
use crate::job::{self, Direction, Rule};
use crate::sql::{self, get_required, Value};
use crate::types::{RegClass, SqlName};
use pgrx::prelude::*;

/// Registers (or updates) a target table.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn define(
    target: Option<RegClass>,
    tenant_column: Option<SqlName>,
    key_column: default!(Option<SqlName>, "NULL"),
    soft_delete_column: default!(Option<SqlName>, "'deleted_at'"),
) {
    (|| {
        define_target(
            required(target, "target")?,
            &required(tenant_column, "tenant_column")?,
            key_column.as_ref(),
            soft_delete_column.as_ref(),
        )
    })()
    .or_raise()
}

fn define_target(
    target: RegClass,
    tenant_column: &SqlName,
    key_column: Option<&SqlName>,
    soft_delete_column: Option<&SqlName>,
) -> Result<()> {
    let rel = catalog::relation(target.0)?;
    let tenant = catalog::column(&rel, tenant_column.as_str())?;
    let key = match key_column {
        None => catalog::primary_key_column(&rel)?,
        Some(name) => {
            let key = catalog::column(&rel, name.as_str())?;
            if !key.not_null || !catalog::is_unique(&rel, &key)? {
                return Err(BackfillError::BadArgument(
                    format!("key column {} of {} is not a usable key", key.name, rel.display),
                    "The key must be a single NOT NULL column with a unique index of its own.".into(),
                ));
            }
            key
        }
    };
    catalog::require_comparable(&rel, &key, "key column")?;
    catalog::require_comparable(&rel, &tenant, "tenant column")?;
    if key.attnum == tenant.attnum {
        return Err(BackfillError::BadArgument(
            format!("the tenant column {} of {} is also its key", tenant.name, rel.display),
            "Name the tenant column and a different key column.".into(),
        ));
    }
    catalog::require_select(&rel, &[&key, &tenant])?;
    // Configuring a target decides what runs will write: as writing it would.
    catalog::require_update(&rel, &tenant)?;
    let soft_delete = soft_delete_column.map(SqlName::as_str).unwrap_or("deleted_at");
    let caller = sql::current_role();
    sql::as_extension_owner(|| {
        sql::execute(
            "INSERT INTO tenant_backfill.targets\n    \
             (target, tenant_column, key_column, soft_delete_column, tenant_attnum, key_attnum, target_oid, defined_by)\n\
             VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2::text::pg_catalog.name, $3::text::pg_catalog.name,\n        \
             $4::text::pg_catalog.name, $5::pg_catalog.int2, $6::pg_catalog.int2, $1::pg_catalog.oid,\n        \
             $7::text::pg_catalog.name)\n\
             ON CONFLICT (target) DO UPDATE SET tenant_column = EXCLUDED.tenant_column,\n    \
             key_column = EXCLUDED.key_column, soft_delete_column = EXCLUDED.soft_delete_column,\n    \
             tenant_attnum = EXCLUDED.tenant_attnum, key_attnum = EXCLUDED.key_attnum, target_oid = EXCLUDED.target_oid,\n    \
             defined_at = pg_catalog.now(), defined_by = EXCLUDED.defined_by",
            &[
                Value::Oid(rel.oid),
                Value::text(tenant.name),
                Value::text(key.name),
                Value::text(soft_delete),
                Value::Int4(Some(tenant.attnum.into())),
                Value::Int4(Some(key.attnum.into())),
                Value::text(caller),
            ],
        )
    })?;
    Ok(())
}

/// Removes a target's configuration (its sources, overrides and override tables with
/// it). Its runs, backups and audit log stay: they are history.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn undefine(target: Option<RegClass>) {
    required(target, "target").and_then(undefine_target).or_raise()
}

fn undefine_target(target: RegClass) -> Result<()> {
    // Forgetting a target needs what configuring it needs; a target whose columns are
    // gone needs UPDATE on the table.
    match job::target(target.0) {
        Ok(t) => catalog::require_update(&t.rel, &t.tenant)?,
        Err(BackfillError::NotDefined(name)) => return Err(BackfillError::NotDefined(name)),
        Err(_) => catalog::require_table_privilege(&catalog::relation(target.0)?, "UPDATE")?,
    }
    let removed = sql::as_extension_owner_checked(|| {
        sql::execute(
            "DELETE FROM tenant_backfill.targets WHERE target = $1::pg_catalog.oid::pg_catalog.regclass",
            &[Value::Oid(target.0)],
        )
    })?;
    if removed == 0 {
        let rel = catalog::relation(target.0)?;
        return Err(BackfillError::NotDefined(rel.display));
    }
    Ok(())
}

/// Adds (or updates) a child source: a related table whose `via` column points at the
/// target's key.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn add_source(
    target: Option<RegClass>,
    source: Option<RegClass>,
    via: Option<SqlName>,
    tenant_column: default!(Option<SqlName>, "NULL"),
    phase: default!(Option<i32>, "NULL"),
    rule: default!(Option<String>, "'unanimous'"),
) {
    (|| {
        add_source_impl(
            required(target, "target")?,
            required(source, "source")?,
            &required(via, "via")?,
            tenant_column.as_ref(),
            phase,
            Rule::parse(rule.as_deref())?,
            Direction::Child,
        )
    })()
    .or_raise()
}

/// Adds (or updates) a parent source: the table the target's own `via` column points at,
/// whose one row's tenant is the evidence. No rule: one row cannot disagree with itself.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn add_parent(
    target: Option<RegClass>,
    parent: Option<RegClass>,
    via: Option<SqlName>,
    tenant_column: default!(Option<SqlName>, "NULL"),
    phase: default!(Option<i32>, "NULL"),
) {
    (|| {
        add_source_impl(
            required(target, "target")?,
            required(parent, "parent")?,
            &required(via, "via")?,
            tenant_column.as_ref(),
            phase,
            Rule::Unanimous,
            Direction::Parent,
        )
    })()
    .or_raise()
}

fn add_source_impl(
    target: RegClass,
    source: RegClass,
    via: &SqlName,
    tenant_column: Option<&SqlName>,
    phase: Option<i32>,
    rule: Rule,
    direction: Direction,
) -> Result<()> {
    let target = job::target(target.0)?;
    let rel = catalog::relation(source.0)?;
    let tenant_name = tenant_column.map(SqlName::as_str).unwrap_or(&target.tenant.name);
    let tenant = catalog::column(&rel, tenant_name)?;
    let (via, parent_key) = match direction {
        Direction::Child => (catalog::column(&rel, via.as_str())?, None),
        Direction::Parent => {
            let via = catalog::column(&target.rel, via.as_str())?;
            if rel.oid == target.rel.oid {
                return Err(BackfillError::BadArgument(
                    format!("{} cannot be its own parent source", target.rel.display),
                    "A parent is another table the target's via column points at.".into(),
                ));
            }
            let key = catalog::parent_key(&target.rel, &via, &rel)?;
            (via, Some(key))
        }
    };
    job::require_source_types(&target, &rel, &via, parent_key.as_ref(), &tenant)?;
    match &parent_key {
        None => catalog::require_select(&rel, &[&via, &tenant])?,
        Some(key) => {
            catalog::require_select(&target.rel, &[&via])?;
            catalog::require_select(&rel, &[key, &tenant])?;
        }
    }
    catalog::require_update(&target.rel, &target.tenant)?;
    // The same (source, via) the other way round is another source: not an update of this one.
    let current = sql::select_value::<String>(
        "SELECT direction FROM tenant_backfill.sources \
          WHERE target = $1::pg_catalog.oid::pg_catalog.regclass AND source = $2::pg_catalog.oid::pg_catalog.regclass \
            AND via OPERATOR(pg_catalog.=) $3::text::pg_catalog.name",
        &[Value::Oid(target.rel.oid), Value::Oid(rel.oid), Value::text(via.name.clone())],
    )?;
    if let Some(current) = current.filter(|d| d != direction.as_str()) {
        return Err(BackfillError::BadArgument(
            format!("{} through {} is already a {current} source of {}", rel.display, via.name, target.rel.display),
            format!(
                "Remove it first (tenant_backfill.remove_source('{}', '{}', '{}')) to add it as a {} source.",
                target.rel.display,
                rel.display,
                via.name,
                direction.as_str()
            ),
        ));
    }

    let existing = source_phases(&target.rel)?;
    let this = |s: &&(pgrx::pg_sys::Oid, String, i32)| s.0 == rel.oid && s.1 == via.name;
    let phase = match (phase, existing.iter().find(this)) {
        (Some(p), _) if p < 1 => {
            return Err(BackfillError::BadArgument(
                format!("phase {p} is not a positive number"),
                "Phases are tried in increasing order starting at 1.".into(),
            ))
        }
        (Some(p), _) => p,
        (None, Some(current)) => current.2,
        (None, None) => existing.iter().map(|s| s.2).max().unwrap_or(0) + 1,
    };
    if let Some(other) = existing.iter().find(|s| s.2 == phase && !this(s)) {
        let other_rel = catalog::relation(other.0)?;
        return Err(BackfillError::BadArgument(
            format!("phase {phase} of {} is already {}.{}", target.rel.display, other_rel.display, other.1),
            "Each phase holds one source; pick a free phase or leave phase NULL for the next one.".into(),
        ));
    }
    sql::as_extension_owner_checked(|| {
        sql::execute(
            "INSERT INTO tenant_backfill.sources (target, source, via, tenant_column, phase, rule, direction, source_key) \
             VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2::pg_catalog.oid::pg_catalog.regclass, \
                     $3::text::pg_catalog.name, $4::text::pg_catalog.name, $5, $6, $7, $8::text::pg_catalog.name) \
             ON CONFLICT (target, source, via) DO UPDATE SET tenant_column = EXCLUDED.tenant_column, \
                 phase = EXCLUDED.phase, rule = EXCLUDED.rule, direction = EXCLUDED.direction, \
                 source_key = EXCLUDED.source_key",
            &[
                Value::Oid(target.rel.oid),
                Value::Oid(rel.oid),
                Value::text(via.name),
                Value::text(tenant.name),
                Value::Int4(Some(phase)),
                Value::text(rule.as_str()),
                Value::text(direction.as_str()),
                match &parent_key {
                    Some(key) => Value::text(key.name.clone()),
                    None => Value::Text(None),
                },
            ],
        )
    })?;
    Ok(())
}

/// Removes one source of a target (every source of that table, when `via` is NULL); the
/// other phases keep their numbers. Runs, backups and the audit log stay.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn remove_source(target: Option<RegClass>, source: Option<RegClass>, via: default!(Option<SqlName>, "NULL")) -> i64 {
    (|| remove_source_impl(required(target, "target")?, required(source, "source")?, via.as_ref()))().or_raise()
}

fn remove_source_impl(target: RegClass, source: RegClass, via: Option<&SqlName>) -> Result<i64> {
    let target = job::target(target.0)?;
    catalog::require_update(&target.rel, &target.tenant)?;
    let removed = sql::as_extension_owner(|| {
        sql::execute(
            "DELETE FROM tenant_backfill.sources \
              WHERE target = $1::pg_catalog.oid::pg_catalog.regclass AND source = $2::pg_catalog.oid::pg_catalog.regclass \
                AND ($3::text IS NULL OR via OPERATOR(pg_catalog.=) $3::text::pg_catalog.name)",
            &[Value::Oid(target.rel.oid), Value::Oid(source.0), Value::Text(via.map(|v| v.as_str().to_string()))],
        )
    })?;
    if removed == 0 {
        let rel = catalog::relation(source.0)?;
        return Err(BackfillError::BadArgument(
            format!(
                "{} is not a source of {}{}",
                rel.display,
                target.rel.display,
                via.map(|v| format!(" through {}", v.as_str())).unwrap_or_default()
            ),
            "SELECT * FROM tenant_backfill.sources shows a target's sources.".into(),
        ));
    }
    Ok(removed as i64)
}

/// (source, via, phase) of every source of a target.
fn source_phases(target: &Relation) -> Result<Vec<(pgrx::pg_sys::Oid, String, i32)>> {
    sql::select_rows(
        "SELECT source::pg_catalog.oid, via::text, phase FROM tenant_backfill.sources \
          WHERE target = $1::pg_catalog.oid::pg_catalog.regclass",
        &[Value::Oid(target.oid)],
        |row| Ok((get_required(row, 1)?, get_required(row, 2)?, get_required(row, 3)?)),
    )
}

/// A DBA's decision for one row; beats every phase. A NULL tenant removes the override.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn set_override(
    target: Option<RegClass>,
    row_key: Option<String>,
    tenant: Option<String>,
    note: default!(Option<String>, "NULL"),
) {
    required(target, "target")
        .and_then(|target| set_override_impl(target, row_key.as_deref(), tenant.as_deref(), note))
        .or_raise()
}

fn set_override_impl(
    target: RegClass,
    row_key: Option<&str>,
    tenant: Option<&str>,
    note: Option<String>,
) -> Result<()> {
    let target = job::target(target.0)?;
    catalog::require_update(&target.rel, &target.tenant)?;
    let Some(row_key) = row_key else {
        return Err(BackfillError::BadArgument(
            "row_key is NULL".into(),
            "Pass the key of the row to override, as text.".into(),
        ));
    };
    let canonical = catalog::canonical_value(row_key, &target.key, &target.rel)?;
    let row_key_text = own_key_text(&target, &canonical)?;
    let key = row_key_text.clone().unwrap_or_else(|| canonical.clone());
    let Some(tenant) = tenant else {
        // The row's text and the argument's: an override of a row that is gone was stored
        // under the one or the other.
        sql::as_extension_owner(|| {
            sql::execute(
                "DELETE FROM tenant_backfill.overrides WHERE target = $1::pg_catalog.oid::pg_catalog.regclass \
                   AND row_key OPERATOR(pg_catalog.=) ANY ($2::text[])",
                &[Value::Oid(target.rel.oid), Value::TextArray(vec![Some(key.clone()), Some(canonical)])],
            )
        })?;
        return remove_other_spellings(&target, &key);
    };
    let tenant = catalog::canonical_value(tenant, &target.tenant, &target.rel)?;
    if row_key_text.is_none() {
        return Err(BackfillError::BadArgument(
            format!("{} has no row with {} = {key}", target.rel.display, target.key.name),
            "An override names an existing row by its key.".into(),
        ));
    }
    remove_other_spellings(&target, &key)?;
    let caller = sql::current_role();
    sql::as_extension_owner_checked(|| {
        sql::execute(
            "INSERT INTO tenant_backfill.overrides (target, row_key, tenant, note, set_by) \
             VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4, $5::text::pg_catalog.name) \
             ON CONFLICT (target, row_key) DO UPDATE SET tenant = EXCLUDED.tenant, note = EXCLUDED.note, \
                 set_at = pg_catalog.now(), set_by = EXCLUDED.set_by",
            &[
                Value::Oid(target.rel.oid),
                Value::text(key),
                Value::text(tenant),
                Value::Text(note),
                Value::text(caller),
            ],
        )
    })?;
    Ok(())
}

/// Reads overrides live from an existing config table (`"Configs"`: `"Key"` =
/// `ShiftTypeCompanyOverride:<id>`, `"Value"` = the tenant).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn add_override_table(
    target: Option<RegClass>,
    config_table: Option<RegClass>,
    key_column: Option<SqlName>,
    value_column: Option<SqlName>,
    key_prefix: default!(Option<String>, "''"),
) {
    (|| {
        add_override_table_impl(
            required(target, "target")?,
            required(config_table, "config_table")?,
            &required(key_column, "key_column")?,
            &required(value_column, "value_column")?,
            key_prefix,
        )
    })()
    .or_raise()
}

fn add_override_table_impl(
    target: RegClass,
    config_table: RegClass,
    key_column: &SqlName,
    value_column: &SqlName,
    key_prefix: Option<String>,
) -> Result<()> {
    let target = job::target(target.0)?;
    let rel = catalog::relation(config_table.0)?;
    let key = catalog::column(&rel, key_column.as_str())?;
    let value = catalog::column(&rel, value_column.as_str())?;
    job::require_tenant_cast(
        &target,
        &rel,
        &value,
        "column",
        "The value column must hold tenants, or text that casts to the tenant type.",
    )?;
    catalog::require_select(&rel, &[&key, &value])?;
    catalog::require_update(&target.rel, &target.tenant)?;
    sql::as_extension_owner_checked(|| {
        sql::execute(
            "INSERT INTO tenant_backfill.override_tables (target, config_table, key_column, value_column, key_prefix, position) \
             SELECT $1::pg_catalog.oid::pg_catalog.regclass, $2::pg_catalog.oid::pg_catalog.regclass, \
                    $3::text::pg_catalog.name, $4::text::pg_catalog.name, $5, \
                    COALESCE(pg_catalog.max(o.position), 0) + 1 \
               FROM tenant_backfill.override_tables o WHERE o.target = $1::pg_catalog.oid::pg_catalog.regclass \
             ON CONFLICT (target, config_table, key_column, key_prefix) DO UPDATE SET value_column = EXCLUDED.value_column",
            &[
                Value::Oid(target.rel.oid),
                Value::Oid(rel.oid),
                Value::text(key.name),
                Value::text(value.name),
                Value::text(key_prefix.unwrap_or_default()),
            ],
        )
    })?;
    Ok(())
}

/// Removes the overrides of the target stored under another text of the key `key`: a
/// timestamptz key prints with the offset of the session's TimeZone, so the same row
/// set from Berlin (`+01`) and from UTC (`+00`) would be two overrides, matched alike
/// (engine.rs, override_key) and neither sure to win. Read as pg_catalog's timestamptz
/// (no domain's CHECK runs as the owner); every stored key read so when it was set.
fn remove_other_spellings(target: &job::Target, key: &str) -> Result<()> {
    if !target.key.prints_in_session_time_zone() {
        return Ok(());
    }
    sql::as_extension_owner(|| {
        sql::execute(
            "DELETE FROM tenant_backfill.overrides WHERE target = $1::pg_catalog.oid::pg_catalog.regclass \
               AND row_key OPERATOR(pg_catalog.<>) $2 \
               AND row_key::pg_catalog.timestamptz OPERATOR(pg_catalog.=) $2::pg_catalog.timestamptz",
            &[Value::Oid(target.rel.oid), Value::text(key)],
        )
    })?;
    Ok(())
}

/// A row's key as the row has it as text, found with the key type's own `=`: overrides are
/// matched with a row's key as text, and under a type with operators of its own ('ABC' and
/// 'abc' one citext) only that text is the same. None when no such row (the caller may see).
fn own_key_text(target: &job::Target, canonical: &str) -> Result<Option<String>> {
    sql::select_value::<String>(
        &format!(
            "SELECT t.{key}::text FROM {table} t WHERE t.{key} {eq} {value} LIMIT 1",
            key = target.key.sql_name(),
            table = target.rel.sql_name(),
            eq = target.key.ops().eq,
            value = target.key.from_text("$1"),
        ),
        &[Value::text(canonical)],
    )
}

/// The override in force for one row (own table first, then config tables), or NULL.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn override_for(target: Option<RegClass>, row_key: Option<String>) -> Option<String> {
    (|| override_for_impl(required(target, "target")?, &required(row_key, "row_key")?))().or_raise()
}

fn override_for_impl(target: RegClass, row_key: &str) -> Result<Option<String>> {
    let job = job::job(target.0)?;
    job.require_read_access()?;
    let canonical = catalog::canonical_value(row_key, &job.target.key, &job.target.rel)?;
    let key = own_key_text(&job.target, &canonical)?.unwrap_or(canonical);
    let st = engine::override_query(&job, &key);
    sql::select_value::<String>(&st.sql, &st.params)
}

/// Foreign keys that point at the target's key from tables that carry a column named
/// like the target's tenant column: candidates for `add_source`.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn discover(
    target: Option<RegClass>,
) -> TableIterator<
    'static,
    (name!(source, RegClass), name!(via, SqlName), name!(tenant_column, SqlName), name!(has_index, bool)),
> {
    TableIterator::new(required(target, "target").and_then(discover_impl).or_raise())
}

fn discover_impl(target: RegClass) -> Result<Vec<(RegClass, SqlName, SqlName, bool)>> {
    let target = job::target(target.0)?;
    let candidates = sql::select_rows(
        "SELECT con.conrelid, a.attname::text \
           FROM pg_catalog.pg_constraint con \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1] \
           JOIN pg_catalog.pg_attribute ta ON ta.attrelid = con.conrelid AND ta.attname = $3::text::pg_catalog.name \
                AND ta.attnum > 0 AND NOT ta.attisdropped \
          WHERE con.contype = 'f' AND con.confrelid = $1 AND con.conparentid = 0 \
            AND pg_catalog.array_length(con.conkey, 1) = 1 AND con.confkey[1] = $2::pg_catalog.int2 \
          ORDER BY con.conrelid::pg_catalog.regclass::text, a.attname",
        &[
            Value::Oid(target.rel.oid),
            Value::Int4(Some(target.key.attnum.into())),
            Value::text(target.tenant.name.clone()),
        ],
        |row| Ok((get_required::<pgrx::pg_sys::Oid>(row, 1)?, get_required::<String>(row, 2)?)),
    )?;
    let mut out = Vec::with_capacity(candidates.len());
    for (oid, via) in candidates {
        let rel = catalog::relation(oid)?;
        let via: Column = catalog::column(&rel, &via)?;
        let has_index = catalog::has_leading_index(&rel, &via)?;
        out.push((RegClass(oid), SqlName(via.name), SqlName(target.tenant.name.clone()), has_index));
    }
    Ok(out)
}
