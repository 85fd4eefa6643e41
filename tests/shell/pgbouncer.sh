#!/usr/bin/env bash
# tenant_backfill behind Debian's pgbouncer in pool_mode = transaction: the client's
# server connection changes from one transaction to the next, and several clients share
# two (or one) server connections. CALL run, run_now, start/pause/resume/wait and the
# guard's assign mode with SET LOCAL, each checked for exact results.
# Run by scripts/test as: pgbouncer.sh VERSION (the extension installed into that version).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PGBOUNCER=/usr/sbin/pgbouncer
if [ ! -x "$PGBOUNCER" ]; then
    install_apt_packages || true
fi
if [ ! -x "$PGBOUNCER" ]; then
    echo "SKIPPED: $PGBOUNCER is missing and Debian's pgbouncer package could not be installed"
    finish
    exit
fi

primary_start pgbouncer
sql -q >/dev/null <<'SQL'
CREATE EXTENSION tenant_backfill;
-- As in operated_runs.sh: the even customers have a company, the odd ones two agreeing
-- appointments, and every 50th of those a third that disagrees (a conflict).
CREATE FUNCTION make_copy(name text, n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE %I (id bigint PRIMARY KEY, company_id int, name text)', name);
    EXECUTE format('CREATE TABLE %I (id bigserial PRIMARY KEY, customer_id bigint, company_id int)', name || '_appts');
    EXECUTE format('INSERT INTO %I SELECT i, CASE WHEN i %% 2 = 0 THEN i %% 7 + 1 END, ''c'' || i FROM generate_series(1, %s) i', name, n);
    EXECUTE format('INSERT INTO %I (customer_id, company_id) SELECT i, i %% 5 + 1 FROM generate_series(1, %s) i, generate_series(1, 2)', name || '_appts', n);
    EXECUTE format('INSERT INTO %I (customer_id, company_id) SELECT i, i %% 5 + 2 FROM generate_series(1, %s) i WHERE i %% 50 = 1', name || '_appts', n);
    EXECUTE format('CREATE INDEX ON %I (customer_id)', name || '_appts');
    PERFORM tenant_backfill.define(name::regclass, 'company_id');
    PERFORM tenant_backfill.add_source(name::regclass, (name || '_appts')::regclass, 'customer_id');
END
$$;
SELECT make_copy('reference', 4000);
SELECT run_id FROM tenant_backfill.run_now('reference');
-- Rows that differ from run_now's result, and changed rows not audited exactly once.
CREATE FUNCTION differs(name text, run bigint) RETURNS TABLE (differing bigint, audited_wrongly bigint)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT (SELECT count(*) FROM %I t FULL JOIN reference r USING (id)
                  WHERE t.company_id IS DISTINCT FROM r.company_id),
                (SELECT count(*) FROM (SELECT row_key FROM tenant_backfill.audit_log WHERE run_id = $1
                                        GROUP BY row_key HAVING count(*) <> 1) a)
              + abs((SELECT count(*) FROM tenant_backfill.audit_log WHERE run_id = $1)
                    - (SELECT rows_changed FROM tenant_backfill.runs WHERE run_id = $1))', name) USING run;
END
$$;
SQL

# pgbouncer as user postgres, on a unix socket in the scratch directory only. Database
# "test" has a pool of 2 server connections, "pinned" (the same database) a pool of 1,
# so that every client of it shares one server connection.
BOUNCER=$SCRATCH/pgbouncer
BPORT=$((58000 + PGV))
mkdir -p "$BOUNCER"
echo '"postgres" ""' >"$BOUNCER/userlist.txt"
cat >"$BOUNCER/pgbouncer.ini" <<EOF
[databases]
test = host=$PRIMARY port=$PORT dbname=test pool_size=2
pinned = host=$PRIMARY port=$PORT dbname=test pool_size=1

[pgbouncer]
listen_addr =
listen_port = $BPORT
unix_socket_dir = $BOUNCER
auth_type = trust
auth_file = $BOUNCER/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = 2
max_client_conn = 100
logfile = $BOUNCER/pgbouncer.log
pidfile = $BOUNCER/pgbouncer.pid
EOF
chown -R postgres:postgres "$BOUNCER"
pgbouncer_stop() {
    [ -f "$BOUNCER/pgbouncer.pid" ] && kill "$(cat "$BOUNCER/pgbouncer.pid")" 2>/dev/null || true
}
trap 'pgbouncer_stop; cleanup' EXIT
if ! sudo -u postgres "$PGBOUNCER" -d "$BOUNCER/pgbouncer.ini"; then
    cat "$BOUNCER/pgbouncer.log" 2>/dev/null || true
    fail "pgbouncer starts" "it runs" "it did not start"
    finish || exit 1
fi

# Through pgbouncer: bsql/bval on database test, pinned_val on database pinned, admin on
# pgbouncer's console. PGAPPNAME names the client.
bsql() { sudo -u postgres env PGAPPNAME="${PGAPPNAME:-psql}" "$BIN/psql" -X -v ON_ERROR_STOP=1 -h "$BOUNCER" -p "$BPORT" -U postgres -d "${BDB:-test}" "$@"; }
bval() { bsql -tAq -c "$1"; }
pinned_val() { BDB=pinned bval "$1"; }
admin() { BDB=pgbouncer bsql -tA -c "$1"; }
# bfails WHAT MESSAGE SQL [DATABASE]: the SQL fails through pgbouncer with MESSAGE.
bfails() {
    local out
    if out=$(BDB=${4:-test} bsql -tAq -c "$3" 2>&1); then
        fail "$1" "an error: $2" "success: $out"
    else
        assert_contains "$1" "$2" "$out"
    fi
}
test_servers() { admin "SHOW SERVERS" | awk -F'|' '$3 == "test"' | wc -l; }
for i in $(seq 1 100); do bval "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done

section "pgbouncer pools: clients share two server connections"
assert_eq "a query through pgbouncer reaches the primary" "test|postgres" "$(bval "SELECT current_database(), current_user")"
for i in 1 2 3 4 5 6; do bval "SELECT pg_backend_pid(), pg_sleep(0.4)" & done >"$SCRATCH/pids"
wait
assert_eq "6 concurrent clients, 2 server backends" "2" "$(cut -d'|' -f1 "$SCRATCH/pids" | sort -u | wc -l)"
assert_eq "pgbouncer holds 2 server connections for test" "2" "$(test_servers)"
assert_eq "one transaction of a client: one backend; the next may be another" "t" "$(bsql -tAq <<'SQL'
BEGIN;
SELECT pg_backend_pid() AS first \gset
SELECT pg_sleep(0.1) \g /dev/null
SELECT pg_backend_pid() = :first;
COMMIT;
SQL
)"
# Transaction mode: a client that stays connected, idle between its transactions, holds no
# server connection. On "pinned" (one server connection) another client is served meanwhile.
BDB=pinned bsql -tAq >"$SCRATCH/idle" <<'SQL' &
SELECT pg_backend_pid();
\! sleep 2
SELECT pg_backend_pid();
SQL
idle=$!
sleep 0.5
t0=$(date +%s%N)
other=$(pinned_val "SELECT pg_backend_pid()")
took_ms=$((($(date +%s%N) - t0) / 1000000))
wait "$idle"
assert_true "a second client is served while the first is connected and idle (${took_ms} ms)" \
    "$([ "$took_ms" -lt 1000 ] && echo t || echo f)"
assert_eq "both clients' transactions ran on the one server connection" "$other $other" "$(tr '\n' ' ' <"$SCRATCH/idle" | sed 's/ $//')"

section "CALL run through pgbouncer, while other clients watch it"
quiet "SELECT make_copy('called', 4000)"
bsql -c "CALL tenant_backfill.run('called', batch_size => 100, pause_ms => 40)" >"$SCRATCH/called.out" 2>&1 &
caller=$!
# CALL run keeps its server connection until it returns: the other clients share the other.
seen=0
for i in $(seq 1 200); do
    state=$(PGAPPNAME=watcher$((i % 4)) bval "SELECT state FROM tenant_backfill.progress WHERE target = 'called'::regclass")
    [ "$state" = running ] && seen=$((seen + 1))
    [ "$state" = done ] && break
    sleep 0.05
done
wait "$caller" && called_rc=0 || called_rc=$?
assert_eq "CALL run returned" "0" "$called_rc"
assert_true "other clients saw it running through the pool ($seen times)" "$([ "$seen" -ge 3 ] && echo t || echo f)"
assert_contains "its progress NOTICE reaches the client through pgbouncer" \
    "NOTICE:  tenant_backfill: run 2 of public.called done: 2000/2000 rows (100.0%), 1920 changed, 80 left for review" \
    "$(cat "$SCRATCH/called.out")"
assert_eq "run 2 done, 1920 changed" "run|done|1920" "$(val "SELECT kind, status, rows_changed FROM tenant_backfill.runs WHERE run_id = 2")"
assert_eq "same rows as run_now, each change audited once" "0|0" "$(val "SELECT * FROM differs('called', 2)")"
assert_eq "still 2 server connections for test" "2" "$(test_servers)"
bfails "CALL run inside BEGIN through pgbouncer: 25001" "cannot run inside a transaction block" \
    "BEGIN; CALL tenant_backfill.run('called')"
assert_eq "and it recorded no run" "2" "$(val "SELECT max(run_id) FROM tenant_backfill.runs")"

section "run_now through pgbouncer, in a client's transaction"
quiet "SELECT make_copy('now', 4000)"
assert_eq "run_now rolled back with its transaction writes nothing" "2000" "$(bsql -tAq <<'SQL'
BEGIN;
SELECT FROM tenant_backfill.run_now('now');
ROLLBACK;
SELECT count(*) FROM now WHERE company_id IS NULL;
SQL
)"
assert_eq "run_now in a transaction of two statements" "4|1920|{\"1\": 1920}|80
80" "$(bsql -tAq <<'SQL'
BEGIN;
SELECT * FROM tenant_backfill.run_now('now');
SELECT count(*) FROM now WHERE company_id IS NULL;
COMMIT;
SQL
)"
assert_eq "the rolled-back run left no run behind" "3|" "$(val "SELECT count(*), string_agg(run_id::text, ',') FILTER (WHERE run_id = 3) FROM tenant_backfill.runs")"
assert_eq "same rows as run_now, each change audited once" "0|0" "$(val "SELECT * FROM differs('now', 4)")"
assert_eq "seen as committed by another client" "80" "$(PGAPPNAME=other bval "SELECT count(*) FROM now WHERE company_id IS NULL")"

section "start, pause, resume and wait through pgbouncer, each from another client"
quiet "SELECT make_copy('started', 4000)"
run=$(PGAPPNAME=starter bval "SELECT tenant_backfill.start('started', batch_size => 100, pause_ms => 50)")
assert_eq "start returned run 5" "5" "$run"
wait_until "SELECT rows_done > 0 FROM tenant_backfill.progress WHERE run_id = $run"
PGAPPNAME=pauser bval "SELECT tenant_backfill.pause($run)" >/dev/null
assert_eq "wait returns paused" "paused" "$(PGAPPNAME=waiter bval "SELECT tenant_backfill.wait($run)")"
assert_true "it had done part of the work" \
    "$(bval "SELECT rows_done > 0 AND rows_done < rows_total FROM tenant_backfill.progress WHERE run_id = $run")"
PGAPPNAME=resumer bval "SELECT tenant_backfill.resume($run)" >/dev/null
assert_eq "wait returns done" "done" "$(PGAPPNAME=waiter bval "SELECT tenant_backfill.wait($run, '30 seconds')")"
assert_eq "done, 1920 changed, 100%" "done|1920|100.0" "$(val "SELECT p.state, r.rows_changed, p.percent
    FROM tenant_backfill.progress p JOIN tenant_backfill.runs r USING (run_id) WHERE run_id = $run")"
assert_eq "same rows as run_now, each change audited once" "0|0" "$(val "SELECT * FROM differs('started', $run)")"
assert_eq "the worker is gone" "0" "$(val "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenant_backfill run'")"

section "a CALL run cancelled on a pooled connection leaves nothing there; the next client resumes it"
quiet "SELECT make_copy('cancelled', 4000)"
# On "pinned": the next client gets the very server connection the cancelled CALL ran on.
BDB=pinned PGAPPNAME=runner bsql -c "CALL tenant_backfill.run('cancelled', batch_size => 100, pause_ms => 50)" \
    >"$SCRATCH/cancelled.out" 2>&1 &
runner=$!
wait_until "SELECT rows_done > 0 FROM tenant_backfill.progress WHERE target = 'cancelled'::regclass"
run=$(val "SELECT run_id FROM tenant_backfill.runs WHERE target = 'cancelled'::regclass")
backend=$(val "SELECT pid FROM tenant_backfill.runs WHERE run_id = $run")
quiet "SELECT pg_cancel_backend($backend)"
wait "$runner" && runner_rc=0 || runner_rc=$?
assert_eq "the CALL fails on the cancel" "1" "$runner_rc"
assert_contains "with Postgres' own error" "canceling statement due to user request" "$(cat "$SCRATCH/cancelled.out")"
assert_eq "the run reads failed, part of it done" "failed|t" \
    "$(val "SELECT state, rows_done > 0 AND rows_done < rows_total FROM tenant_backfill.progress WHERE run_id = $run")"
assert_eq "the next client has that server connection: no lock of the run, its own application_name" "$backend|0|next" \
    "$(BDB=pinned PGAPPNAME=next bval "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_locks
                                          WHERE locktype = 'advisory' AND pid = pg_backend_pid()), current_setting('application_name')")"
assert_contains "CALL run again resumes the same run to its end" "NOTICE:  tenant_backfill: run $run of public.cancelled done:" \
    "$(BDB=pinned bsql -c "CALL tenant_backfill.run('cancelled', batch_size => 100)" 2>&1)"
assert_eq "one run, done, 1920 changed" "1|done|1920" \
    "$(val "SELECT count(*), min(status), min(rows_changed) FROM tenant_backfill.runs WHERE target = 'cancelled'::regclass")"
assert_eq "same rows as run_now, each change audited once" "0|0" "$(val "SELECT * FROM differs('cancelled', $run)")"

section "an error that ends CALL run between its batches' blocks releases the run lock too"
# A cancel that lands on the statement PL/pgSQL runs between a batch's COMMIT and the
# next block ends the procedure outside every block: made certain here with a DO block
# that begins a run as CALL run does, commits, and fails.
quiet "SELECT make_copy('escaped', 100)"
escaped=$(BDB=pinned PGAPPNAME=escaper bsql -tAq -v ON_ERROR_STOP=0 2>&1 <<'SQL'
DO $$
BEGIN
    PERFORM tenant_backfill_internal._run_begin('escaped', 100, 0, 'fill', false, 1000, 100, '10 seconds', 268435456);
    COMMIT;
    RAISE EXCEPTION 'the procedure ends here';
END $$;
SELECT 'locks held after the error: ' || count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
SQL
)
assert_contains "the error reaches the client" "the procedure ends here" "$escaped"
assert_contains "the session holds no run lock after it" "locks held after the error: 0" "$escaped"
assert_eq "the run reads failed, nothing done" "failed|0" \
    "$(val "SELECT state, rows_done FROM tenant_backfill.progress WHERE target = 'escaped'::regclass")"
assert_contains "CALL run resumes it to its end" "done:" \
    "$(BDB=pinned bsql -c "CALL tenant_backfill.run('escaped', batch_size => 100)" 2>&1)"
assert_eq "one run, done" "1|done" "$(val "SELECT count(*), min(status) FROM tenant_backfill.runs WHERE target = 'escaped'::regclass")"

section "the guard's assign mode: SET LOCAL stays in its transaction"
quiet "SELECT make_copy('guarded', 100)"
assert_eq "enforce through pgbouncer" "" "$(bval "SELECT tenant_backfill.enforce('guarded', 'assign')" 2>/dev/null)"
# On "pinned" every client shares one server connection.
first=$(BDB=pinned PGAPPNAME=client_a bsql -tAq <<'SQL'
BEGIN;
SET LOCAL tenant_backfill.tenant = '3';
INSERT INTO guarded (id, name) VALUES (1001, 'a') RETURNING company_id, pg_backend_pid();
COMMIT;
SQL
)
assert_eq "SET LOCAL assigns the tenant in its transaction" "3" "${first%%|*}"
assert_eq "the next client gets that very server connection, without the setting" "${first#*|}|" \
    "$(pinned_val "SELECT pg_backend_pid(), current_setting('tenant_backfill.tenant', true)")"
bfails "its insert without a tenant is rejected" \
    'null value in column "company_id" of relation public.guarded violates the tenant_backfill guard' \
    "INSERT INTO guarded (id, name) VALUES (1002, 'b')" pinned
# Twelve clients at once on a pool of two: six with SET LOCAL (tenants 11-16), six without.
for k in 1 2 3 4 5 6; do
    PGAPPNAME=setter$k bsql -tAq -c "BEGIN" -c "SET LOCAL tenant_backfill.tenant = '1$k'" \
        -c "INSERT INTO guarded (id, name) SELECT 200$k, 'x' FROM pg_sleep(0.1)" -c "COMMIT" >/dev/null 2>&1 &
    PGAPPNAME=plain$k bsql -tAq -c "INSERT INTO guarded (id, name) SELECT 300$k, 'y' FROM pg_sleep(0.1)" >/dev/null 2>&1 &
done
wait
assert_eq "each SET LOCAL client got its own tenant" "2001:11 2002:12 2003:13 2004:14 2005:15 2006:16" \
    "$(val "SELECT string_agg(id || ':' || company_id, ' ' ORDER BY id) FROM guarded WHERE id BETWEEN 2000 AND 2999")"
assert_eq "no insert without a setting got in" "0" "$(val "SELECT count(*) FROM guarded WHERE id BETWEEN 3000 AND 3999")"
assert_eq "the assignments are recorded with each client's application_name" \
    "1001:client_a 2001:setter1 2002:setter2 2003:setter3 2004:setter4 2005:setter5 2006:setter6" \
    "$(val "SELECT string_agg(row_key || ':' || application_name, ' ' ORDER BY row_key)
              FROM tenant_backfill.violations WHERE target = 'guarded'::regclass AND action = 'assigned'")"

section "a session-level SET does leak to the next client (why SET LOCAL)"
pinned_val "SET tenant_backfill.tenant = '7'" >/dev/null
assert_eq "another client's insert without a tenant gets 7" "7" \
    "$(BDB=pinned PGAPPNAME=client_b bval "INSERT INTO guarded (id, name) VALUES (1003, 'c') RETURNING company_id")"
pinned_val "RESET tenant_backfill.tenant" >/dev/null
bfails "after RESET it is rejected again" "violates the tenant_backfill guard" \
    "INSERT INTO guarded (id, name) VALUES (1004, 'd')" pinned
assert_eq "guarded has exactly the assigned rows" "1001,1003,2001,2002,2003,2004,2005,2006" \
    "$(val "SELECT string_agg(id::text, ',' ORDER BY id) FROM guarded WHERE id > 100")"
assert_eq "pgbouncer kept its pools: at most 2 + 1 server connections" "2|1" \
    "$(admin "SHOW SERVERS" | awk -F'|' '{n[$3]++} END {printf "%d|%d", n["test"], n["pinned"]}')"

finish
