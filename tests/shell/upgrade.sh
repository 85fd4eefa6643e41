#!/usr/bin/env bash
# ALTER EXTENSION tenant_backfill UPDATE from every shipped release, on a real cluster with
# that release's own library: the data survives, runs made before the update can be rolled
# back after it, the guard keeps guarding, and the upgraded database holds exactly what a
# fresh install of the current release holds (tests/fixtures/upgrade/fingerprint.sql).
# Run by scripts/test as: upgrade.sh VERSION (the current release installed into it).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Every shipped release: its version and the commit whose install script
# sql/tenant_backfill--<version>.sql is. Add a line when a release ships.
RELEASES=(
    "0.1.0 6597aff183e8621a3895336f4259bf3c2ad0090a"
)
CURRENT=$(sed -nE 's/^version = "(.*)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -n 1)
PG_CONFIG=$(pg_config_for "$PGV")
PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)

# release_library VERSION COMMIT: builds that release's library from git and installs only
# the library (its control file and scripts would replace the current release's), under
# the name its install script loads. The build shares target/ with the current one, so
# only the crate itself compiles; the sources get fresh times so cargo cannot take an
# artefact of other sources with the same version for theirs.
release_library() {
    local version=$1 commit=$2 src="$SCRATCH/src-$1" lib name
    if ! git -C "$REPO_ROOT" cat-file -e "$commit^{commit}" 2>/dev/null; then
        echo "release $version: commit $commit is not in this clone (a shallow clone?)" >&2
        return 1
    fi
    mkdir -p "$src"
    git -C "$REPO_ROOT" archive "$commit" | tar -x -m -C "$src"
    (cd "$src" && CARGO_TARGET_DIR="$REPO_ROOT/target" cargo pgrx package --debug --pg-config "$PG_CONFIG" \
        --no-default-features --features "pg$PGV" --out-dir "$SCRATCH/package-$version" >"$SCRATCH/build-$version.log" 2>&1) || {
        tail -n 30 "$SCRATCH/build-$version.log" >&2
        return 1
    }
    lib=$(find "$SCRATCH/package-$version" -name 'tenant_backfill*.so' | head -n 1)
    name=$(basename "$lib")
    # The current release's library has another name; never overwrite it.
    [ "$name" != "tenant_backfill-$CURRENT.so" ] || { echo "release $version ships $name" >&2; return 1; }
    install -m 755 "$lib" "$PKGLIBDIR/$name"
    echo "$name"
}

primary_start upgrade
fresh_fingerprint() {
    sudo -u postgres "$BIN/createdb" -h "$PRIMARY" -p "$PORT" -U postgres fresh
    sudo -u postgres "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PRIMARY" -p "$PORT" -U postgres -d fresh \
        -c "CREATE EXTENSION tenant_backfill" -f "$REPO_ROOT/tests/fixtures/upgrade/fingerprint.sql"
}
# What ships says which release it is in every place that names one.
assert_eq "META.json and the control file's default name the release of Cargo.toml" "$CURRENT $CURRENT $CURRENT" \
    "$(python3 -c "import json; m = json.load(open('$REPO_ROOT/META.json')); print(m['version'], m['provides']['tenant_backfill']['version'])") $(
        grep -oE "tenant_backfill-[0-9.]+'" "$REPO_ROOT/sql/guard.sql" | tr -d "'" | sed 's/tenant_backfill-//')"
FRESH=$(fresh_fingerprint)
assert_contains "a fresh install is the current release" "version | $CURRENT | f | tenant_backfill" "$FRESH"

for release in "${RELEASES[@]}"; do
    read -r version commit <<<"$release"
    section "from $version"
    old_library=$(release_library "$version" "$commit") || { fail "build the $version library" "built" "failed"; continue; }
    db="from_${version//./_}"
    sudo -u postgres "$BIN/createdb" -h "$PRIMARY" -p "$PORT" -U postgres "$db"
    in_db() { sudo -u postgres "$BIN/psql" -X -v ON_ERROR_STOP=1 -h "$PRIMARY" -p "$PORT" -U postgres -d "$db" "$@"; }
    in_db_val() { in_db -tAq -c "$1"; }

    # The update from 0.1.0 rewrites three columns of backup and audit_log as text: a view
    # of the user's over one of them stops it (0A000, README "Upgrading"), nothing of it
    # done, and once the view is dropped it goes through. It drops audit_log's primary
    # key too: a foreign key of the user's to it stops it the same way (2BP01).
    blocked_by_view=""
    if [ "$version" = 0.1.0 ]; then
        blocked_by_view="CREATE VIEW who_changed AS SELECT changed_by FROM tenant_backfill.audit_log;
DO \$\$ BEGIN ALTER EXTENSION tenant_backfill UPDATE;
EXCEPTION WHEN others THEN RAISE NOTICE 'blocked|%|%', SQLSTATE, SQLERRM; END \$\$;
SELECT 'still', extversion FROM pg_extension WHERE extname = 'tenant_backfill';
DROP VIEW who_changed;
CREATE TABLE audit_notes (audit_id bigint REFERENCES tenant_backfill.audit_log (audit_id));
DO \$\$ BEGIN ALTER EXTENSION tenant_backfill UPDATE;
EXCEPTION WHEN others THEN RAISE NOTICE 'blocked by a key|%|%', SQLSTATE, SQLERRM; END \$\$;
SELECT 'still after the key', extversion FROM pg_extension WHERE extname = 'tenant_backfill';
DROP TABLE audit_notes;"
    fi

    # One session does everything a user of the old release did, then updates: the old
    # library is loaded in it when the new one arrives.
    out=$(in_db -tAq 2>&1 <<SQL
CREATE EXTENSION tenant_backfill VERSION '$version';
CREATE TABLE companies (id int PRIMARY KEY);
INSERT INTO companies SELECT generate_series(1, 5);
CREATE TABLE customers (id bigint PRIMARY KEY, company_id int, name text);
CREATE TABLE appointments (id bigserial PRIMARY KEY, customer_id bigint, company_id int);
INSERT INTO customers SELECT i, CASE WHEN i % 2 = 0 THEN i % 5 + 1 END, 'c' || i FROM generate_series(1, 3000) i;
INSERT INTO appointments (customer_id, company_id) SELECT i, i % 5 + 1 FROM generate_series(1, 3000) i;
CREATE TABLE orders (id bigint PRIMARY KEY, company_id int);
INSERT INTO orders SELECT i, CASE WHEN i % 3 <> 0 THEN i % 5 + 1 END FROM generate_series(1, 900) i;
CREATE TABLE order_lines (id bigserial PRIMARY KEY, order_id bigint, company_id int);
INSERT INTO order_lines (order_id, company_id) SELECT i, i % 5 + 1 FROM generate_series(1, 900) i;
SELECT tenant_backfill.define('customers', 'company_id');
SELECT tenant_backfill.add_source('customers', 'appointments', 'customer_id');
SELECT tenant_backfill.define('orders', 'company_id');
SELECT tenant_backfill.add_source('orders', 'order_lines', 'order_id');
SELECT 'run_now', run_id, rows_changed FROM tenant_backfill.run_now('customers');
SELECT 'nulls', count(*) FROM orders WHERE company_id IS NULL;
SELECT 'started', tenant_backfill.start('orders', batch_size => 50) IS NOT NULL;
SELECT 'waited', tenant_backfill.wait((SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'orders'::regclass));
SELECT 'enforced', tenant_backfill.enforce('orders');
SELECT 'old library', count(DISTINCT probin), min(probin) FROM pg_proc
 WHERE pronamespace::regnamespace::text LIKE 'tenant_backfill%' AND prolang = (SELECT oid FROM pg_language WHERE lanname = 'c');
-- A run the old release left paused in its second pass (made by hand: the old release
-- keeps no keys of the rows its passes skipped, so the update says it).
INSERT INTO tenant_backfill.runs (target, target_name, kind, mode, status, pass, rows_skipped)
VALUES ('customers', 'public.customers', 'run', 'fill', 'paused', 2, 1);
$blocked_by_view
ALTER EXTENSION tenant_backfill UPDATE;
SELECT 'updated', extversion FROM pg_extension WHERE extname = 'tenant_backfill';
UPDATE tenant_backfill.runs SET status = 'cancelled' WHERE status = 'paused' AND pass = 2;
SELECT 'new library', count(DISTINCT probin), min(probin) FROM pg_proc
 WHERE pronamespace::regnamespace::text LIKE 'tenant_backfill%' AND prolang = (SELECT oid FROM pg_language WHERE lanname = 'c');
SQL
    ) || true
    assert_contains "$version: run_now filled the 1500 NULL customers" "run_now|1|1500" "$out"
    assert_contains "$version: a background run of its own library finished" "nulls|300
started|t
waited|done" "$out"
    assert_contains "$version: every C function in its library" "old library|1|${old_library%.so}" "$out"
    if [ "$version" = 0.1.0 ]; then
        assert_contains "$version: a view over audit_log.changed_by stops the update" \
            "blocked|0A000|cannot alter type of a column used by a view or rule" "$out"
        assert_contains "$version: the stopped update left $version in place" "still|$version" "$out"
        assert_contains "$version: a foreign key to audit_log's primary key stops the update" \
            "blocked by a key|2BP01|cannot drop constraint audit_log_pkey on table audit_log" "$out"
        assert_contains "$version: that stopped update left $version in place too" "still after the key|$version" "$out"
    fi
    assert_contains "$version: the update in the same session" "updated|$CURRENT" "$out"
    assert_contains "$version: the update names a run left unfinished in a later pass" \
        "of public.customers is unfinished in pass 2 with 1 rows skipped in it: resumed, it does not try again the rows it skipped before this update" "$out"
    assert_contains "$version: every C function moved to the current library" "new library|1|tenant_backfill-$CURRENT" "$out"

    # The next sessions load only the current library.
    assert_eq "$version: the data survived the update" "0|0|1500" \
        "$(in_db_val "SELECT (SELECT count(*) FROM customers WHERE company_id IS NULL),
                             (SELECT count(*) FROM orders WHERE company_id IS NULL),
                             (SELECT count(*) FROM tenant_backfill.audit_log WHERE run_id = 1)")"
    assert_contains "$version: the guard installed before still rejects a NULL tenant" "ERROR:  23502" \
        "$(in_db -tAq -v VERBOSITY=verbose -c "INSERT INTO orders VALUES (100000, NULL)" 2>&1)"
    assert_eq "$version: a run made before the update rolls back after it" "1500|0|1500" \
        "$(in_db_val "SELECT restored || '|' || skipped FROM tenant_backfill.rollback(1)")|$(in_db_val \
            "SELECT count(*) FROM customers WHERE company_id IS NULL")"
    assert_eq "$version: the current library backfills again" "1500" \
        "$(in_db_val "SELECT rows_changed FROM tenant_backfill.run_now('customers')")"
    orders_run=$(in_db_val "SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'orders'::regclass")
    quiet_db() { in_db -q -c "$1" >/dev/null; }
    quiet_db "SELECT tenant_backfill.unenforce('orders')"
    assert_eq "$version: the background run of the old release rolls back with the new" "300|0|300" \
        "$(in_db_val "SELECT restored || '|' || skipped FROM tenant_backfill.rollback($orders_run)")|$(in_db_val \
            "SELECT count(*) FROM orders WHERE company_id IS NULL")"
    orders_run=$(in_db_val "SELECT tenant_backfill.start('orders', batch_size => 50)")
    assert_eq "$version: a background run on the current library" "done|300" \
        "$(in_db_val "SELECT tenant_backfill.wait($orders_run)")|$(in_db_val \
            "SELECT rows_changed FROM tenant_backfill.runs WHERE run_id = $orders_run")"

    upgraded=$(in_db -q -f "$REPO_ROOT/tests/fixtures/upgrade/fingerprint.sql")
    if [ "$upgraded" = "$FRESH" ]; then
        pass "$version: the upgraded extension is identical to a fresh install"
    else
        fail "$version: the upgraded extension is identical to a fresh install" "no difference" \
            "$(diff <(echo "$FRESH") <(echo "$upgraded") | head -n 40)"
    fi
    rm -f "$PKGLIBDIR/$old_library"
done

[ -n "${KEEP:-}" ] && { trap - EXIT; echo "kept $PRIMARY port $PORT"; }
finish
