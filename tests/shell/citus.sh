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
    PERFORM tenant_backfill.add_parent((p || '_visits')::regclass, (p || '_customers')::regclass, 'customer_id');
    PERFORM tenant_backfill.define((p || '_tags')::regclass, 'company_id');
    PERFORM tenant_backfill.add_parent((p || '_tags')::regclass, (p || '_customers')::regclass, 'customer_id');
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

# Citus cannot plan the lock step that skips held rows (FOR NO KEY UPDATE SKIP LOCKED in a
# subquery over a distributed table): a batch of a Citus target waits for them instead,
# as long as lock_timeout_ms, and backs off and tries again after that.
section "a row another session holds on a distributed target: the batch waits for it"
sql -q -c "BEGIN" -c "SELECT 1 FROM dist_visits WHERE id = 5 FOR UPDATE" -c "SELECT pg_sleep(2)" -c "COMMIT" >/dev/null &
holder=$!
wait_until "SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' AND state = 'active'"
began=$SECONDS
sql -q -c "SET client_min_messages = warning" -c "CALL tenant_backfill.run('dist_visits', batch_size => 64, lock_timeout_ms => 10000)" 2>&1 |
    grep -v '^$' >"$SCRATCH/held.out" || true
wait "$holder"
assert_eq "CALL run ends without an error" "" "$(cat "$SCRATCH/held.out")"
held_run=$(val "SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'dist_visits'::regclass")
assert_eq "done, the held row changed too, nothing skipped" \
    "done|$(val "SELECT rows_changed FROM tenant_backfill.runs WHERE target = 'local_visits'::regclass")|0|1" \
    "$(val "SELECT status, rows_changed, rows_skipped, (SELECT count(*) FROM dist_visits WHERE id = 5 AND company_id IS NOT NULL)
              FROM tenant_backfill.runs WHERE run_id = $held_run")"
assert_eq "row by row the same" 0 "$(val "SELECT differs('visits')")"
assert_true "it waited for the row" "$([ $((SECONDS - began)) -ge 1 ] && echo t || echo f)"
quiet "SELECT * FROM tenant_backfill.rollback($held_run)"
assert_eq "rolled back: all NULL again" 600 "$(val "SELECT count(*) FROM dist_visits WHERE company_id IS NULL")"

section "a later pass on a distributed target decides the keys its pass before left, and no others"
# Made by hand, as in pg_regress 07 (a Citus batch skips no held row, but leaves one the
# application set meanwhile the same way): visits 5 and 7 had a tenant while the first pass
# went by, the run stopped after it with their keys on its list, and another session then
# set them to NULL, and 9, which the first pass wrote.
quiet "UPDATE dist_visits SET company_id = 1 WHERE id IN (5, 7)"
sql -q -c "SET client_min_messages = warning" -c "CALL tenant_backfill.run('dist_visits', batch_size => 64)" >/dev/null
later_run=$(val "SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'dist_visits'::regclass")
quiet "UPDATE tenant_backfill.runs SET status = 'paused', pass = 2, last_key = NULL, finished_at = NULL WHERE run_id = $later_run"
quiet "INSERT INTO tenant_backfill.run_skipped (run_id, target, pass, row_key)
       VALUES ($later_run, 'dist_visits', 1, '5'), ($later_run, 'dist_visits', 1, '7')"
quiet "UPDATE dist_visits SET company_id = NULL WHERE id IN (5, 7, 9)"
sql -q -c "SET client_min_messages = warning" -c "CALL tenant_backfill.run('dist_visits', batch_size => 64)" >/dev/null
assert_eq "done in pass 2, its list taken; 5 and 7 as the local run has them, 9 left NULL" "done|2|0|t|t|t" \
    "$(val "SELECT r.status, r.pass, (SELECT count(*) FROM tenant_backfill.run_skipped s WHERE s.run_id = r.run_id),
                   (SELECT d.company_id = l.company_id FROM dist_visits d JOIN local_visits l USING (id) WHERE id = 5),
                   (SELECT d.company_id = l.company_id FROM dist_visits d JOIN local_visits l USING (id) WHERE id = 7),
                   (SELECT company_id IS NULL FROM dist_visits WHERE id = 9)
              FROM tenant_backfill.runs r WHERE r.run_id = $later_run")"
assert_eq "one backup row each" "5:1 7:1 9:1" \
    "$(val "SELECT string_agg(row_key || ':' || n, ' ' ORDER BY row_key)
              FROM (SELECT row_key, count(*) AS n FROM tenant_backfill.backup
                     WHERE run_id = $later_run AND row_key IN ('5', '7', '9') GROUP BY row_key) b")"
quiet "SELECT * FROM tenant_backfill.rollback($later_run)"
quiet "UPDATE dist_visits SET company_id = NULL"

section "background runs: start with one worker and with two, on a reference target and a distributed one"
quiet "SELECT * FROM tenant_backfill.run_now('local_tags')"
run=$(val "SELECT tenant_backfill.start('dist_tags', batch_size => 10)")
assert_eq "the reference target's run is done" done "$(val "SELECT tenant_backfill.wait($run)")"
assert_eq "row by row the same" 0 "$(val "SELECT differs('tags')")"
# The first row of each part held while they begin: each worker's first batch waits for
# it (see above).
sql -q -c "BEGIN" -c "SELECT 1 FROM dist_visits WHERE id = 1 FOR UPDATE" \
    -c "SELECT 1 FROM dist_visits WHERE id = 301 FOR UPDATE" -c "SELECT pg_sleep(2)" -c "COMMIT" >/dev/null &
holder=$!
wait_until "SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' AND state = 'active'"
run=$(val "SELECT tenant_backfill.start('dist_visits', batch_size => 50, workers => 2, lock_timeout_ms => 10000)")
wait "$holder"
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

# A multi-tenant database of its own (audit reads the whole database), with one defect of
# each kind. companies is the root; countries a lookup table; customers lack tenants and
# keys with company_id; orders point at customers without it, one at another company's
# customer; notes have no company_id (derivable); invoices are ready; settings local.
sudo -u postgres "$BIN/createdb" -h "$PRIMARY" -p "$PORT" -U postgres mt
mt() { sudo -u postgres "$BIN/psql" -X -v ON_ERROR_STOP=1 -h "$PRIMARY" -p "$PORT" -U postgres -d mt "$@"; }
mt_val() { mt -tAq -c "$1"; }
mt_fails() {
    local out
    if out=$(mt -tAq -c "$3" 2>&1); then fail "$1" "an error: $2" "success: $out"; else assert_contains "$1" "$2" "$out"; fi
}
mt -q >/dev/null <<SQL
CREATE EXTENSION citus;
SELECT citus_set_coordinator_host('$PRIMARY', $PORT);
SELECT citus_set_node_property('$PRIMARY', $PORT, 'shouldhaveshards', true);
CREATE EXTENSION tenant_backfill;
CREATE TABLE companies (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO companies SELECT i, 'company ' || i FROM generate_series(1, 4) i;
CREATE TABLE countries (code text PRIMARY KEY);
INSERT INTO countries VALUES ('de'), ('fr');
CREATE TABLE customers (id int PRIMARY KEY, company_id int REFERENCES companies, email text UNIQUE,
                        country text REFERENCES countries);
INSERT INTO customers SELECT i, CASE WHEN i % 10 <> 0 THEN i % 4 + 1 END, 'c' || i || '@x', 'de' FROM generate_series(1, 40) i;
CREATE TABLE orders (id int PRIMARY KEY, company_id int NOT NULL REFERENCES companies, customer_id int REFERENCES customers);
INSERT INTO orders SELECT i, i % 4 + 1, i FROM generate_series(1, 40) i;
UPDATE orders SET company_id = 1 WHERE id = 7;   -- customer 7 is company 4's
CREATE TABLE notes (id int PRIMARY KEY, order_id int REFERENCES orders, body text);
INSERT INTO notes SELECT i, i, 'note ' || i FROM generate_series(1, 20) i;
CREATE TABLE invoices (company_id int NOT NULL REFERENCES companies, id int, PRIMARY KEY (company_id, id));
INSERT INTO invoices SELECT i % 4 + 1, i FROM generate_series(1, 30) i;
CREATE TABLE settings (key text PRIMARY KEY, value text);
INSERT INTO settings VALUES ('theme', 'dark');
SQL

section "audit's verdict, table by table"
assert_eq "roles and verdicts" \
    "companies|root|distribute countries|reference|reference customers|tenant|blocked invoices|tenant|distribute notes|derivable|blocked orders|tenant|blocked settings|local|local" \
    "$(mt_val "SELECT string_agg(concat_ws('|', table_name, role, citus), ' ' ORDER BY table_name::text) FROM tenant_backfill.audit('company_id')")"
assert_eq "the NULL tenants (4) and the cross-tenant order (1)" "customers|40|4|0 orders|40|0|1" \
    "$(mt_val "SELECT string_agg(concat_ws('|', table_name, rows, null_tenant, cross_tenant), ' ' ORDER BY table_name::text)
                FROM tenant_backfill.audit('company_id') WHERE role = 'tenant' AND citus = 'blocked'")"
blockers=$(mt_val "SELECT table_name || ': ' || b FROM tenant_backfill.audit('company_id'), unnest(blockers) b")
echo "$blockers"
assert_contains "customers: its NULL tenants" "customers: 4 rows have a NULL company_id" "$blockers"
assert_contains "customers: its primary key" "customers: PRIMARY KEY customers_pkey (id) lacks company_id" "$blockers"
assert_contains "orders: its foreign key to customers" "orders: foreign key orders_customer_id_fkey (customer_id)" "$blockers"
assert_contains "notes: no company_id" "notes: no company_id column" "$blockers"
mt_fails "distribution_plan refuses while anything is blocked" "3 tables are blocked from moving onto Citus" \
    "SELECT * FROM tenant_backfill.distribution_plan('company_id')"

section "what Citus does agrees: in the plan's order, the blocked are refused and the rest accepted"
# The plan's order by hand (distribution_plan refuses here): the foreign keys between
# the tables to convert go, the reference table, the root, then each tenant table.
mt -q -c "DO \$\$ DECLARE c record; BEGIN
    FOR c IN SELECT conrelid::regclass AS t, conname FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace
    LOOP EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.t, c.conname); END LOOP; END \$\$" >/dev/null
assert_eq "countries (reference): accepted" "" "$(mt_val "SELECT create_reference_table('countries')")"
assert_eq "companies (root, distribute): accepted" "" "$(mt_val "SELECT create_distributed_table('companies', 'id')")"
assert_eq "invoices (distribute): accepted" "" "$(mt_val "SELECT create_distributed_table('invoices', 'company_id', colocate_with => 'companies')")"
mt_fails "customers (blocked): refused" "ERROR" "SELECT create_distributed_table('customers', 'company_id', colocate_with => 'companies')"
mt_fails "orders (blocked): refused" "ERROR" "SELECT create_distributed_table('orders', 'company_id', colocate_with => 'companies')"
mt_fails "notes (blocked): refused" "ERROR" "SELECT create_distributed_table('notes', 'company_id', colocate_with => 'companies')"

# The same defects in a second database, repaired with tenant_backfill itself and plain
# DDL, then distributed by distribution_plan's statements.
sudo -u postgres "$BIN/createdb" -h "$PRIMARY" -p "$PORT" -U postgres -T template0 mt2
mt2() { sudo -u postgres "$BIN/psql" -X -v ON_ERROR_STOP=1 -h "$PRIMARY" -p "$PORT" -U postgres -d mt2 "$@"; }
mt2_val() { mt2 -tAq -c "$1"; }

section "the defects repaired with the extension, then distribution_plan's statements distribute everything"
mt2 -q >/dev/null <<SQL
CREATE EXTENSION citus;
SELECT citus_set_coordinator_host('$PRIMARY', $PORT);
SELECT citus_set_node_property('$PRIMARY', $PORT, 'shouldhaveshards', true);
CREATE EXTENSION tenant_backfill;
CREATE TABLE companies (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO companies SELECT i, 'company ' || i FROM generate_series(1, 4) i;
CREATE TABLE countries (code text PRIMARY KEY);
INSERT INTO countries VALUES ('de'), ('fr');
CREATE TABLE customers (id int PRIMARY KEY, company_id int REFERENCES companies, email text UNIQUE,
                        country text REFERENCES countries);
INSERT INTO customers SELECT i, CASE WHEN i % 10 <> 0 THEN i % 4 + 1 END, 'c' || i || '@x', 'de' FROM generate_series(1, 40) i;
CREATE TABLE orders (id int PRIMARY KEY, company_id int NOT NULL REFERENCES companies, customer_id int REFERENCES customers);
INSERT INTO orders SELECT i, i % 4 + 1, i FROM generate_series(1, 40) i;
UPDATE orders SET company_id = 1 WHERE id = 7;
CREATE TABLE notes (id int PRIMARY KEY, order_id int REFERENCES orders, body text);
INSERT INTO notes SELECT i, i, 'note ' || i FROM generate_series(1, 20) i;
CREATE TABLE invoices (company_id int NOT NULL REFERENCES companies, id int, PRIMARY KEY (company_id, id));
INSERT INTO invoices SELECT i % 4 + 1, i FROM generate_series(1, 30) i;
CREATE TABLE settings (key text PRIMARY KEY, value text);
INSERT INTO settings VALUES ('theme', 'dark');
SQL
# 1. The NULL customers, from their orders (a child source).
mt2 -q >/dev/null <<'SQL'
SELECT tenant_backfill.define('customers', 'company_id');
SELECT tenant_backfill.add_source('customers', 'orders', 'customer_id');
SQL
assert_eq "customers: 4 filled from their orders" "4" "$(mt2_val "SELECT rows_changed FROM tenant_backfill.run_now('customers')")"
# 2. The order of another company's customer, from its customer (a parent source, reassign).
mt2 -q >/dev/null <<'SQL'
SELECT tenant_backfill.define('orders', 'company_id');
SELECT tenant_backfill.add_parent('orders', 'customers', 'customer_id');
SQL
assert_eq "orders: the cross-tenant one reassigned to its customer's company" "1|4" \
    "$(mt2_val "SELECT rows_changed FROM tenant_backfill.run_now('orders', mode => 'reassign')")|$(mt2_val "SELECT company_id FROM orders WHERE id = 7")"
# 3. notes get the column and their order's tenant (a parent source), in committed batches.
mt2 -q >/dev/null <<'SQL'
ALTER TABLE notes ADD COLUMN company_id int REFERENCES companies;
SELECT tenant_backfill.define('notes', 'company_id');
SELECT tenant_backfill.add_parent('notes', 'orders', 'order_id');
SET client_min_messages = warning;
CALL tenant_backfill.run('notes', batch_size => 7);
SQL
assert_eq "notes: every one filled, each its order's company" "20|0" \
    "$(mt2_val "SELECT count(*), count(*) FILTER (WHERE n.company_id IS DISTINCT FROM o.company_id) FROM notes n JOIN orders o ON o.id = n.order_id")"
# 4. NOT NULL without a long lock, then the keys and foreign keys with company_id.
for t in customers notes; do mt2 -q -c "CALL tenant_backfill.finalize('$t')" >/dev/null; done
mt2 -q >/dev/null <<'SQL'
ALTER TABLE notes DROP CONSTRAINT notes_order_id_fkey;
ALTER TABLE orders DROP CONSTRAINT orders_customer_id_fkey;
ALTER TABLE customers DROP CONSTRAINT customers_pkey, ADD PRIMARY KEY (company_id, id);
ALTER TABLE customers DROP CONSTRAINT customers_email_key, ADD UNIQUE (company_id, email);
ALTER TABLE orders DROP CONSTRAINT orders_pkey, ADD PRIMARY KEY (company_id, id);
ALTER TABLE notes DROP CONSTRAINT notes_pkey, ADD PRIMARY KEY (company_id, id);
ALTER TABLE orders ADD FOREIGN KEY (company_id, customer_id) REFERENCES customers (company_id, id);
ALTER TABLE notes ADD FOREIGN KEY (company_id, order_id) REFERENCES orders (company_id, id);
SQL
# Two things Citus refuses that are not about the tenant: a trigger (the guard's too) and
# an ON UPDATE CASCADE foreign key between distributed tables.
mt2 -q -c "SELECT tenant_backfill.enforce('customers')" -c "ALTER TABLE invoices DROP CONSTRAINT invoices_company_id_fkey,
    ADD CONSTRAINT invoices_company_id_fkey FOREIGN KEY (company_id) REFERENCES companies ON UPDATE CASCADE" >/dev/null 2>&1
blockers=$(mt2_val "SELECT table_name || ': ' || b FROM tenant_backfill.audit('company_id'), unnest(blockers) b")
assert_contains "the guard's trigger blocks, and the fix says unenforce" \
    "customers: trigger tenant_backfill_guard: Citus does not convert a table with triggers: tenant_backfill.unenforce('public.customers')" "$blockers"
assert_contains "ON UPDATE CASCADE blocks" "invoices: foreign key invoices_company_id_fkey -> public.companies is ON UPDATE CASCADE" "$blockers"
mt2 -q -c "SELECT tenant_backfill.unenforce('customers')" -c "ALTER TABLE invoices DROP CONSTRAINT invoices_company_id_fkey,
    ADD CONSTRAINT invoices_company_id_fkey FOREIGN KEY (company_id) REFERENCES companies" >/dev/null
assert_eq "audit: nothing blocked" "companies|distribute countries|reference customers|distribute invoices|distribute notes|distribute orders|distribute settings|local" \
    "$(mt2_val "SELECT string_agg(table_name || '|' || citus, ' ' ORDER BY table_name::text) FROM tenant_backfill.audit('company_id')")"
# The tables themselves (the shards on the coordinator carry foreign keys of their own).
TABLES="('companies', 'countries', 'customers', 'orders', 'notes', 'invoices', 'settings')"
before=$(mt2_val "SELECT (SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text IN $TABLES) || '|' ||
                         (SELECT sum(n) FROM (SELECT count(*) n FROM customers UNION ALL SELECT count(*) FROM orders
                                              UNION ALL SELECT count(*) FROM notes UNION ALL SELECT count(*) FROM invoices
                                              UNION ALL SELECT count(*) FROM companies UNION ALL SELECT count(*) FROM countries) x)")
mt2_val "SELECT statement FROM tenant_backfill.distribution_plan('company_id') ORDER BY step" > "$SCRATCH/plan.sql"
cat "$SCRATCH/plan.sql"
assert_eq "the plan: one transaction; drop 7 foreign keys, 1 reference table, the root, 4 tenant tables, add 7 back" \
    "BEGIN|1 DROP=7 reference=1 distributed=5 ADD=7 COMMIT" \
    "$(head -n 1 "$SCRATCH/plan.sql")|$(grep -c 'sequential' "$SCRATCH/plan.sql") DROP=$(grep -c 'DROP CONSTRAINT' "$SCRATCH/plan.sql") reference=$(grep -c 'create_reference_table' "$SCRATCH/plan.sql") distributed=$(grep -c 'create_distributed_table' "$SCRATCH/plan.sql") ADD=$(grep -c 'ADD CONSTRAINT' "$SCRATCH/plan.sql") $(tail -n 1 "$SCRATCH/plan.sql")"
# As the README runs it: psql's \gexec, each statement on its own, in step order.
if echo "SELECT statement FROM tenant_backfill.distribution_plan('company_id') ORDER BY step \\gexec" \
    | mt2 -q >"$SCRATCH/plan.out" 2>&1; then
    pass "every statement of the plan runs, in order"
else
    fail "every statement of the plan runs, in order" "success" "$(grep -m 3 ERROR "$SCRATCH/plan.out")"
fi
assert_eq "Citus holds them as planned, all colocated with companies" \
    "companies|distributed|id countries|reference|<none> customers|distributed|company_id invoices|distributed|company_id notes|distributed|company_id orders|distributed|company_id" \
    "$(mt2_val "SELECT string_agg(concat_ws('|', table_name, citus_table_type, distribution_column), ' ' ORDER BY table_name::text) FROM citus_tables")"
assert_eq "one colocation group for the distributed tables" 1 \
    "$(mt2_val "SELECT count(DISTINCT colocation_id) FROM citus_tables WHERE citus_table_type = 'distributed'")"
for t in customers orders notes invoices countries companies; do mt2 -q -c "SELECT truncate_local_data_after_distributing_table('$t')" >/dev/null 2>&1 || true; done
assert_eq "every foreign key and every row still there" "$before" \
    "$(mt2_val "SELECT (SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text IN $TABLES) || '|' ||
                       (SELECT sum(n) FROM (SELECT count(*) n FROM customers UNION ALL SELECT count(*) FROM orders
                                            UNION ALL SELECT count(*) FROM notes UNION ALL SELECT count(*) FROM invoices
                                            UNION ALL SELECT count(*) FROM companies UNION ALL SELECT count(*) FROM countries) x)")"
assert_eq "the foreign keys hold on the shards: an order of another company's customer is refused" "refused" \
    "$(mt2 -tAq -c "INSERT INTO orders VALUES (1000, 1, 2)" >/dev/null 2>&1 && echo accepted || echo refused)"
settings=$(mt2_val "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'settings'::regclass")
assert_eq "settings stays local" 0 "$settings"

[ -n "${KEEP:-}" ] && { trap - EXIT; echo "kept $PRIMARY port $PORT"; }
finish
