#!/usr/bin/env bash
# Background runs against a real cluster and a real streaming replica: what pg_regress
# cannot show, because it needs other sessions, a client that goes away, a killed
# worker and a standby. Run by scripts/test as: operated_runs.sh VERSION
# (the extension installed into that version, no shared_preload_libraries).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

primary_start operated
sql -q >/dev/null <<'SQL'
CREATE EXTENSION tenant_backfill;
-- The lean schema: no index on the tenant column, no foreign keys; a unanimous source.
-- Every copy gets the same rows, so each background run can be compared with run_now.
CREATE FUNCTION make_copy(name text, n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE %I (id bigint PRIMARY KEY, company_id int, name text)', name);
    EXECUTE format('CREATE TABLE %I (id bigserial PRIMARY KEY, customer_id bigint, company_id int)', name || '_appts');
    EXECUTE format('INSERT INTO %I SELECT i, CASE WHEN i %% 2 = 0 THEN i %% 7 + 1 END, ''c'' || i FROM generate_series(1, %s) i', name, n);
    -- Odd customers: two agreeing appointments; every 50th disagrees (a conflict).
    EXECUTE format('INSERT INTO %I (customer_id, company_id) SELECT i, i %% 5 + 1 FROM generate_series(1, %s) i, generate_series(1, 2)', name || '_appts', n);
    EXECUTE format('INSERT INTO %I (customer_id, company_id) SELECT i, i %% 5 + 2 FROM generate_series(1, %s) i WHERE i %% 50 = 1', name || '_appts', n);
    EXECUTE format('CREATE INDEX ON %I (customer_id)', name || '_appts');
    PERFORM tenant_backfill.define(name::regclass, 'company_id');
    PERFORM tenant_backfill.add_source(name::regclass, (name || '_appts')::regclass, 'customer_id');
END
$$;
SELECT make_copy('reference', 20000);
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

section "start returns at once; the run outlives the client that started it"
quiet "SELECT make_copy('walkaway', 20000)"
run=$(val "SELECT tenant_backfill.start('walkaway', batch_size => 500, pause_ms => 20)")
# The psql above has disconnected; the worker goes on.
assert_eq "worker named in pg_stat_activity" "tenant_backfill run $run (public.walkaway)" \
    "$(val "SELECT application_name FROM pg_stat_activity WHERE backend_type = 'tenant_backfill run'")"
assert_eq "alive and running" "running|t" \
    "$(val "SELECT state, alive FROM tenant_backfill.progress WHERE run_id = $run")"
assert_eq "wait returns the final state" "done" "$(val "SELECT tenant_backfill.wait($run)")"
assert_eq "same rows as run_now, each change audited once" "0|0" "$(val "SELECT * FROM differs('walkaway', $run)")"
assert_eq "done, no process, 100%" "done|f||100.0" \
    "$(val "SELECT state, alive, pid, percent FROM tenant_backfill.progress WHERE run_id = $run")"

section "pause holds nothing; resume goes on from where it stopped"
quiet "SELECT make_copy('paused', 20000)"
run=$(val "SELECT tenant_backfill.start('paused', batch_size => 500, pause_ms => 50)")
wait_until "SELECT rows_done > 0 FROM tenant_backfill.progress WHERE run_id = $run"
quiet "SELECT tenant_backfill.pause($run)"
assert_eq "wait returns paused" "paused" "$(val "SELECT tenant_backfill.wait($run)")"
assert_eq "paused: no worker, no lock, no transaction" "0|0" "$(val "
    SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenant_backfill run'),
           (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 'paused'::regclass::oid)")"
done_at_pause=$(val "SELECT rows_done FROM tenant_backfill.progress WHERE run_id = $run")
sleep 0.5
assert_eq "no progress while paused" "$done_at_pause" "$(val "SELECT rows_done FROM tenant_backfill.progress WHERE run_id = $run")"
assert_true "it had done part of the work" "$(val "SELECT rows_done > 0 AND rows_done < rows_total FROM tenant_backfill.progress WHERE run_id = $run")"
quiet "SELECT tenant_backfill.resume($run)"
assert_eq "resumed to the end" "done" "$(val "SELECT tenant_backfill.wait($run)")"
assert_eq "same rows as run_now, each change audited once" "0|0" "$(val "SELECT * FROM differs('paused', $run)")"

section "a terminated worker reads alive = false at once; resume finishes the run"
quiet "SELECT make_copy('killed', 20000)"
run=$(val "SELECT tenant_backfill.start('killed', batch_size => 500, pause_ms => 50)")
wait_until "SELECT rows_done > 0 FROM tenant_backfill.progress WHERE run_id = $run"
quiet "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'tenant_backfill run'"
wait_until "SELECT NOT alive FROM tenant_backfill.progress WHERE run_id = $run"
assert_eq "status running, state failed, not alive, no eta" "running|failed|f|" \
    "$(val "SELECT status, state, alive, eta FROM tenant_backfill.progress WHERE run_id = $run")"
assert_eq "wait does not wait for a dead run" "failed|t" \
    "$(val "SELECT tenant_backfill.wait($run, '5 seconds'), clock_timestamp() - now() < interval '1 second'")"
quiet "SELECT tenant_backfill.pause($run)"
assert_eq "a run nothing drives is paused at once" "paused|paused|f" \
    "$(val "SELECT status, state, alive FROM tenant_backfill.progress WHERE run_id = $run")"
quiet "SELECT tenant_backfill.resume($run)"
assert_eq "resumed to the end" "done" "$(val "SELECT tenant_backfill.wait($run)")"
assert_eq "same rows as run_now, each change audited once" "0|0" "$(val "SELECT * FROM differs('killed', $run)")"

section "a run that ends between the view's read of its row and of the lock table reads ended, not failed"
# A cursor reads the view in the snapshot of its DECLARE and the lock table when it
# fetches: the run (made to look running again, under a pid that holds no lock) ends
# in another session in between. Without a fresh look at the row it reads failed.
quiet "UPDATE tenant_backfill.runs SET status = 'running', pid = 1 WHERE run_id = $run"
assert_eq "running with no process reads failed" "failed|f" \
    "$(val "SELECT state, alive FROM tenant_backfill.progress WHERE run_id = $run")"
rows_done=$(val "SELECT rows_done FROM tenant_backfill.runs WHERE run_id = $run")
# Every column is the ended row's: its status and its counts too.
assert_eq "ended meanwhile: done, with the ended row's status and rows_done" "done|done|$((rows_done + 1))|f" "$(sql -tAq <<SQL
BEGIN;
DECLARE look CURSOR FOR SELECT state, status, rows_done, alive FROM tenant_backfill.progress WHERE run_id = $run;
\\! "$BIN/psql" -X -q -h "$PRIMARY" -p "$PORT" -U postgres -d test -c "UPDATE tenant_backfill.runs SET status = 'done', pid = NULL, rows_done = rows_done + 1 WHERE run_id = $run"
FETCH look;
COMMIT;
SQL
)"

section "cancel stops for good; what was written stays, and rollback undoes it"
quiet "SELECT make_copy('cancelled', 20000)"
run=$(val "SELECT tenant_backfill.start('cancelled', batch_size => 500, pause_ms => 50)")
wait_until "SELECT rows_done > 0 FROM tenant_backfill.progress WHERE run_id = $run"
quiet "SELECT tenant_backfill.cancel($run)"
assert_eq "wait returns cancelled" "cancelled" "$(val "SELECT tenant_backfill.wait($run)")"
assert_true "part of the rows changed, each audited once" "$(val "
    SELECT r.rows_changed > 0 AND r.rows_changed < 10000
           AND r.rows_changed = (SELECT count(DISTINCT row_key) FROM tenant_backfill.audit_log WHERE run_id = $run)
           AND r.rows_changed = (SELECT count(*) FROM tenant_backfill.audit_log WHERE run_id = $run)
      FROM tenant_backfill.runs r WHERE r.run_id = $run")"
assert_fails "a cancelled run is not resumed" "cannot be resumed: it is cancelled" "SELECT tenant_backfill.resume($run)"
quiet "SELECT * FROM tenant_backfill.rollback($run)"
assert_eq "rolled back to where it began" "10000" "$(val "SELECT count(*) FROM cancelled WHERE company_id IS NULL")"

section "two workers split the first pass; the lead takes over a killed helper's part"
quiet "SELECT make_copy('split', 20000)"
run=$(val "SELECT tenant_backfill.start('split', workers => 2, batch_size => 500, pause_ms => 50)")
assert_eq "two workers, both named for the run" "2" \
    "$(val "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenant_backfill run $run (public.split)'")"
assert_eq "two parts of about as many rows" "2|t" "$(val "
    SELECT count(*), bool_and(p.up_to_key::bigint > COALESCE(p.after_key::bigint, 0))
      FROM tenant_backfill.run_parts p WHERE p.run_id = $run")"
wait_until "SELECT last_key IS NOT NULL FROM tenant_backfill.run_parts WHERE run_id = $run AND part = 1"
assert_eq "the helper's part is under way when it is killed" "f" \
    "$(val "SELECT done FROM tenant_backfill.run_parts WHERE run_id = $run AND part = 1")"
quiet "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a, tenant_backfill.runs r
        WHERE r.run_id = $run AND a.backend_type = 'tenant_backfill run' AND a.pid <> r.pid"
assert_eq "the run goes on without its helper" "done" "$(val "SELECT tenant_backfill.wait($run)")"
assert_eq "every part walked" "2" "$(val "SELECT count(*) FROM tenant_backfill.run_parts WHERE run_id = $run AND done")"
assert_eq "same rows as run_now, each change audited once" "0|0" "$(val "SELECT * FROM differs('split', $run)")"

section "a killed lead stops its helpers; resume starts them again"
quiet "SELECT make_copy('leadless', 20000)"
run=$(val "SELECT tenant_backfill.start('leadless', workers => 2, batch_size => 500, pause_ms => 50)")
wait_until "SELECT rows_done > 0 FROM tenant_backfill.progress WHERE run_id = $run"
quiet "SELECT pg_terminate_backend(r.pid) FROM tenant_backfill.runs r WHERE r.run_id = $run"
wait_until "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'tenant_backfill run'"
assert_eq "no worker left, the run reads failed" "0|failed" "$(val "
    SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenant_backfill run'),
           (SELECT state FROM tenant_backfill.progress WHERE run_id = $run)")"
quiet "SELECT tenant_backfill.resume($run)"
assert_eq "two workers again" "2" "$(val "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenant_backfill run'")"
assert_eq "resumed to the end" "done" "$(val "SELECT tenant_backfill.wait($run)")"
assert_eq "same rows as run_now, each change audited once" "0|0" "$(val "SELECT * FROM differs('leadless', $run)")"

section "a run started in a transaction that rolls back never begins"
quiet "SELECT make_copy('rolledback', 2000)"
assert_fails "wait in the starting transaction refuses" "was started or resumed in this transaction" \
    "BEGIN; SELECT tenant_backfill.start('rolledback'); SELECT tenant_backfill.wait(currval('tenant_backfill.runs_run_id_seq'));"
sleep 0.3
assert_eq "no run, no worker, nothing written" "0|0|1000" "$(val "
    SELECT (SELECT count(*) FROM tenant_backfill.runs WHERE target_name = 'public.rolledback'),
           (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenant_backfill run'),
           (SELECT count(*) FROM rolledback WHERE company_id IS NULL)")"

assert_fails "nor after a savepoint" "was started or resumed in this transaction" \
    "BEGIN; SAVEPOINT s; SELECT tenant_backfill.start('rolledback'); RELEASE s; SELECT tenant_backfill.wait(currval('tenant_backfill.runs_run_id_seq'));"
quiet "BEGIN; SAVEPOINT s; SELECT tenant_backfill.start('rolledback'); ROLLBACK TO s; COMMIT;"
sleep 0.3
assert_eq "a start rolled back to a savepoint never begins" "0|0|1000" "$(val "
    SELECT (SELECT count(*) FROM tenant_backfill.runs WHERE target_name = 'public.rolledback'),
           (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenant_backfill run'),
           (SELECT count(*) FROM rolledback WHERE company_id IS NULL)")"

section "the worker has the rights of the role that called start, and cannot SET ROLE"
sql -q >/dev/null <<'SQL'
SELECT make_copy('owned', 2000);
CREATE ROLE app_owner LOGIN;
CREATE ROLE nologin_owner NOLOGIN;
ALTER TABLE owned OWNER TO app_owner;
ALTER TABLE owned_appts OWNER TO app_owner;
CREATE TABLE who (current_role_name name, session_role_name name);
GRANT INSERT ON who TO app_owner;
CREATE FUNCTION note_who() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.who VALUES (current_user, session_user); RETURN NEW; END $$;
CREATE TRIGGER note_who AFTER UPDATE ON owned FOR EACH STATEMENT EXECUTE FUNCTION note_who();
SQL
run=$(val "SET ROLE app_owner; SELECT tenant_backfill.start('owned', batch_size => 500)")
assert_eq "done" "done" "$(val "SELECT tenant_backfill.wait($run)")"
assert_eq "the writes ran as app_owner, in a session of the starting session's user" "app_owner|postgres" \
    "$(val "SELECT DISTINCT current_role_name, session_role_name FROM who")"
assert_eq "started_by is the role" "app_owner" "$(val "SELECT started_by FROM tenant_backfill.runs WHERE run_id = $run")"
quiet "SELECT make_copy('noright', 2000); GRANT SELECT ON noright, noright_appts TO app_owner"
assert_fails "a role without UPDATE on the tenant column cannot start" "permission denied" \
    "SET ROLE app_owner; SELECT tenant_backfill.start('noright')"
sql -q >/dev/null <<'SQL'
SELECT make_copy('escalate', 2000);
ALTER TABLE escalate OWNER TO app_owner;
ALTER TABLE escalate_appts OWNER TO app_owner;
CREATE FUNCTION escalate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN SET ROLE postgres; RETURN NEW; END $$;
CREATE TRIGGER escalate BEFORE UPDATE ON escalate FOR EACH ROW EXECUTE FUNCTION escalate();
SQL
run=$(val "SET ROLE app_owner; SELECT tenant_backfill.start('escalate', batch_size => 500)")
assert_eq "a trigger's SET ROLE fails the run" "failed" "$(val "SELECT tenant_backfill.wait($run)")"
assert_contains "with the reason recorded" "cannot set parameter \"role\"" \
    "$(val "SELECT error FROM tenant_backfill.runs WHERE run_id = $run")"
quiet "SELECT make_copy('nologin', 2000); ALTER TABLE nologin OWNER TO nologin_owner; ALTER TABLE nologin_appts OWNER TO nologin_owner"
run=$(val "SET ROLE nologin_owner; SELECT tenant_backfill.start('nologin', batch_size => 500)")
assert_eq "a NOLOGIN role's run works too" "done" \
    "$(val "SELECT tenant_backfill.wait($run)")$(val "SELECT ': ' || error FROM tenant_backfill.runs WHERE run_id = $run")"

section "run_now ends where its run recorded the table's end; a row committed meanwhile is left to the guard"
quiet "SELECT make_copy('late', 2000)"
# Another session inserts a NULL row past the end and holds the source locked: run_now
# records the end (the new row is not committed yet), then waits for the source; the
# row is committed before its statement reads the table.
sql -q -c "BEGIN" -c "INSERT INTO late VALUES (2001, NULL, 'late')" \
    -c "INSERT INTO late_appts (customer_id, company_id) VALUES (2001, 3)" \
    -c "LOCK late_appts IN ACCESS EXCLUSIVE MODE" -c "SELECT pg_sleep(1.5)" -c "COMMIT" >/dev/null &
holder=$!
wait_until "SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1.5)' AND state = 'active'"
began=$SECONDS
late=$(val "SELECT rows_changed FROM tenant_backfill.run_now('late')")
wait "$holder"
assert_true "run_now waited for the source" "$([ $((SECONDS - began)) -ge 1 ] && echo t || echo f)"
assert_eq "its end is the last key it saw: 2000 of 2000 rows, 960 changed" "960|2000|1000|1000|100.0" \
    "$late|$(val "SELECT r.upper_key, p.rows_done, p.rows_total, p.percent FROM tenant_backfill.runs r
                  JOIN tenant_backfill.progress p USING (run_id) WHERE r.target = 'late'::regclass")"
assert_eq "the late row is still NULL, not audited" "1|0" \
    "$(val "SELECT count(*) FILTER (WHERE company_id IS NULL), (SELECT count(*) FROM tenant_backfill.audit_log
              WHERE target = 'late'::regclass AND row_key = '2001') FROM late WHERE id = 2001")"

section "statement_timeout times the whole CALL run: said before the first batch, and how to resume"
quiet "SELECT make_copy('timed', 20000)"
# The first batch takes milliseconds; the timeout lands in the 6 s pause after it (2 s
# leave the run's start and first batch room on a loaded machine).
output=$(sql -c "SET client_min_messages = notice" -c "SET statement_timeout = '2s'" \
    -c "CALL tenant_backfill.run('timed', batch_size => 200, pause_ms => 6000)" 2>&1 || true)
run=$(val "SELECT run_id FROM tenant_backfill.runs WHERE target = 'timed'::regclass")
assert_contains "a NOTICE first" \
    "NOTICE:  tenant_backfill: statement_timeout is 2s in this session, and it times the whole CALL: run $run of public.timed stops when it runs out" \
    "$output"
assert_contains "the error" "ERROR:  canceling statement due to statement timeout" "$output"
assert_contains "its DETAIL" \
    "DETAIL:  Run $run of timed stopped; its status is failed, and what its batches committed stays." "$output"
assert_contains "its HINT" \
    "HINT:  CALL run again with the same mode to resume where it stopped, where no statement_timeout applies: SET statement_timeout = 0 in a session of its own (a direct connection: behind a transaction pooler the setting stays on a server connection other clients get), or tenant_backfill.start, whose background workers no statement_timeout stops." \
    "$output"
assert_eq "failed after one batch" "failed|200" "$(val "SELECT status, rows_done FROM tenant_backfill.runs WHERE run_id = $run")"
sql -q -c "SET client_min_messages = warning" -c "CALL tenant_backfill.run('timed', batch_size => 2000)"
assert_eq "CALL run again: the same run, done, as run_now would have it" "done|0|0" \
    "$(val "SELECT status, d.* FROM tenant_backfill.runs, differs('timed', $run) d WHERE run_id = $run")"
output=$(sql -c "SET client_min_messages = notice" -c "CALL tenant_backfill.run('timed')" 2>&1; echo "rc=$?")
assert_contains "without statement_timeout, the CALL succeeds" "rc=0" "$output"
assert_eq "and says nothing of it" "" "$(echo "$output" | grep statement_timeout || true)"
# The HINT's other way: a database's default statement_timeout applies to the workers'
# sessions too, and stops none of their batches (it times client statements only).
quiet "SELECT make_copy('timed_bg', 2000)"
quiet "ALTER DATABASE test SET statement_timeout = '1s'"
run=$(val "SELECT tenant_backfill.start('timed_bg', batch_size => 200, pause_ms => 600)")
quiet "ALTER DATABASE test RESET statement_timeout"
assert_eq "start under a 1 s default: its workers run on past it to the end" "done" \
    "$(sql -tAq -c "SET statement_timeout = 0" -c "SELECT tenant_backfill.wait($run)")"
assert_eq "6 batches (the last finds the end) 600 ms apart, longer than the timeout" "6|t" \
    "$(val "SELECT batches, finished_at - started_at > interval '1.5 s' FROM tenant_backfill.runs WHERE run_id = $run")"

section "a foreground CALL run prints progress every few seconds, not once per batch"
quiet "SELECT make_copy('noisy', 20000)"
output=$(sql -c "SET client_min_messages = notice" -c "CALL tenant_backfill.run('noisy', batch_size => 100)" 2>&1)
notices=$(echo "$output" | grep -c "NOTICE:  tenant_backfill: run" || true)
assert_true "100 batches, at most 3 progress lines ($notices)" "$([ "$notices" -ge 1 ] && [ "$notices" -le 3 ] && echo t || echo f)"
assert_contains "the last one says where it ended" "of public.noisy done: 10000/10000 rows (100.0%), 9600 changed" \
    "$(echo "$output" | grep "NOTICE:  tenant_backfill: run" | tail -n 1)"

section "a later pass writes the rows its first pass could not, and only those"
quiet "SELECT make_copy('held', 20000)"
# Another session holds customer 7 (NULL, to fill) until the run's second pass begins.
sql -q -c "BEGIN" -c "SELECT 1 FROM held WHERE id = 7 FOR UPDATE" -c "
DO \$\$ BEGIN
    FOR i IN 1..1200 LOOP
        EXIT WHEN (SELECT max(pass) FROM tenant_backfill.runs WHERE target = 'held'::regclass) >= 2;
        PERFORM pg_sleep(0.05);
    END LOOP;
END \$\$" -c "COMMIT" >/dev/null &
holder=$!
wait_until "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE '%FOR i IN 1..1200%')"
# The first pass skips it, and its end commits pass 2, which the holder waits for; the
# pause after each batch lets it commit before the second pass's batch.
output=$(sql -c "SET client_min_messages = notice" -c "CALL tenant_backfill.run('held', batch_size => 20000, pause_ms => 2000)" 2>&1)
wait "$holder"
run=$(val "SELECT max(run_id) FROM tenant_backfill.runs WHERE target = 'held'::regclass")
assert_contains "the second pass tries the held row again" "1 rows of public.held were not written (other sessions held them, or set them meanwhile); pass 2 tries them again" "$output"
# (Pass 2 as a rule; pass 3 if the holder was slower to commit than the pause.)
assert_eq "done in a later pass, every row written once, nothing left" "done|t|0|0|0|0" \
    "$(val "SELECT status, pass > 1, rows_skipped, (SELECT count(*) FROM tenant_backfill.run_skipped s WHERE s.run_id = r.run_id),
                   d.differing, d.audited_wrongly FROM tenant_backfill.runs r, differs('held', r.run_id) d WHERE r.run_id = $run")"
assert_eq "the held row among them" "1" \
    "$(val "SELECT count(*) FROM tenant_backfill.backup WHERE run_id = $run AND row_key = '7' AND new_value IS NOT NULL")"

section "throttled by an old transaction, and on again when it ends"
quiet "SELECT make_copy('xmin', 5000)"
quiet "BEGIN; SELECT pg_current_xact_id(); SELECT pg_sleep(6); COMMIT;" &
holder=$!
sleep 1.5
run=$(val "SET tenant_backfill.max_transaction_age = 1; SELECT tenant_backfill.start('xmin', batch_size => 500)")
sleep 1
assert_eq "throttled before its first batch" "throttled|0" \
    "$(val "SELECT state, rows_done FROM tenant_backfill.progress WHERE run_id = $run")"
assert_contains "by the transaction, named" "transaction of pid" \
    "$(val "SELECT throttled_by FROM tenant_backfill.progress WHERE run_id = $run")"
assert_eq "a throttled worker holds no transaction open" "" "$(val "
    SELECT xact_start FROM pg_stat_activity WHERE backend_type = 'tenant_backfill run'")"
wait "$holder"
assert_eq "it goes on by itself" "done" "$(val "SELECT tenant_backfill.wait($run, '30 seconds')")"

section "throttled by a lagging replica, and on again when it catches up"
replica_start
quiet "SELECT make_copy('lagged', 20000)"
replica_quiet "SELECT pg_wal_replay_pause()"
run=$(val "SELECT tenant_backfill.start('lagged', batch_size => 1000, max_replica_lag_bytes => 65536)")
sleep 2
assert_eq "throttled" "throttled" "$(val "SELECT state FROM tenant_backfill.progress WHERE run_id = $run")"
assert_contains "by the replica, named, with its lag" "replica lag" \
    "$(val "SELECT throttled_by FROM tenant_backfill.progress WHERE run_id = $run")"
done_throttled=$(val "SELECT rows_done FROM tenant_backfill.progress WHERE run_id = $run")
assert_true "no progress beyond a batch ($done_throttled rows)" "$([ "$done_throttled" -le 2000 ] && echo t || echo f)"
sleep 1
assert_eq "still no progress" "$done_throttled" "$(val "SELECT rows_done FROM tenant_backfill.progress WHERE run_id = $run")"
replica_quiet "SELECT pg_wal_replay_resume()"
assert_eq "it finishes once the replica catches up" "done" "$(val "SELECT tenant_backfill.wait($run, '60 seconds')")"
assert_eq "same rows as run_now, each change audited once" "0|0" "$(val "SELECT * FROM differs('lagged', $run)")"

section "a hot standby answers plan, preflight, conflicts, review_queue, validate, monitor, discover and audit"
# A standby cannot assign transaction ids: the reports run there only because a statement
# that writes nothing takes none (src/sql.rs, run_read_write).
quiet "SELECT make_copy('on_standby', 2000)"
wait_until "SELECT replay_lsn >= pg_current_wal_lsn() FROM pg_stat_replication WHERE application_name = 'standby1'"
plan_sql="SELECT action, count(*) FROM tenant_backfill.plan('on_standby') GROUP BY action ORDER BY action"
on_primary=$(val "$plan_sql")
assert_contains "the primary's plan fills rows" "fill|" "$on_primary"
assert_eq "the standby's plan is the primary's" "$on_primary" "$(replica_sql -tAq -c "$plan_sql")"
# Each report has rows on the primary (an error there would print none, and two empty
# answers would agree), and the standby's are the same.
for report in preflight conflicts review_queue; do
    report_sql="SELECT count(*) FROM tenant_backfill.$report('on_standby')"
    on_primary=$(val "$report_sql")
    assert_true "the primary's $report has rows ($on_primary)" "$([ "${on_primary:-0}" -gt 0 ] && echo t || echo f)"
    assert_eq "the standby's $report is the primary's" "$on_primary" "$(replica_sql -tAq -c "$report_sql")"
done
# After a run: the proofs and the schema reports, each with its full answer.
assert_true "run_now changed rows on the primary" "$(val "SELECT rows_changed > 0 FROM tenant_backfill.run_now('on_standby')")"
quiet "ALTER TABLE on_standby_appts ADD FOREIGN KEY (customer_id) REFERENCES on_standby"
wait_until "SELECT replay_lsn >= pg_current_wal_lsn() FROM pg_stat_replication WHERE application_name = 'standby1'" ||
    fail "the standby replays the run" "replayed" "timed out"
assert_eq "the primary's validate: every check holds but the two the conflicts fail (they stay NULL)" \
    "no_null_tenant=false,sources_agree=false" \
    "$(val "SELECT string_agg(check_name || '=' || coalesce(ok::text, 'null'), ',' ORDER BY check_name)
              FROM tenant_backfill.validate('on_standby') WHERE ok IS DISTINCT FROM true")"
for report_sql in \
    "SELECT check_name, ok, expected, actual FROM tenant_backfill.validate('on_standby') ORDER BY 1" \
    "SELECT check_name, rows FROM tenant_backfill.monitor('on_standby') ORDER BY 1" \
    "SELECT source, via, tenant_column, has_index FROM tenant_backfill.discover('on_standby') ORDER BY 1, 2, 3, 4" \
    "SELECT table_name, role, rows, null_tenant, cross_tenant FROM tenant_backfill.audit('company_id') WHERE table_name::text LIKE 'on_standby%' ORDER BY 1, 2, 3, 4, 5"; do
    report=$(echo "$report_sql" | sed 's/.*tenant_backfill\.\([a-z_]*\).*/\1/')
    on_primary=$(val "$report_sql")
    assert_true "the primary's $report has rows" "$([ -n "$on_primary" ] && echo t || echo f)"
    assert_eq "the standby's $report is the primary's" "$on_primary" "$(replica_sql -tAq -c "$report_sql")"
done
replica_stop

finish
