#!/usr/bin/env bash
# tenant_backfill on a real Citus coordinator (one node, shards on the coordinator): runs
# with distributed and reference sources, local, distributed and reference targets, child
# and parent sources, each compared row by row with the same run on plain local copies;
# the guard refused on Citus tables with its own error; finalize on a distributed table.
# Run by scripts/test as: citus.sh VERSION (Citus supports Postgres 16-18: on 15 it says
# so and checks nothing). Citus is built from ../shared/citus into that Postgres if missing.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ "$PGV" -lt 16 ]; then
    echo "citus: Citus supports Postgres 16 to 18; nothing to check on Postgres $PGV"
    finish
    exit
fi
PG_CONFIG=$(pg_config_for "$PGV")
if [ ! -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ]; then
    CITUS_SRC=""
    for dir in "${CITUS_SRC_DIR:-}" "$REPO_ROOT/../shared/citus" /work/shared/citus; do
        [ -n "$dir" ] && [ -x "$dir/build.sh" ] && { CITUS_SRC=$dir; break; }
    done
    if [ -z "$CITUS_SRC" ]; then
        fail "Citus can be built" "build.sh in \$CITUS_SRC_DIR, ../shared/citus or /work/shared/citus" "none found"
        finish
        exit
    fi
    log "building Citus from $CITUS_SRC into Postgres $PGV (about 35 s)"
    "$CITUS_SRC/build.sh" "$PG_CONFIG" >"$(scratch_dir citus_build)/build.log" 2>&1 ||
        { fail "Citus builds" "build.sh succeeds" "it failed"; finish; exit; }
fi

primary_start citus "-c shared_preload_libraries=citus"
quiet "CREATE EXTENSION citus"
quiet "SELECT citus_set_coordinator_host('$PRIMARY', $PORT)"
quiet "SELECT citus_set_node_property('$PRIMARY', $PORT, 'shouldhaveshards', true)"
quiet "CREATE EXTENSION tenant_backfill"

# make_schema PREFIX: companies, customers (half without a company), appointments (two
# per customer, every 7th customer's disagree: a conflict), phones (a majority source),
# visits pointing at customers (a parent source); nothing distributed yet.
sql -q >/dev/null <<'SQL'
CREATE FUNCTION make_schema(p text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY)', p || '_companies');
    EXECUTE format('INSERT INTO %I SELECT generate_series(1, 5)', p || '_companies');
    EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, company_id int, name text)', p || '_customers');
    EXECUTE format('INSERT INTO %I SELECT i, CASE WHEN i %% 2 = 0 THEN i %% 5 + 1 END, ''c'' || i FROM generate_series(1, 400) i', p || '_customers');
    EXECUTE format('CREATE TABLE %I (id int, customer_id int, company_id int NOT NULL, PRIMARY KEY (company_id, id))', p || '_appointments');
    EXECUTE format('INSERT INTO %I SELECT j * 1000 + i, i, CASE WHEN j = 2 AND i %% 7 = 0 THEN (i + 1) %% 5 + 1 ELSE i %% 5 + 1 END
                      FROM generate_series(1, 400) i, generate_series(1, 2) j WHERE i %% 3 <> 0', p || '_appointments');
    EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, customer_id int, company_id int)', p || '_phones');
    EXECUTE format('INSERT INTO %I SELECT i, i, i %% 5 + 1 FROM generate_series(1, 400) i WHERE i %% 3 = 0', p || '_phones');
    EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, customer_id int, company_id int)', p || '_visits');
    EXECUTE format('INSERT INTO %I SELECT i, i %% 400 + 1, NULL FROM generate_series(1, 600) i', p || '_visits');
    EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, customer_id int, company_id int)', p || '_tags');
    EXECUTE format('INSERT INTO %I SELECT i, i, NULL FROM generate_series(1, 50) i', p || '_tags');
END
$$;
CREATE FUNCTION configure(p text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenant_backfill.define((p || '_customers')::regclass, 'company_id');
    PERFORM tenant_backfill.add_source((p || '_customers')::regclass, (p || '_appointments')::regclass, 'customer_id');
    PERFORM tenant_backfill.add_source((p || '_customers')::regclass, (p || '_phones')::regclass, 'customer_id', rule => 'majority');
    PERFORM tenant_backfill.define((p || '_visits')::regclass, 'company_id');
    PERFORM tenant_backfill.add_source((p || '_visits')::regclass, (p || '_customers')::regclass, 'customer_id', direction => 'parent');
    PERFORM tenant_backfill.define((p || '_tags')::regclass, 'company_id');
    PERFORM tenant_backfill.add_source((p || '_tags')::regclass, (p || '_customers')::regclass, 'customer_id', direction => 'parent');
    PERFORM tenant_backfill.add_source((p || '_tags')::regclass, (p || '_appointments')::regclass, 'customer_id');
END
$$;
-- Rows of a table that differ from the same table of the local copy, by id.
CREATE FUNCTION differs(tbl text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM %I d FULL JOIN %I l USING (id) WHERE d.company_id IS DISTINCT FROM l.company_id',
                   'dist_' || tbl, 'local_' || tbl) INTO n;
    RETURN n;
END
$$;
SELECT make_schema('local'), make_schema('dist');
SQL
# The Citus side: appointments distributed by tenant, phones a reference table, visits
# distributed by id (its tenant still NULL), tags a reference target; customers local.
quiet "SELECT create_distributed_table('dist_appointments', 'company_id')"
quiet "SELECT create_reference_table('dist_phones')"
quiet "SELECT create_distributed_table('dist_visits', 'id')"
quiet "SELECT create_reference_table('dist_tags')"
for t in appointments phones visits tags; do quiet "SELECT truncate_local_data_after_distributing_table('dist_$t')"; done
quiet "SELECT configure('local'), configure('dist')"

section "the configuration and the plan read Citus tables as the local copies"
assert_eq "what Citus made of them" "dist_appointments|distributed dist_phones|reference dist_tags|reference dist_visits|distributed" \
    "$(val "SELECT string_agg(table_name::text || '|' || citus_table_type, ' ' ORDER BY table_name::text) FROM citus_tables")"
assert_eq "preflight: the same counts" \
    "$(val "SELECT string_agg(check_name || '=' || rows, ' ' ORDER BY check_name) FROM tenant_backfill.preflight('local_customers') WHERE check_name <> 'total_rows'")" \
    "$(val "SELECT string_agg(check_name || '=' || rows, ' ' ORDER BY check_name) FROM tenant_backfill.preflight('dist_customers') WHERE check_name <> 'total_rows'")"
# (The evidence names the sources, local_... and dist_...: compared without the prefix.)
plan_of() { val "SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', row_key, proposed_tenant, action, phase, rule,
                        replace(evidence::text, '\"$1_', '\"')), ',' ORDER BY row_key::int)) FROM tenant_backfill.plan('$1_customers')"; }
assert_eq "plan: the same decisions, evidence included" "$(plan_of local)" "$(plan_of dist)"
assert_eq "plan: 200 rows, of them 19 conflicts (two appointments that disagree)" "200|19" \
    "$(val "SELECT count(*), count(*) FILTER (WHERE action = 'conflict') FROM tenant_backfill.plan('dist_customers')")"
# Customer 7: its two appointments say companies 3 and 4.
assert_eq "conflicts lists them, with the counts per tenant of a distributed source" \
    "19|{\"dist_appointments\": {\"3\": 1, \"4\": 1}}" \
    "$(val "SELECT count(*) OVER (), evidence FROM tenant_backfill.conflicts('dist_customers') ORDER BY row_key::int LIMIT 1")"

section "run_now: a local target, distributed and reference sources"
quiet "SELECT * FROM tenant_backfill.run_now('local_customers')"
assert_eq "run_now changed what it changed locally" \
    "$(val "SELECT rows_changed FROM tenant_backfill.runs WHERE target = 'local_customers'::regclass AND kind = 'run_now'")" \
    "$(val "SELECT rows_changed FROM tenant_backfill.run_now('dist_customers')")"
assert_eq "row by row the same" 0 "$(val "SELECT differs('customers')")"
assert_true "validate proves it" "$(val "SELECT bool_and(ok) FROM tenant_backfill.validate('dist_customers') WHERE check_name IN ('row_count_unchanged', 'audit_complete', 'backup_complete')")"

section "CALL run: a distributed target with a local parent source"
sql -q -c "SET client_min_messages = warning" -c "CALL tenant_backfill.run('local_visits', batch_size => 64)" >/dev/null
sql -q -c "SET client_min_messages = warning" -c "CALL tenant_backfill.run('dist_visits', batch_size => 64)" >/dev/null
assert_eq "done, the same rows changed" "done|$(val "SELECT rows_changed FROM tenant_backfill.runs WHERE target = 'local_visits'::regclass")" \
    "$(val "SELECT status, rows_changed FROM tenant_backfill.runs WHERE target = 'dist_visits'::regclass")"
assert_eq "row by row the same" 0 "$(val "SELECT differs('visits')")"
assert_eq "each change audited once" 0 "$(val "
    SELECT count(*) FROM (SELECT row_key FROM tenant_backfill.audit_log a JOIN tenant_backfill.runs r USING (run_id)
                           WHERE r.target = 'dist_visits'::regclass GROUP BY row_key HAVING count(*) <> 1) x")"
dist_visits_run=$(val "SELECT run_id FROM tenant_backfill.runs WHERE target = 'dist_visits'::regclass")
assert_eq "a rollback restores a distributed table" "$(val "SELECT rows_changed FROM tenant_backfill.runs WHERE run_id = $dist_visits_run")|0" \
    "$(val "SELECT restored || '|' || skipped FROM tenant_backfill.rollback($dist_visits_run)")"
assert_eq "all NULL again" 600 "$(val "SELECT count(*) FROM dist_visits WHERE company_id IS NULL")"

section "background runs: start with one worker and with two, on a reference target and a distributed one"
quiet "SELECT * FROM tenant_backfill.run_now('local_tags')"
run=$(val "SELECT tenant_backfill.start('dist_tags', batch_size => 10)")
assert_eq "the reference target's run is done" done "$(val "SELECT tenant_backfill.wait($run)")"
assert_eq "row by row the same" 0 "$(val "SELECT differs('tags')")"
run=$(val "SELECT tenant_backfill.start('dist_visits', batch_size => 50, workers => 2)")
assert_eq "two workers on a distributed target: done" "done" "$(val "SELECT tenant_backfill.wait($run)")"
assert_eq "no error, two parts" "|2" "$(val "SELECT coalesce(error, ''), (SELECT count(*) FROM tenant_backfill.run_parts WHERE run_id = $run) FROM tenant_backfill.runs WHERE run_id = $run")"
assert_eq "row by row the same" 0 "$(val "SELECT differs('visits')")"

section "what Citus cannot do is said, and finalize works"
assert_fails "the guard on a distributed table: the extension's own error" \
    "the guard cannot be installed on public.dist_visits: it is a Citus table" "SELECT tenant_backfill.enforce('dist_visits')"
assert_fails "on a reference table too" "it is a Citus table" "SELECT tenant_backfill.enforce('dist_tags')"
quiet "UPDATE dist_visits SET company_id = 1 WHERE company_id IS NULL"
sql -q -c "CALL tenant_backfill.finalize('dist_visits')" >/dev/null
assert_eq "finalize made the distributed table's tenant NOT NULL" t \
    "$(val "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'dist_visits'::regclass AND attname = 'company_id'")"
assert_fails "and every shard refuses a NULL" "violates not-null constraint" "INSERT INTO dist_visits VALUES (100000, 1, NULL)"

[ -n "${KEEP:-}" ] && { trap - EXIT; echo "kept $PRIMARY port $PORT"; }
finish
