#!/usr/bin/env bash
# A real Alembic project (tests/fixtures/alembic: SQLAlchemy 2 and psycopg 3, pinned in
# its requirements.txt) migrates a throwaway primary: run_now in a migration's
# transaction, CALL run inside autocommit_block(), downgrades that roll both back, and
# the progress NOTICE as psycopg hands it to a notice handler.
# Run by scripts/test as: alembic.sh VERSION (the extension installed into that version).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# A virtualenv with exactly the pinned versions, kept between runs.
VENV=${TENANT_BACKFILL_VENV:-/var/cache/tenant_backfill/venv}
FIXTURE=$REPO_ROOT/tests/fixtures/alembic
venv_ok() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/alembic" ] && "$VENV/bin/python" - "$FIXTURE/requirements.txt" <<'PY'
import re, sys
from importlib.metadata import version, PackageNotFoundError
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, extras, pin = re.match(r"([\w.-]+)(\[[\w,]+\])?==(\S+)", line).groups()
    names = [name] + [name + "-" + e for e in (extras or "").strip("[]").split(",") if e]
    try:
        if any(version(n) != pin for n in names):
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}
if ! venv_ok; then
    log "creating the virtualenv $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    if ! { python3 -m venv "$VENV" &&
           "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$FIXTURE/requirements.txt"; }; then
        fail "the virtualenv is created" "python3 -m venv and pip install -r requirements.txt succeed" "they failed"
        finish || exit 1
    fi
fi
assert_true "the virtualenv has the pinned alembic, sqlalchemy and psycopg" "$(venv_ok && echo t || echo f)"

primary_start alembic
# The project is copied, so nothing (bytecode) is written into the checkout.
PROJECT=$SCRATCH/alembic
cp -r "$FIXTURE" "$PROJECT"
export TENANT_BACKFILL_DATABASE_URL="postgresql+psycopg://postgres@/test?host=$PRIMARY&port=$PORT"
# alembic ARGS...: its output (stdout and stderr) to stdout; its exit status.
alembic() { (cd "$PROJECT" && "$VENV/bin/alembic" -c "$PROJECT/alembic.ini" "$@" 2>&1); }
null_keys() { val "SELECT string_agg(id::text, ',' ORDER BY id) FROM customers WHERE company_id IS NULL"; }
# Customers with a company, and of those how many have the company their evidence names
# (1-18 and 21-40: id % 3 + 1).
filled() { val "SELECT count(*), count(*) FILTER (WHERE company_id = id % 3 + 1) FROM customers WHERE company_id IS NOT NULL"; }
runs() { val "SELECT string_agg(concat_ws(':', run_id, kind, status, rows_changed), ' ' ORDER BY run_id) FROM tenant_backfill.runs"; }
# Per run: audit rows, distinct keys audited, and whether that is the run's rows_changed.
audit() { val "SELECT string_agg(concat_ws(':', r.run_id, a.n, a.keys, a.n = r.rows_changed), ' ' ORDER BY r.run_id)
                 FROM tenant_backfill.runs r
                 JOIN (SELECT run_id, count(*) n, count(DISTINCT row_key) keys FROM tenant_backfill.audit_log GROUP BY run_id) a
                   USING (run_id)"; }
version() { val "SELECT version_num FROM alembic_version"; }

section "upgrade to 0002: schema, configuration, run_now in the migration's transaction"
out=$(alembic upgrade 0002) || fail "alembic upgrade 0002 succeeds" "exit 0" "$out"
assert_eq "at revision 0002" "0002" "$(version)"
assert_contains "run_now's result in the migration log" \
    'run_now: run 1 changed 10 rows {"1": 10}, 10 left for review' "$out"
assert_eq "11-20 are still NULL" "11,12,13,14,15,16,17,18,19,20" "$(null_keys)"
assert_eq "30 with a company, each the right one" "30|30" "$(filled)"
assert_eq "one run_now run, done" "1:run_now:done:10" "$(runs)"
assert_eq "one audit row per changed row" "1:10:10:t" "$(audit)"

section "CALL run in the migration's transaction refuses, and the migration rolls back"
out=$(TENANT_BACKFILL_RUN_IN_TRANSACTION=1 alembic upgrade head) \
    && fail "alembic upgrade head fails" "exit status not 0" "exit 0: $out"
echo "$out" | grep -E 'CALL run refused|^HINT' || true
assert_contains "psycopg's error text, in the traceback, carries the HINT" \
    "HINT:  Call it on its own, with autocommit" "$out"
assert_contains "SQLSTATE 25001 (psycopg.errors.ActiveSqlTransaction)" \
    "(psycopg.errors.ActiveSqlTransaction)" "$out"
assert_contains "the sqlstate and message, as the migration logged them" \
    "CALL run refused: SQLSTATE 25001: CALL tenant_backfill.run cannot run inside a transaction block" "$out"
assert_contains "the HINT names autocommit_block" "in Alembic inside op.get_context().autocommit_block()" \
    "$(echo "$out" | grep 'CALL run refused')"
assert_eq "still at revision 0002" "0002" "$(version)"
assert_eq "nothing written, no run recorded, the new source rolled back" "11,12,13,14,15,16,17,18,19,20|1:run_now:done:10|1" \
    "$(null_keys)|$(runs)|$(val "SELECT count(*) FROM tenant_backfill.sources")"

section "upgrade to head: CALL run inside autocommit_block(), its progress through psycopg"
out=$(alembic upgrade head) || fail "alembic upgrade head succeeds" "exit 0" "$out"
assert_eq "at revision 0003" "0003" "$(version)"
progress=$(echo "$out" | grep -F '[tenant_backfill.notices] NOTICE: tenant_backfill: run' || true)
echo "$progress"
assert_eq "one progress NOTICE from CALL run, logged by the notice handler" 1 "$(echo "$progress" | grep -c . || true)"
assert_contains "it reports the whole run" \
    "NOTICE: tenant_backfill: run 2 of public.customers done: 10/10 rows (100.0%), 6 changed, 4 left for review" "$progress"
assert_eq "the conflicts (11, 12) and the orphans (19, 20) are left" "11,12,19,20" "$(null_keys)"
assert_eq "36 with a company, each the right one" "36|36" "$(filled)"
assert_eq "two runs, done" "1:run_now:done:10 2:run:done:6" "$(runs)"
assert_eq "CALL run's batches: 10 rows in batches of 3" "3" "$(val "SELECT batch_size FROM tenant_backfill.runs WHERE run_id = 2")"
assert_eq "one audit row per changed row" "1:10:10:t 2:6:6:t" "$(audit)"
assert_eq "the audited keys are exactly the rows that got a company" "t" "$(val "
    SELECT array_agg(row_key::int ORDER BY row_key::int) = (SELECT array_agg(id ORDER BY id) FROM customers
                                                             WHERE id <= 20 AND company_id IS NOT NULL)
      FROM tenant_backfill.audit_log")"
assert_eq "the audit records old and new values and the phase" "13:NULL:2:2|18:NULL:1:2" "$(val "
    SELECT string_agg(format('%s:%s:%s:%s', row_key, coalesce(old_value, 'NULL'), new_value, phase), '|' ORDER BY row_key::int)
      FROM tenant_backfill.audit_log WHERE run_id = 2 AND row_key IN ('13', '18')")"
assert_true "validate proves run 2's audit and backup" "$(val "
    SELECT bool_and(ok) FROM tenant_backfill.validate('customers', 2)
     WHERE check_name IN ('row_count_unchanged', 'audit_complete', 'backup_complete')")"

section "downgrade to 0002: CALL run's run rolled back"
out=$(alembic downgrade 0002) || fail "alembic downgrade 0002 succeeds" "exit 0" "$out"
assert_contains "the rollback in the migration log" "rollback of CALL run: 6 restored, 0 skipped" "$out"
assert_eq "at revision 0002" "0002" "$(version)"
assert_eq "the NULLs of after run_now are back, exactly" "11,12,13,14,15,16,17,18,19,20" "$(null_keys)"
assert_eq "30 with a company, as before" "30|30" "$(filled)"
assert_eq "run 2 rolled back by run 3" "1:run_now:done:10 2:run:rolled_back:6 3:rollback:done:6" "$(runs)"
assert_eq "the rollback is audited too" "1:10:10:t 2:6:6:t 3:6:6:t" "$(audit)"
assert_eq "phone_numbers is no longer a source" "appointments" \
    "$(val "SELECT string_agg(source::text, ',') FROM tenant_backfill.sources")"

section "downgrade to 0001: run_now's run rolled back"
out=$(alembic downgrade 0001) || fail "alembic downgrade 0001 succeeds" "exit 0" "$out"
assert_contains "the rollback in the migration log" "rollback of run_now: 10 restored, 0 skipped" "$out"
assert_eq "at revision 0001" "0001" "$(version)"
assert_eq "all 20 NULLs are back, exactly" "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20" "$(null_keys)"
assert_eq "the other 20 untouched" "20|20" "$(filled)"
assert_eq "run 1 rolled back by run 4" \
    "1:run_now:rolled_back:10 2:run:rolled_back:6 3:rollback:done:6 4:rollback:done:10" "$(runs)"

section "upgrade to head again, then downgrade to base"
out=$(alembic upgrade head) || fail "alembic upgrade head succeeds again" "exit 0" "$out"
assert_eq "the same rows are left" "11,12,19,20" "$(null_keys)"
assert_eq "two new runs, done" "5:run_now:done:10 6:run:done:6" \
    "$(val "SELECT string_agg(concat_ws(':', run_id, kind, status, rows_changed), ' ' ORDER BY run_id) FROM tenant_backfill.runs WHERE run_id > 4")"
out=$(alembic downgrade base) || fail "alembic downgrade base succeeds" "exit 0" "$out"
assert_eq "no table and no extension left" "0|0" "$(val "
    SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'),
           (SELECT count(*) FROM pg_extension WHERE extname = 'tenant_backfill')")"

finish
