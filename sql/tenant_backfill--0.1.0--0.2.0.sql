-- tenant_backfill 0.1.0 -> 0.2.0. Frozen once 0.2.0 ships; tests/shell/upgrade.sh proves
-- that a database updated with it holds exactly what a fresh 0.2.0 install holds.
--
-- 0.2.0 names its library by version (tenant_backfill-0.2.0.so; 0.1.0's was
-- tenant_backfill.so), so installing 0.2.0 leaves the objects of 0.1.0 on their own
-- library until this script moves them; and it keeps its internal functions in a schema
-- of their own, out of \df tenant_backfill.*.

\echo Use "ALTER EXTENSION tenant_backfill UPDATE" to load this file. \quit

CREATE SCHEMA tenant_backfill_internal;
GRANT USAGE ON SCHEMA tenant_backfill_internal TO PUBLIC;

-- The internal functions move, keeping their OIDs: the event triggers and the progress
-- view, which name them by OID, follow.
ALTER FUNCTION @extschema@._casts_to(value anyelement, type_name regtype) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._evidence_jsonb(evidence text) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._finalize_abort(target regclass) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._finalize_check(target regclass) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._finalize_step(target regclass, step integer, lock_timeout_ms integer) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._guard_inheritors("table" regclass) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._lock_retry(failures integer, what text) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._on_ddl_command_end() SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._on_sql_drop() SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._plan_statement(target regclass, mode text) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._raise(err_state text, err_message text, err_detail text, err_hint text) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._run_alive(run_pid integer, run_target regclass) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._run_batch(run_id bigint, skip_held_rows boolean, part integer) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._run_batch_caught(run_id bigint, skip_held_rows boolean, part integer, OUT step text, OUT err_state text, OUT err_message text) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._run_begin(target regclass, batch_size integer, pause_ms integer, mode text, dry_run boolean, lock_timeout_ms integer, target_batch_ms integer, max_replica_lag interval, max_replica_lag_bytes bigint) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._run_end(run_id bigint, error_state text, error_message text) SET SCHEMA tenant_backfill_internal;
ALTER FUNCTION @extschema@._run_throttle(run_id bigint) SET SCHEMA tenant_backfill_internal;

-- Every function and procedure re-created (46): the C functions move to this
-- release's library, the others take their current bodies.
CREATE OR REPLACE FUNCTION tenant_backfill_internal._casts_to(value anyelement, type_name pg_catalog.regtype)
RETURNS pg_catalog.bool
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format('SELECT $1::%s', type_name) USING value;
    RETURN true;
EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
    RETURN false;
END
$$;

CREATE OR REPLACE FUNCTION tenant_backfill_internal._run_alive(run_pid pg_catalog.int4, run_target pg_catalog.regclass)
RETURNS pg_catalog.bool
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT run_pid IS NOT NULL AND EXISTS (
        SELECT 1 FROM pg_catalog.pg_locks l
         WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory'
           AND l.classid OPERATOR(pg_catalog.=) 1952804450::pg_catalog.oid
           AND l.objid OPERATOR(pg_catalog.=) run_target::pg_catalog.oid
           AND l.objsubid OPERATOR(pg_catalog.=) 2 AND l.granted
           AND l.pid OPERATOR(pg_catalog.=) run_pid)
$$;

CREATE OR REPLACE FUNCTION @extschema@.guard() RETURNS trigger
LANGUAGE c
AS 'tenant_backfill-0.2.0', 'guard_wrapper';

CREATE OR REPLACE FUNCTION "add_override_table"(
	"target" regclass, /* Option < RegClass > */
	"config_table" regclass, /* Option < RegClass > */
	"key_column" name, /* Option < SqlName > */
	"value_column" name, /* Option < SqlName > */
	"key_prefix" TEXT DEFAULT '' /* Option < String > */
) RETURNS void
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'add_override_table_wrapper';

CREATE OR REPLACE FUNCTION "add_source"(
	"target" regclass, /* Option < RegClass > */
	"source" regclass, /* Option < RegClass > */
	"via" name, /* Option < SqlName > */
	"tenant_column" name DEFAULT NULL, /* Option < SqlName > */
	"phase" INT DEFAULT NULL, /* Option < i32 > */
	"rule" TEXT DEFAULT 'unanimous' /* Option < String > */
) RETURNS void
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'add_source_wrapper';

CREATE OR REPLACE FUNCTION "apply_decisions"(
	"target" regclass, /* Option < RegClass > */
	"decisions" regclass /* Option < RegClass > */
) RETURNS bigint /* i64 */
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'apply_decisions_wrapper';

CREATE OR REPLACE FUNCTION "cancel"(
	"run_id" bigint /* Option < i64 > */
) RETURNS void
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'cancel_wrapper';

CREATE OR REPLACE FUNCTION "conflicts"(
	"target" regclass, /* Option < RegClass > */
	"mode" TEXT DEFAULT 'fill' /* Option < String > */
) RETURNS TABLE (
	"row_key" TEXT,  /* Option < String > */
	"evidence" jsonb  /* Option < pgrx :: JsonB > */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'conflicts_wrapper';

CREATE OR REPLACE FUNCTION "define"(
	"target" regclass, /* Option < RegClass > */
	"tenant_column" name, /* Option < SqlName > */
	"key_column" name DEFAULT NULL, /* Option < SqlName > */
	"soft_delete_column" name DEFAULT 'deleted_at' /* Option < SqlName > */
) RETURNS void
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'define_wrapper';

CREATE OR REPLACE FUNCTION "discover"(
	"target" regclass /* Option < RegClass > */
) RETURNS TABLE (
	"source" regclass,  /* RegClass */
	"via" name,  /* SqlName */
	"tenant_column" name,  /* SqlName */
	"has_index" bool  /* bool */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'discover_wrapper';

CREATE OR REPLACE FUNCTION "enforce"(
	"target" regclass, /* Option < RegClass > */
	"mode" TEXT DEFAULT 'reject', /* Option < String > */
	"parent_column" name DEFAULT NULL /* Option < SqlName > */
) RETURNS void
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'enforce_wrapper';

CREATE OR REPLACE FUNCTION "monitor"(
	"target" regclass, /* Option < RegClass > */
	"since" interval DEFAULT '1 hour' /* Option < Interval > */
) RETURNS TABLE (
	"check_name" TEXT,  /* String */
	"rows" bigint,  /* i64 */
	"detail" TEXT  /* Option < String > */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'monitor_wrapper';

CREATE OR REPLACE FUNCTION "override_for"(
	"target" regclass, /* Option < RegClass > */
	"row_key" TEXT /* Option < String > */
) RETURNS TEXT /* Option < String > */
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'override_for_wrapper';

CREATE OR REPLACE FUNCTION "pause"(
	"run_id" bigint /* Option < i64 > */
) RETURNS void
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'pause_wrapper';

CREATE OR REPLACE FUNCTION "preflight"(
	"target" regclass, /* Option < RegClass > */
	"mode" TEXT DEFAULT 'fill' /* Option < String > */
) RETURNS TABLE (
	"check_name" TEXT,  /* String */
	"rows" bigint,  /* i64 */
	"detail" TEXT  /* Option < String > */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'preflight_wrapper';

CREATE OR REPLACE FUNCTION "rejection_queue"() RETURNS TABLE (
	"preloaded" bool,  /* bool */
	"waiting" bigint,  /* Option < i64 > */
	"dropped" bigint  /* Option < i64 > */
)
STRICT
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'rejection_queue_wrapper';

CREATE OR REPLACE FUNCTION "release_quarantine"(
	"target" regclass, /* Option < RegClass > */
	"tenant" TEXT DEFAULT NULL /* Option < String > */
) RETURNS bigint /* i64 */
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'release_quarantine_wrapper';

CREATE OR REPLACE FUNCTION "resume"(
	"run_id" bigint /* Option < i64 > */
) RETURNS void
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'resume_wrapper';

CREATE OR REPLACE FUNCTION "review_queue"(
	"target" regclass, /* Option < RegClass > */
	"mode" TEXT DEFAULT 'fill' /* Option < String > */
) RETURNS TABLE (
	"row_key" TEXT,  /* Option < String > */
	"reason" TEXT,  /* Option < String > */
	"evidence" jsonb,  /* Option < pgrx :: JsonB > */
	"row_data" jsonb,  /* Option < pgrx :: JsonB > */
	"tenant" TEXT  /* Option < String > */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'review_queue_wrapper';

CREATE OR REPLACE FUNCTION "rollback"(
	"run_id" bigint, /* Option < i64 > */
	"force" bool DEFAULT false /* Option < bool > */
) RETURNS TABLE (
	"restored" bigint,  /* i64 */
	"skipped" bigint  /* i64 */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'rollback_wrapper';

CREATE OR REPLACE FUNCTION "run_now"(
	"target" regclass, /* Option < RegClass > */
	"mode" TEXT DEFAULT 'fill', /* Option < String > */
	"dry_run" bool DEFAULT false /* Option < bool > */
) RETURNS TABLE (
	"run_id" bigint,  /* i64 */
	"rows_changed" bigint,  /* i64 */
	"by_phase" jsonb,  /* pgrx :: JsonB */
	"left_for_review" bigint  /* i64 */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'run_now_wrapper';

CREATE OR REPLACE FUNCTION "set_override"(
	"target" regclass, /* Option < RegClass > */
	"row_key" TEXT, /* Option < String > */
	"tenant" TEXT, /* Option < String > */
	"note" TEXT DEFAULT NULL /* Option < String > */
) RETURNS void
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'set_override_wrapper';

CREATE OR REPLACE FUNCTION "soft_delete_orphans"(
	"target" regclass, /* Option < RegClass > */
	"dry_run" bool DEFAULT false /* Option < bool > */
) RETURNS bigint /* i64 */
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'soft_delete_orphans_wrapper';

CREATE OR REPLACE FUNCTION "start"(
	"target" regclass, /* Option < RegClass > */
	"mode" TEXT DEFAULT 'fill', /* Option < String > */
	"batch_size" INT DEFAULT NULL, /* Option < i32 > */
	"workers" INT DEFAULT 1, /* Option < i32 > */
	"pause_ms" INT DEFAULT 0, /* Option < i32 > */
	"target_batch_ms" INT DEFAULT 100, /* Option < i32 > */
	"max_replica_lag" interval DEFAULT '10 seconds', /* Option < Interval > */
	"max_replica_lag_bytes" bigint DEFAULT 268435456, /* Option < i64 > */
	"lock_timeout_ms" INT DEFAULT 1000 /* Option < i32 > */
) RETURNS bigint /* i64 */
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'start_wrapper';

CREATE OR REPLACE FUNCTION "undefine"(
	"target" regclass /* Option < RegClass > */
) RETURNS void
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'undefine_wrapper';

CREATE OR REPLACE FUNCTION "unenforce"(
	"target" regclass /* Option < RegClass > */
) RETURNS void
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'unenforce_wrapper';

CREATE OR REPLACE FUNCTION "validate"(
	"target" regclass, /* Option < RegClass > */
	"run_id" bigint DEFAULT NULL, /* Option < i64 > */
	"tenant_setting" TEXT DEFAULT 'tenant_backfill.tenant' /* Option < String > */
) RETURNS TABLE (
	"check_name" TEXT,  /* String */
	"ok" bool,  /* Option < bool > */
	"expected" TEXT,  /* Option < String > */
	"actual" TEXT,  /* Option < String > */
	"detail" TEXT  /* Option < String > */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'validate_wrapper';

CREATE OR REPLACE FUNCTION "wait"(
	"run_id" bigint, /* Option < i64 > */
	"timeout" interval DEFAULT NULL /* Option < Interval > */
) RETURNS TEXT /* String */
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'wait_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_finalize_abort"(
	"target" regclass /* RegClass */
) RETURNS void
STRICT 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_finalize_abort_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_run_throttle"(
	"run_id" bigint /* i64 */
) RETURNS double precision /* f64 */
STRICT 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_run_throttle_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_plan_statement"(
	"target" regclass, /* Option < RegClass > */
	"mode" TEXT DEFAULT 'fill' /* Option < String > */
) RETURNS TABLE (
	"sql" TEXT,  /* String */
	"params" TEXT[]  /* Vec < Option < String > > */
)

SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_plan_statement_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_finalize_step"(
	"target" regclass, /* RegClass */
	"step" INT, /* i32 */
	"lock_timeout_ms" INT /* i32 */
) RETURNS void
STRICT 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_finalize_step_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_run_begin"(
	"target" regclass, /* Option < RegClass > */
	"batch_size" INT, /* Option < i32 > */
	"pause_ms" INT, /* Option < i32 > */
	"mode" TEXT, /* Option < String > */
	"dry_run" bool, /* Option < bool > */
	"lock_timeout_ms" INT, /* Option < i32 > */
	"target_batch_ms" INT, /* Option < i32 > */
	"max_replica_lag" interval, /* Option < Interval > */
	"max_replica_lag_bytes" bigint /* Option < i64 > */
) RETURNS bigint /* i64 */

SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_run_begin_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_guard_inheritors"(
	"table" regclass /* Option < crate :: types :: RegClass > */
) RETURNS void

SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_guard_inheritors_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_evidence_jsonb"(
	"evidence" TEXT /* & str */
) RETURNS jsonb /* RawJsonb */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_evidence_jsonb_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_run_batch"(
	"run_id" bigint, /* i64 */
	"skip_held_rows" bool, /* bool */
	"part" INT DEFAULT NULL /* Option < i32 > */
) RETURNS TEXT /* & '_ str */

SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_run_batch_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_finalize_check"(
	"target" regclass /* Option < RegClass > */
) RETURNS TEXT /* String */

SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_finalize_check_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_run_end"(
	"run_id" bigint, /* i64 */
	"error_state" TEXT, /* Option < String > */
	"error_message" TEXT /* Option < String > */
) RETURNS void

SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_run_end_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal._raise(
    err_state pg_catalog.text, err_message pg_catalog.text, err_detail pg_catalog.text, err_hint pg_catalog.text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    has_detail pg_catalog.bool := COALESCE(err_detail, '') OPERATOR(pg_catalog.<>) '';
    has_hint pg_catalog.bool := COALESCE(err_hint, '') OPERATOR(pg_catalog.<>) '';
BEGIN
    IF has_detail AND has_hint THEN
        RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_message, DETAIL = err_detail, HINT = err_hint;
    ELSIF has_detail THEN
        RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_message, DETAIL = err_detail;
    ELSIF has_hint THEN
        RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_message, HINT = err_hint;
    END IF;
    RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_message;
END
$$;

CREATE OR REPLACE FUNCTION tenant_backfill_internal._lock_retry(failures pg_catalog.int4, what pg_catalog.text)
RETURNS pg_catalog.float8
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF failures OPERATOR(pg_catalog.>=) 5 THEN
        RETURN NULL;
    END IF;
    RAISE NOTICE 'tenant_backfill: % (try %/5), retrying', what, failures OPERATOR(pg_catalog.+) 1;
    RETURN LEAST(0.05::pg_catalog.float8 OPERATOR(pg_catalog.*)
                 (2::pg_catalog.float8 OPERATOR(pg_catalog.^) (failures OPERATOR(pg_catalog.+) 1)), 2.0);
END
$$;

CREATE OR REPLACE PROCEDURE @extschema@.run(
    target pg_catalog.regclass,
    batch_size pg_catalog.int4 DEFAULT 1000,
    pause_ms pg_catalog.int4 DEFAULT 0,
    mode pg_catalog.text DEFAULT 'fill',
    dry_run pg_catalog.bool DEFAULT false,
    lock_timeout_ms pg_catalog.int4 DEFAULT 1000,
    target_batch_ms pg_catalog.int4 DEFAULT 100,
    max_replica_lag pg_catalog.interval DEFAULT '10 seconds',
    max_replica_lag_bytes pg_catalog.int8 DEFAULT 268435456)
LANGUAGE plpgsql
AS $$
DECLARE
    this_run pg_catalog.int8;
    finished pg_catalog.bool := false;
    lock_failures pg_catalog.int4 := 0;
    sleep_seconds pg_catalog.float8 := 0;
    throttled_seconds pg_catalog.float8;
    step pg_catalog.text;
    skip_held_rows pg_catalog.bool := false;
    err_state pg_catalog.text;
    err_message pg_catalog.text;
    err_detail pg_catalog.text;
    err_hint pg_catalog.text;
BEGIN
    this_run := tenant_backfill_internal._run_begin(target, batch_size, pause_ms, mode, dry_run, lock_timeout_ms,
                                       target_batch_ms, max_replica_lag, max_replica_lag_bytes);
    COMMIT;
    WHILE NOT finished LOOP
        err_state := NULL;
        throttled_seconds := 0;
        -- The waits sit inside the block too, so a cancel or statement_timeout that
        -- lands while sleeping is recorded like one that lands in a batch.
        BEGIN
            IF sleep_seconds OPERATOR(pg_catalog.>) 0::pg_catalog.float8 THEN
                PERFORM pg_catalog.pg_sleep(sleep_seconds);
            END IF;
            throttled_seconds := tenant_backfill_internal._run_throttle(this_run);
            IF throttled_seconds OPERATOR(pg_catalog.=) 0::pg_catalog.float8 THEN
                step := tenant_backfill_internal._run_batch(this_run, skip_held_rows);
                finished := step OPERATOR(pg_catalog.=) 'finished';
            END IF;
        EXCEPTION WHEN query_canceled OR others THEN
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE,
                                    err_message = MESSAGE_TEXT,
                                    err_detail = PG_EXCEPTION_DETAIL,
                                    err_hint = PG_EXCEPTION_HINT;
        END;
        IF err_state IS NULL AND throttled_seconds OPERATOR(pg_catalog.>) 0::pg_catalog.float8 THEN
            -- A signal is over its limit: wait, then check again before the batch.
            sleep_seconds := throttled_seconds;
            COMMIT;
            CONTINUE;
        ELSIF err_state OPERATOR(pg_catalog.=) '55P03' AND NOT skip_held_rows THEN
            -- The first try met a lock (a row another session holds, most likely): the
            -- block rolled it back whole; do the batch again, skipping held rows.
            skip_held_rows := true;
            sleep_seconds := 0;
            CONTINUE;
        ELSIF err_state OPERATOR(pg_catalog.=) '55P03' THEN
            -- The batch could not get its locks in time: back off and try it again.
            sleep_seconds := tenant_backfill_internal._lock_retry(
                lock_failures, pg_catalog.format('run %s could not lock its batch', this_run));
            lock_failures := lock_failures OPERATOR(pg_catalog.+) 1;
        END IF;
        IF err_state OPERATOR(pg_catalog.=) '55P03' AND sleep_seconds IS NOT NULL THEN
            COMMIT;
            CONTINUE;
        ELSIF err_state IS NOT NULL THEN
            PERFORM tenant_backfill_internal._run_end(this_run, err_state, err_message);
            COMMIT;
            IF err_state OPERATOR(pg_catalog.=) '55P03' THEN
                err_message := pg_catalog.format(
                    'run %s of %s stopped: a batch could not get its locks within %s ms, 6 times',
                    this_run, target, lock_timeout_ms);
                err_detail := 'Its status is failed.';
                err_hint := 'CALL run again with the same mode to resume where it stopped.';
            END IF;
            PERFORM tenant_backfill_internal._raise(err_state, err_message, err_detail, err_hint);
        END IF;
        lock_failures := 0;
        skip_held_rows := false;
        sleep_seconds := pause_ms::pg_catalog.float8 OPERATOR(pg_catalog./) 1000::pg_catalog.float8;
        IF step OPERATOR(pg_catalog.=) 'waiting' THEN
            -- A run several workers share, resumed here while some of them still walk
            -- their parts: wait for them.
            sleep_seconds := 0.2;
        END IF;
        COMMIT;
    END LOOP;
    PERFORM tenant_backfill_internal._run_end(this_run, NULL, NULL);
    COMMIT;
END
$$;

CREATE OR REPLACE FUNCTION tenant_backfill_internal._run_batch_caught(
    run_id pg_catalog.int8, skip_held_rows pg_catalog.bool, part pg_catalog.int4,
    OUT step pg_catalog.text, OUT err_state pg_catalog.text, OUT err_message pg_catalog.text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    step := tenant_backfill_internal._run_batch(run_id, skip_held_rows, part);
EXCEPTION WHEN query_canceled OR others THEN
    GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT;
END
$$;

CREATE OR REPLACE PROCEDURE @extschema@.finalize(
    target pg_catalog.regclass,
    lock_timeout_ms pg_catalog.int4 DEFAULT 1000)
LANGUAGE plpgsql
AS $$
DECLARE
    step pg_catalog.int4 := 1;
    lock_failures pg_catalog.int4 := 0;
    sleep_seconds pg_catalog.float8 := 0;
    err_state pg_catalog.text;
    err_message pg_catalog.text;
    err_detail pg_catalog.text;
    err_hint pg_catalog.text;
BEGIN
    IF tenant_backfill_internal._finalize_check(target) OPERATOR(pg_catalog.=) 'already' THEN
        RETURN;
    END IF;
    COMMIT;
    WHILE step OPERATOR(pg_catalog.<=) 3 LOOP
        err_state := NULL;
        BEGIN
            IF sleep_seconds OPERATOR(pg_catalog.>) 0::pg_catalog.float8 THEN
                PERFORM pg_catalog.pg_sleep(sleep_seconds);
            END IF;
            PERFORM tenant_backfill_internal._finalize_step(target, step, lock_timeout_ms);
        EXCEPTION WHEN query_canceled OR others THEN
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE,
                                    err_message = MESSAGE_TEXT,
                                    err_detail = PG_EXCEPTION_DETAIL,
                                    err_hint = PG_EXCEPTION_HINT;
        END;
        IF err_state OPERATOR(pg_catalog.=) '55P03' THEN
            sleep_seconds := tenant_backfill_internal._lock_retry(
                lock_failures, pg_catalog.format('finalize step %s of %s could not get its lock', step, target));
            lock_failures := lock_failures OPERATOR(pg_catalog.+) 1;
        END IF;
        IF err_state OPERATOR(pg_catalog.=) '55P03' AND sleep_seconds IS NOT NULL THEN
            COMMIT;
            CONTINUE;
        ELSIF err_state IS NOT NULL THEN
            PERFORM tenant_backfill_internal._finalize_abort(target);
            COMMIT;
            IF err_state OPERATOR(pg_catalog.=) '55P03' THEN
                err_message := pg_catalog.format(
                    'finalize of %s stopped: step %s could not get its lock within %s ms, 6 times; no constraint was left behind',
                    target, step, lock_timeout_ms);
                err_detail := 'Other sessions held locks on the table.';
                err_hint := 'CALL finalize again when it is quieter.';
            END IF;
            PERFORM tenant_backfill_internal._raise(err_state, err_message, err_detail, err_hint);
        END IF;
        lock_failures := 0;
        sleep_seconds := 0;
        step := step OPERATOR(pg_catalog.+) 1;
        COMMIT;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.plan(target pg_catalog.regclass, mode pg_catalog.text DEFAULT 'fill')
RETURNS TABLE (
    row_key pg_catalog.text,
    current_tenant pg_catalog.text,
    proposed_tenant pg_catalog.text,
    action pg_catalog.text,
    phase pg_catalog.int4,
    source pg_catalog.text,
    rule pg_catalog.text,
    evidence pg_catalog.jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    statement record;
    jit_setting pg_catalog.text := pg_catalog.current_setting('jit');
BEGIN
    SELECT * INTO statement FROM tenant_backfill_internal._plan_statement(target, mode);
    -- Without JIT, as every engine statement runs (sql::without_jit in src/sql.rs says
    -- why); the change is transaction-local and put back after.
    PERFORM pg_catalog.set_config('jit', 'off', true);
    RETURN QUERY EXECUTE statement.sql USING statement.params;
    PERFORM pg_catalog.set_config('jit', jit_setting, true);
END
$$;

CREATE OR REPLACE FUNCTION tenant_backfill_internal._on_ddl_command_end()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    command record;
BEGIN
    FOR command IN
        SELECT DISTINCT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
         WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
           AND c.objsubid OPERATOR(pg_catalog.=) 0 AND c.object_type OPERATOR(pg_catalog.=) 'table'
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i
                         JOIN pg_catalog.pg_trigger t ON t.tgrelid OPERATOR(pg_catalog.=) i.inhparent
                        WHERE i.inhrelid OPERATOR(pg_catalog.=) c.objid
                          AND t.tgname OPERATOR(pg_catalog.=) 'tenant_backfill_guard')
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                            WHERE t.tgrelid OPERATOR(pg_catalog.=) c.objid
                              AND t.tgname OPERATOR(pg_catalog.=) 'tenant_backfill_guard')
    LOOP
        PERFORM tenant_backfill_internal._guard_inheritors(command.objid::pg_catalog.regclass);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION tenant_backfill_internal._on_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dropped record;
    forgotten record;
BEGIN
    FOR dropped IN
        SELECT d.objid, d.object_identity FROM pg_catalog.pg_event_trigger_dropped_objects() d
         WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
           AND d.objsubid OPERATOR(pg_catalog.=) 0 AND d.object_type OPERATOR(pg_catalog.=) 'table'
    LOOP
        FOR forgotten IN
            DELETE FROM @extschema@.targets t WHERE t.target::pg_catalog.oid OPERATOR(pg_catalog.=) dropped.objid
            RETURNING t.target
        LOOP
            RAISE NOTICE 'tenant_backfill: % was dropped: its configuration is removed; its runs, backups and audit log stay',
                dropped.object_identity;
        END LOOP;
        FOR forgotten IN
            DELETE FROM @extschema@.sources s WHERE s.source::pg_catalog.oid OPERATOR(pg_catalog.=) dropped.objid
            RETURNING s.target
        LOOP
            RAISE NOTICE 'tenant_backfill: % was dropped and is no longer a source of %', dropped.object_identity, forgotten.target;
        END LOOP;
        FOR forgotten IN
            DELETE FROM @extschema@.override_tables o WHERE o.config_table::pg_catalog.oid OPERATOR(pg_catalog.=) dropped.objid
            RETURNING o.target
        LOOP
            RAISE NOTICE 'tenant_backfill: % was dropped and no longer gives overrides to %', dropped.object_identity, forgotten.target;
        END LOOP;
    END LOOP;
END
$$;

