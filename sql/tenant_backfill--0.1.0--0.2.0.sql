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

-- Parent sources (add_parent): two columns of sources.
ALTER TABLE @extschema@.sources
    ADD COLUMN direction pg_catalog.text NOT NULL DEFAULT 'child'
        CONSTRAINT sources_direction_check CHECK (direction IN ('child', 'parent')),
    ADD COLUMN source_key pg_catalog.name,
    ADD CONSTRAINT sources_source_key_check
        CHECK ((direction OPERATOR(pg_catalog.=) 'parent') OPERATOR(pg_catalog.=) (source_key IS NOT NULL));

-- The column names and the role in each backup and audit row are text, not name (64 bytes
-- in every row: 30% of the log's WAL). Rewrites both tables.
ALTER TABLE @extschema@.backup ALTER COLUMN column_name TYPE pg_catalog.text;
ALTER TABLE @extschema@.audit_log
    ALTER COLUMN column_name TYPE pg_catalog.text,
    ALTER COLUMN changed_by TYPE pg_catalog.text;
-- A batch's DELETE of backup and audit rows must pass a publication FOR ALL TABLES
-- (write_path.sql). audit_log's primary key goes: nothing looks an audit row up by its id,
-- and the b-tree cost a quarter to a third of each audit row's write.
ALTER TABLE @extschema@.backup REPLICA IDENTITY FULL;
ALTER TABLE @extschema@.audit_log DROP CONSTRAINT audit_log_pkey, REPLICA IDENTITY FULL;

-- The rows a pass of a run did not write, which its next pass tries again (write_path.sql),
-- read as run_parts is (access.sql).
CREATE TABLE @extschema@.run_skipped (
    run_id  pg_catalog.int8 NOT NULL REFERENCES @extschema@.runs (run_id),
    target  pg_catalog.regclass NOT NULL,
    pass    pg_catalog.int4 NOT NULL,
    row_key pg_catalog.text NOT NULL
);
CREATE INDEX run_skipped_run_pass_idx ON @extschema@.run_skipped (run_id, pass);
ALTER TABLE @extschema@.run_skipped REPLICA IDENTITY FULL;
COMMENT ON TABLE @extschema@.run_skipped IS
    'The rows a pass of a run did not write (held by another session, or set meanwhile), which its next pass tries again.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.run_skipped', '');
ALTER TABLE @extschema@.run_skipped ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable ON @extschema@.run_skipped FOR SELECT
    USING (pg_catalog.has_any_column_privilege(target::pg_catalog.oid, 'SELECT'));
GRANT SELECT ON @extschema@.run_skipped TO PUBLIC;
-- 0.1.0 kept no keys of the rows a pass skipped (its later passes walked every key again):
-- a run it left unfinished past its first pass, or with rows skipped, does not try those
-- rows again once resumed. Said for each such run; its target's next run decides them.
DO $skipped$
DECLARE
    unfinished record;
BEGIN
    FOR unfinished IN
        SELECT r.run_id, COALESCE(r.target_name, r.target::pg_catalog.text) AS target, r.pass, r.rows_skipped
          FROM @extschema@.runs r
         WHERE r.kind OPERATOR(pg_catalog.=) 'run'
           AND r.status OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'paused', 'failed'])
           AND (r.pass OPERATOR(pg_catalog.>) 1 OR r.rows_skipped OPERATOR(pg_catalog.>) 0)
         ORDER BY r.run_id
    LOOP
        RAISE WARNING 'tenant_backfill: run % of % is unfinished in pass % with % rows skipped in it: resumed, it does not try again the rows it skipped before this update',
            unfinished.run_id, unfinished.target, unfinished.pass, unfinished.rows_skipped
            USING HINT = 'Once it has ended, CALL tenant_backfill.run(target) again: a new run decides them.';
    END LOOP;
END
$skipped$;

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

-- Every function and procedure re-created (50): the C functions move to this
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

-- A run's row as committed now. The progress view reads a run's row in its statement's
-- snapshot and the lock table live, and a run's end commits before its lock is released: a
-- run that ended between the two reads running there with no process. A VOLATILE function's
-- query takes a snapshot of its own (in read committed), after the lock table was read, so it
-- sees that end, its status, counts and error; a run whose process died without ending it
-- still reads running here.
CREATE FUNCTION tenant_backfill_internal._run_now(run_id pg_catalog.int8)
RETURNS @extschema@.runs
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r FROM @extschema@.runs r WHERE r.run_id OPERATOR(pg_catalog.=) _run_now.run_id
$$;

-- The same columns; a run that ended between its row's read and the lock table's reads as
-- ended, not failed, with the ended row's columns. (CREATE OR REPLACE VIEW replaces the view's options with its own.)
CREATE OR REPLACE VIEW @extschema@.progress WITH (security_invoker = true) AS
-- run_id, target, kind and started_at never change: read from the row seen, so that a filter
-- on them reaches the table's index.
SELECT seen.run_id,
       seen.target,
       seen.kind,
       r.status,
       r.rows_done,
       r.rows_total,
       CASE WHEN s.seconds > 0 THEN pg_catalog.round((s.rows / s.seconds)::pg_catalog.numeric, 1) END
           AS rows_per_second,
       CASE WHEN w.state IN ('running', 'throttled') AND s.rows > 0 AND s.seconds > 0
            THEN pg_catalog.make_interval(secs => GREATEST(r.rows_total - r.rows_done, 0) * s.seconds / s.rows)
       END AS eta,
       r.rows_changed,
       r.left_for_review,
       r.pass,
       seen.started_at,
       r.updated_at,
       -- running, throttled, paused, done, failed, cancelled (and planned, rolled_back):
       -- a run whose process is gone reads failed at once, with alive false; a paused or
       -- cancelled one stays alive until its workers have finished the batch they are in
       w.state,
       r.pid,
       w.alive,
       r.throttled_by,
       r.batch_size,
       CASE WHEN r.rows_total > 0 THEN pg_catalog.round(100.0 * r.rows_done / r.rows_total, 1)
            WHEN r.status IN ('done', 'planned') THEN 100.0 END AS percent,
       r.background,
       r.error
  FROM @extschema@.runs seen,
       -- OFFSET 0: the lock table read once per row, so the row taken and the state agree.
       LATERAL (SELECT tenant_backfill_internal._run_alive(seen.pid, seen.target) AS alive OFFSET 0) a,
       -- A running row whose process holds no lock: the run ended meanwhile, or its process
       -- died. The row as committed now then gives every column (OFFSET 0: read once).
       LATERAL (SELECT (x.run).* FROM (SELECT CASE WHEN seen.status = 'running' AND NOT a.alive
                                                   THEN COALESCE(tenant_backfill_internal._run_now(seen.run_id), seen)
                                                   ELSE seen END AS run OFFSET 0) x) r,
       LATERAL (SELECT pg_catalog.date_part('epoch', r.updated_at - COALESCE(r.walk_started_at, r.started_at)) AS seconds,
                       r.rows_done - CASE WHEN r.walk_started_at IS NULL THEN 0 ELSE r.walk_rows_base END AS rows) s,
       LATERAL (SELECT a.alive,
                       CASE WHEN r.status <> 'running' THEN r.status
                            WHEN NOT a.alive THEN 'failed'
                            WHEN r.throttled_by IS NOT NULL THEN 'throttled'
                            ELSE 'running' END AS state) w;

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

CREATE OR REPLACE FUNCTION "add_parent"(
	"target" regclass, /* Option < RegClass > */
	"parent" regclass, /* Option < RegClass > */
	"via" name, /* Option < SqlName > */
	"tenant_column" name DEFAULT NULL, /* Option < SqlName > */
	"phase" INT DEFAULT NULL /* Option < i32 > */
) RETURNS void
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'add_parent_wrapper';

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

CREATE OR REPLACE FUNCTION "audit"(
	"tenant_column" name, /* Option < SqlName > */
	"root" regclass DEFAULT NULL /* Option < RegClass > */
) RETURNS TABLE (
	"table_name" regclass,  /* RegClass */
	"role" TEXT,  /* String */
	"rows" bigint,  /* i64 */
	"null_tenant" bigint,  /* Option < i64 > */
	"cross_tenant" bigint,  /* Option < i64 > */
	"citus" TEXT,  /* String */
	"blockers" TEXT[]  /* Vec < String > */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'audit_wrapper';

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

CREATE OR REPLACE FUNCTION "distribution_plan"(
	"tenant_column" name, /* Option < SqlName > */
	"root" regclass DEFAULT NULL /* Option < RegClass > */
) RETURNS TABLE (
	"step" INT,  /* i32 */
	"statement" TEXT,  /* String */
	"why" TEXT  /* String */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'distribution_plan_wrapper';

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

CREATE OR REPLACE FUNCTION "remove_source"(
	"target" regclass, /* Option < RegClass > */
	"source" regclass, /* Option < RegClass > */
	"via" name DEFAULT NULL /* Option < SqlName > */
) RETURNS bigint /* i64 */
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', 'remove_source_wrapper';

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

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_run_batch"(
	"run_id" bigint, /* i64 */
	"skip_held_rows" bool, /* bool */
	"part" INT DEFAULT NULL /* Option < i32 > */
) RETURNS TEXT /* & '_ str */

SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_run_batch_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_run_end"(
	"run_id" bigint, /* i64 */
	"error_state" TEXT, /* Option < String > */
	"error_message" TEXT /* Option < String > */
) RETURNS void

SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_run_end_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_evidence_jsonb"(
	"evidence" TEXT /* & str */
) RETURNS jsonb /* RawJsonb */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_evidence_jsonb_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_guard_inheritors"(
	"table" regclass /* Option < crate :: types :: RegClass > */
) RETURNS void

SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_guard_inheritors_wrapper';

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

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_finalize_step"(
	"target" regclass, /* RegClass */
	"step" INT, /* i32 */
	"lock_timeout_ms" INT /* i32 */
) RETURNS void
STRICT 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_finalize_step_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_finalize_check"(
	"target" regclass /* Option < RegClass > */
) RETURNS TEXT /* String */

SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_finalize_check_wrapper';

CREATE OR REPLACE FUNCTION tenant_backfill_internal."_finalize_abort"(
	"target" regclass /* RegClass */
) RETURNS void
STRICT 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'tenant_backfill-0.2.0', '_finalize_abort_wrapper';

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
            ELSIF err_state OPERATOR(pg_catalog.=) '57014' THEN
                -- A cancel, or statement_timeout, which times the whole CALL, not a batch.
                err_detail := pg_catalog.format(
                    'Run %s of %s stopped; its status is failed, and what its batches committed stays.',
                    this_run, target);
                err_hint := 'CALL run again with the same mode to resume where it stopped, where no statement_timeout '
                            'applies: SET statement_timeout = 0 in a session of its own (a direct connection: behind a '
                            'transaction pooler the setting stays on a server connection other clients get), or '
                            'tenant_backfill.start, whose background workers no statement_timeout stops.';
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
-- How every statement of the extension prints values (PINNED_SETTINGS in src/sql.rs):
-- row_key reads back as the same key in any session.
SET search_path = pg_catalog, pg_temp
SET extra_float_digits = 1
SET "DateStyle" = 'ISO'
SET "IntervalStyle" = 'postgres'
SET bytea_output = 'hex'
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


-- Every public object of 0.2.0 is described (sql/comments.sql, as it was when 0.2.0 shipped).
COMMENT ON FUNCTION @extschema@.define(pg_catalog.regclass, pg_catalog.name, pg_catalog.name, pg_catalog.name) IS
    'Registers a target table, or updates its configuration: its tenant column, its key column (default: the single-column primary key) and its soft-delete column (default deleted_at). Needs UPDATE on the tenant column; changes no user row.';
COMMENT ON FUNCTION @extschema@.undefine(pg_catalog.regclass) IS
    'Forgets a target''s configuration, its sources, overrides and override tables with it. Its runs, backups and audit log stay.';
COMMENT ON FUNCTION @extschema@.add_source(pg_catalog.regclass, pg_catalog.regclass, pg_catalog.name, pg_catalog.name, pg_catalog.int4, pg_catalog.text) IS
    'Adds (or updates) a child source: a table whose via column holds the target''s key and whose tenant column (default: named like the target''s) is the evidence. phase defaults to the next free one (or the source''s current one); rule is unanimous (every related row with a tenant agrees, else a conflict) or majority (most related rows, ties to the lowest tenant).';
COMMENT ON FUNCTION @extschema@.add_parent(pg_catalog.regclass, pg_catalog.regclass, pg_catalog.name, pg_catalog.name, pg_catalog.int4) IS
    'Adds (or updates) a parent source: the table the target''s own via column points at, matched on what via''s foreign key references (else its single-column primary key); that one row''s tenant (tenant_column, default: named like the target''s) is the evidence, and a parent whose tenant is NULL is none. phase as for add_source.';
COMMENT ON FUNCTION @extschema@.remove_source(pg_catalog.regclass, pg_catalog.regclass, pg_catalog.name) IS
    'Removes a source of the target (every one of that table when via is NULL) and returns how many; the other phases keep their numbers, and runs, backups and the audit log stay.';
COMMENT ON FUNCTION @extschema@.set_override(pg_catalog.regclass, pg_catalog.text, pg_catalog.text, pg_catalog.text) IS
    'Records a DBA''s decision for one existing row (key and tenant as text, cast to the columns'' types), which beats every phase; a NULL tenant removes the override.';
COMMENT ON FUNCTION @extschema@.add_override_table(pg_catalog.regclass, pg_catalog.regclass, pg_catalog.name, pg_catalog.name, pg_catalog.text) IS
    'Reads overrides live from an application''s config table: a row whose key_column is key_prefix followed by a target row''s key gives that row the tenant in value_column. Config tables count after the overrides table, in the order they were added.';
COMMENT ON FUNCTION @extschema@.override_for(pg_catalog.regclass, pg_catalog.text) IS
    'The override in force for one row, as text (the overrides table first, then the config tables in order), or NULL when there is none.';
COMMENT ON FUNCTION @extschema@.discover(pg_catalog.regclass) IS
    'Candidate sources for add_source: single-column foreign keys to the target''s key from tables with a column named like the target''s tenant column; has_index says whether an index leads with the via column.';


COMMENT ON FUNCTION @extschema@.preflight(pg_catalog.regclass, pg_catalog.text) IS
    'Read-only counts to check before a run, one row per check: total_rows, null_tenant, by_override, by_phase_<n>, conflicts, orphans, unresolved, source_null_tenant, source_bad_tenant, missing_index (and mismatched in mode reassign); detail names the sources, columns or values.';
COMMENT ON FUNCTION @extschema@.conflicts(pg_catalog.regclass, pg_catalog.text) IS
    'Read-only: the rows a unanimous phase refuses because its evidence names more than one tenant, with the evidence (tenant -> number of related rows, per source).';
COMMENT ON FUNCTION @extschema@.review_queue(pg_catalog.regclass, pg_catalog.text) IS
    'Read-only: every row left for a human (reason conflict, unresolved or orphan) with its evidence and the whole row as jsonb, for \copy to CSV; the last column, tenant, is left empty for the reviewer, and apply_decisions reads the file back. Needs SELECT on the whole target.';


COMMENT ON FUNCTION @extschema@.run_now(pg_catalog.regclass, pg_catalog.text, pg_catalog.bool) IS
    'Backfills the target in the caller''s transaction (one statement that decides and updates, then a backup and an audit row per changed row), for migrations and small tables; returns the run id, rows changed, rows changed per phase and rows left for review. A dry run writes no user row and ends planned.';
COMMENT ON FUNCTION @extschema@.apply_decisions(pg_catalog.regclass, pg_catalog.regclass) IS
    'Applies a reviewed table (columns row_key and tenant, such as review_queue''s CSV loaded back) as a run of its own, phase manual, with backup and audit; returns the rows changed. Rows with an empty tenant are left alone; an unknown key, a value that does not cast or a row decided twice differently is an error and nothing is applied.';
COMMENT ON FUNCTION @extschema@.soft_delete_orphans(pg_catalog.regclass, pg_catalog.bool) IS
    'Sets the target''s soft-delete column (now() for a timestamp or date, true for a boolean) on orphans not yet soft-deleted (NULL-tenant rows with no related row in any source), as a run with backup and audit that rollback undoes; returns the rows changed (a dry run: the rows it would change, writing none).';


COMMENT ON FUNCTION @extschema@.validate(pg_catalog.regclass, pg_catalog.int8, pg_catalog.text) IS
    'Proves a run (default: the target''s latest that wrote something), one row per check: no_null_tenant (soft-deleted rows excepted), row_count_unchanged, sources_agree, audit_complete, backup_complete and, where the target has row-level security, isolation, checked with tenant_setting set to each tenant. ok is NULL where a check does not apply.';
COMMENT ON FUNCTION @extschema@.rollback(pg_catalog.int8, pg_catalog.bool) IS
    'Restores the rows a run changed from its backup in one transaction, as a run of its own (phase rollback), and marks the original rolled_back; returns rows restored and skipped. A row changed since the run is skipped unless force.';


COMMENT ON FUNCTION @extschema@.enforce(pg_catalog.regclass, pg_catalog.text, pg_catalog.name) IS
    'Installs the guard triggers (or replaces their mode) on the target and its inheritance children, for writes that leave the tenant NULL: reject (error 23502), quarantine (the row goes to tenant_backfill.quarantine instead), assign (the parent row''s tenant through parent_column, else the tenant_backfill.tenant setting) or log (let in, recorded in violations).';
COMMENT ON FUNCTION @extschema@.unenforce(pg_catalog.regclass) IS
    'Removes the guard triggers from the target and its inheritance children.';
COMMENT ON FUNCTION @extschema@.release_quarantine(pg_catalog.regclass, pg_catalog.text) IS
    'Puts the target''s quarantined rows that now carry a tenant back into the table (an INSERT or UPDATE, as they were written), audited as a run; tenant, when given, is set on every waiting row first. Returns the rows released.';
COMMENT ON FUNCTION @extschema@.rejection_queue() IS
    'The state of the guard''s rejected writes: preloaded says whether they reach violations through shared memory (tenant_backfill in shared_preload_libraries) or go only to the server log; waiting and dropped count rejected writes (dropped since the server started) and are NULL without preloading.';
COMMENT ON FUNCTION @extschema@.monitor(pg_catalog.regclass, pg_catalog.interval) IS
    'Rows to alert on: new_null_rows in the window since (by created_at or updated_at where the table has one, else all), sources_disagree, violations in the window, quarantined rows waiting, and rejections_dropped.';
COMMENT ON FUNCTION @extschema@.guard() IS
    'The guard trigger function (Rust) that enforce installs; it acts only on a row whose tenant is NULL, in the mode of its first argument. Not to be called directly.';


COMMENT ON FUNCTION @extschema@.start(pg_catalog.regclass, pg_catalog.text, pg_catalog.int4, pg_catalog.int4, pg_catalog.int4, pg_catalog.int4, pg_catalog.interval, pg_catalog.int8, pg_catalog.int4) IS
    'Starts (or resumes) the target''s run in background workers of this database, beginning when this transaction commits, and returns its run_id at once. batch_size NULL sizes each batch toward target_batch_ms; pause_ms and lock_timeout_ms are milliseconds, max_replica_lag_bytes bytes; workers at most tenant_backfill.max_workers.';
COMMENT ON FUNCTION @extschema@.pause(pg_catalog.int8) IS
    'Pauses a run of CALL run or start after its current batch (status paused, holding nothing); a run with no live process is paused at once. resume continues it.';
COMMENT ON FUNCTION @extschema@.resume(pg_catalog.int8) IS
    'Continues a paused or failed run, or one whose process is gone, in a background worker from where it stopped, with its settings; a run that is running refuses.';
COMMENT ON FUNCTION @extschema@.cancel(pg_catalog.int8) IS
    'Stops a run for good after its current batch (status cancelled); what it wrote stays, and rollback(run_id) undoes it.';
COMMENT ON FUNCTION @extschema@.wait(pg_catalog.int8, pg_catalog.interval) IS
    'Blocks until the run is neither running nor throttled and none of its processes is left, or until timeout passes, and returns its state (progress.state). Needs a read committed transaction other than the one that started the run.';


COMMENT ON COLUMN @extschema@.targets.target IS 'The table whose tenant column is repaired.';
COMMENT ON COLUMN @extschema@.targets.tenant_column IS 'The tenant column that runs fill or reassign.';
COMMENT ON COLUMN @extschema@.targets.key_column IS 'The single NOT NULL unique column that names a row; row keys elsewhere are its values as text.';
COMMENT ON COLUMN @extschema@.targets.soft_delete_column IS 'The column soft_delete_orphans sets (a timestamp, date or boolean column); deleted_at unless define named another.';
COMMENT ON COLUMN @extschema@.targets.tenant_attnum IS 'The tenant column''s number when defined: a column renamed since, or another under its old name, stops every call with 55000.';
COMMENT ON COLUMN @extschema@.targets.key_attnum IS 'The key column''s number when defined, checked like tenant_attnum.';
COMMENT ON COLUMN @extschema@.targets.target_oid IS 'The table''s OID when defined; when it differs now (a dump and restore, a table created again) the column numbers are ignored and the names trusted.';
COMMENT ON COLUMN @extschema@.targets.defined_at IS 'When define last registered or updated the target.';
COMMENT ON COLUMN @extschema@.targets.defined_by IS 'The role that called define.';

COMMENT ON COLUMN @extschema@.sources.target IS 'The target this source gives evidence for.';
COMMENT ON COLUMN @extschema@.sources.source IS 'The related table.';
COMMENT ON COLUMN @extschema@.sources.via IS 'A child''s column that holds the target''s key; for a parent, the target''s column that holds the parent''s key.';
COMMENT ON COLUMN @extschema@.sources.tenant_column IS 'The source''s tenant column; its non-NULL values are the evidence.';
COMMENT ON COLUMN @extschema@.sources.phase IS 'Where the source stands in the cascade: phases are tried from 1 up, one source each.';
COMMENT ON COLUMN @extschema@.sources.direction IS 'child (add_source): the source''s rows point at the target row, any number of them; parent (add_parent): the target row points at one source row.';
COMMENT ON COLUMN @extschema@.sources.source_key IS 'A parent''s unique column that the target''s via holds (NULL for a child).';
COMMENT ON COLUMN @extschema@.sources.rule IS 'unanimous: decides only when every related row with a tenant agrees, else the row is a conflict; majority: the tenant of most related rows, ties to the lowest.';

COMMENT ON COLUMN @extschema@.overrides.target IS 'The target the overridden row belongs to.';
COMMENT ON COLUMN @extschema@.overrides.row_key IS 'The overridden row''s key, as text.';
COMMENT ON COLUMN @extschema@.overrides.tenant IS 'The tenant the row gets, as text (cast to the tenant column''s type).';
COMMENT ON COLUMN @extschema@.overrides.note IS 'Why, in the DBA''s words (set_override''s note).';
COMMENT ON COLUMN @extschema@.overrides.set_at IS 'When the override was last set.';
COMMENT ON COLUMN @extschema@.overrides.set_by IS 'The role that set it.';

COMMENT ON COLUMN @extschema@.override_tables.target IS 'The target the config table gives overrides for.';
COMMENT ON COLUMN @extschema@.override_tables.config_table IS 'The application''s config table, read live.';
COMMENT ON COLUMN @extschema@.override_tables.key_column IS 'The config table''s column holding key_prefix followed by a target row''s key.';
COMMENT ON COLUMN @extschema@.override_tables.value_column IS 'The config table''s column holding the tenant; rows where it is NULL give no override.';
COMMENT ON COLUMN @extschema@.override_tables.key_prefix IS 'The prefix of key_column before the row''s key, e.g. ShiftTypeCompanyOverride:; empty for none.';
COMMENT ON COLUMN @extschema@.override_tables.position IS 'The order among the target''s config tables, 1 first; the overrides table comes before all of them.';


COMMENT ON COLUMN @extschema@.runs.run_id IS 'The run''s id, as start, run_now, validate, rollback and the audit log name it.';
COMMENT ON COLUMN @extschema@.runs.target IS 'The target table.';
COMMENT ON COLUMN @extschema@.runs.target_name IS 'The target''s schema-qualified name when the run started, kept after a DROP TABLE.';
COMMENT ON COLUMN @extschema@.runs.kind IS 'What made the run: run (CALL run or start), run_now, apply_decisions, soft_delete_orphans, rollback or release_quarantine.';
COMMENT ON COLUMN @extschema@.runs.mode IS 'fill (NULL tenants only) or reassign (also tenants the decision contradicts) for run and run_now; NULL for the other kinds.';
COMMENT ON COLUMN @extschema@.runs.dry_run IS 'A dry run counts what it would change and writes no user row, backup or audit row.';
COMMENT ON COLUMN @extschema@.runs.status IS 'planned (a dry run that ended), running, paused, done, failed, cancelled or rolled_back; a running run whose process is gone still reads running here (progress.state says failed).';
COMMENT ON COLUMN @extschema@.runs.batch_size IS 'Rows per batch, the current size for an adaptive run; NULL for kinds other than run.';
COMMENT ON COLUMN @extschema@.runs.adaptive_batch IS 'Whether each batch is sized toward target_batch_ms (batch_size NULL was given): 1000 rows first, then 100 to 1,000,000.';
COMMENT ON COLUMN @extschema@.runs.target_batch_ms IS 'The time an adaptive batch aims at, in milliseconds.';
COMMENT ON COLUMN @extschema@.runs.pause_ms IS 'The pause between batches, in milliseconds.';
COMMENT ON COLUMN @extschema@.runs.lock_timeout_ms IS 'How long a batch waits for its locks, in milliseconds (a batch''s first try at most 50).';
COMMENT ON COLUMN @extschema@.runs.max_replica_lag IS 'The run waits before a batch while a standby''s replay lag is longer; NULL watches nothing.';
COMMENT ON COLUMN @extschema@.runs.max_replica_lag_bytes IS 'The run waits before a batch while a standby replays more than this many bytes behind; NULL watches nothing.';
COMMENT ON COLUMN @extschema@.runs.max_transaction_age IS 'The run waits while another session of the database has a transaction open longer (tenant_backfill.max_transaction_age); NULL watches nothing.';
COMMENT ON COLUMN @extschema@.runs.background IS 'Whether background workers drive the run (start, resume) rather than a CALL run session.';
COMMENT ON COLUMN @extschema@.runs.workers IS 'How many workers share the run''s first pass (run_parts); 1 when one process drives it.';
COMMENT ON COLUMN @extschema@.runs.run_as IS 'The OID of the role a background run works as: the role that called start or resume.';
COMMENT ON COLUMN @extschema@.runs.requested IS 'pause or cancel, asked of the running run and done after its current batch; NULL when nothing is asked.';
COMMENT ON COLUMN @extschema@.runs.pid IS 'The process driving the run (the lead background worker, or the backend of the calling session); cleared when that process ends the run.';
COMMENT ON COLUMN @extschema@.runs.throttled_by IS 'Why the run waits before its next batch (replica lag, an old transaction, autovacuum on the target); NULL when it does not.';
COMMENT ON COLUMN @extschema@.runs.parameters IS 'What else the run was given, as jsonb: the decisions table, the soft-delete column, the run rolled back and force, rows skipped.';
COMMENT ON COLUMN @extschema@.runs.rows_at_start IS 'Rows in the target when the run started (validate''s row_count_unchanged); NULL for rollback and release_quarantine.';
COMMENT ON COLUMN @extschema@.runs.rows_total IS 'Rows the run examines: the NULL-tenant rows in fill, every row in reassign; 0 for the kinds without a mode.';
COMMENT ON COLUMN @extschema@.runs.rows_done IS 'Rows examined so far (in the first pass).';
COMMENT ON COLUMN @extschema@.runs.rows_changed IS 'Rows written (for a dry run: the rows it would write).';
COMMENT ON COLUMN @extschema@.runs.by_phase IS 'Rows changed per phase, as jsonb: {"1": 15, "override": 1}; manual, orphan, rollback or quarantine for the other kinds.';
COMMENT ON COLUMN @extschema@.runs.left_for_review IS 'Rows left for a human: conflicts, unresolved rows and orphans.';
COMMENT ON COLUMN @extschema@.runs.rows_skipped IS 'Rows of this pass not written because another session held them or changed them meanwhile; held rows are tried again in the next pass.';
COMMENT ON COLUMN @extschema@.runs.batches IS 'Batches done.';
COMMENT ON COLUMN @extschema@.runs.pass IS 'Which pass: 1, the walk over the keys; then up to 3, over the rows the pass before did not write (run_skipped).';
COMMENT ON COLUMN @extschema@.runs.longest_batch_ms IS 'The longest time a batch held its rows locked, from its write statement to its commit, in milliseconds.';
COMMENT ON COLUMN @extschema@.runs.last_key IS 'The keyset cursor: the last key done, as text; the run resumes after it.';
COMMENT ON COLUMN @extschema@.runs.upper_key IS 'The highest key when the run started, where it stops: rows inserted later are the guard''s business.';
COMMENT ON COLUMN @extschema@.runs.started_at IS 'When the run started.';
COMMENT ON COLUMN @extschema@.runs.walk_started_at IS 'When the walk going on now began: the end of its first batch since the run started or resumed; progress rates rows per second and ETA from here.';
COMMENT ON COLUMN @extschema@.runs.walk_rows_base IS 'rows_done when the walk going on now began.';
COMMENT ON COLUMN @extschema@.runs.updated_at IS 'When the run''s row last changed (after each batch).';
COMMENT ON COLUMN @extschema@.runs.finished_at IS 'When the run ended (done, planned, failed or cancelled); NULL while it runs or is paused.';
COMMENT ON COLUMN @extschema@.runs.started_by IS 'The role that started the run.';
COMMENT ON COLUMN @extschema@.runs.error IS 'The error a failed run stopped on, as SQLSTATE: message.';
COMMENT ON COLUMN @extschema@.runs.rolled_back_by IS 'The rollback run that undid this run.';

COMMENT ON COLUMN @extschema@.run_parts.run_id IS 'The run the part belongs to.';
COMMENT ON COLUMN @extschema@.run_parts.target IS 'The run''s target.';
COMMENT ON COLUMN @extschema@.run_parts.part IS 'The part''s number from 0; the lead worker walks part 0, and any part whose worker is gone.';
COMMENT ON COLUMN @extschema@.run_parts.after_key IS 'The part begins after this key; NULL: at the first key.';
COMMENT ON COLUMN @extschema@.run_parts.up_to_key IS 'The part''s last key (included).';
COMMENT ON COLUMN @extschema@.run_parts.last_key IS 'The part''s cursor: the last key done.';
COMMENT ON COLUMN @extschema@.run_parts.done IS 'Whether the part has walked all its keys.';
COMMENT ON COLUMN @extschema@.run_skipped.run_id IS 'The run that skipped the row.';
COMMENT ON COLUMN @extschema@.run_skipped.target IS 'The run''s target.';
COMMENT ON COLUMN @extschema@.run_skipped.pass IS 'The pass that skipped the row; the next pass tries it again (the last pass''s rows stay, unchanged).';
COMMENT ON COLUMN @extschema@.run_skipped.row_key IS 'The row''s key, as text.';

COMMENT ON COLUMN @extschema@.backup.run_id IS 'The run that changed the row.';
COMMENT ON COLUMN @extschema@.backup.target IS 'The table of the row.';
COMMENT ON COLUMN @extschema@.backup.row_key IS 'The row''s key, as text.';
COMMENT ON COLUMN @extschema@.backup.column_name IS 'The column changed: the tenant column, or the soft-delete column for soft_delete_orphans.';
COMMENT ON COLUMN @extschema@.backup.old_value IS 'The value before the run, as text; rollback puts it back (NULL: it was NULL).';
COMMENT ON COLUMN @extschema@.backup.new_value IS 'The value the run wrote, as text; rollback skips the row if it holds something else now (unless force).';

COMMENT ON COLUMN @extschema@.audit_log.audit_id IS 'The audit row''s id, in the order changes were logged.';
COMMENT ON COLUMN @extschema@.audit_log.run_id IS 'The run that changed the value.';
COMMENT ON COLUMN @extschema@.audit_log.target IS 'The table of the row.';
COMMENT ON COLUMN @extschema@.audit_log.row_key IS 'The row''s key, as text.';
COMMENT ON COLUMN @extschema@.audit_log.column_name IS 'The column changed: the tenant column, or the soft-delete column for soft_delete_orphans.';
COMMENT ON COLUMN @extschema@.audit_log.old_value IS 'The value before, as text.';
COMMENT ON COLUMN @extschema@.audit_log.new_value IS 'The value after, as text.';
COMMENT ON COLUMN @extschema@.audit_log.phase IS 'What decided: a source''s phase number, override, manual (apply_decisions), orphan (soft_delete_orphans), rollback or quarantine (release_quarantine).';
COMMENT ON COLUMN @extschema@.audit_log.source IS 'Where the value came from: the source''s label, overrides or the config table of an override, the decisions table, soft_delete_orphans, run <n> for a rollback, or quarantine.';
COMMENT ON COLUMN @extschema@.audit_log.rule IS 'unanimous, majority, override, manual (apply_decisions, release_quarantine), orphan or rollback.';
COMMENT ON COLUMN @extschema@.audit_log.evidence IS 'The evidence the decision saw: tenant -> number of related rows, per source; NULL for manual decisions, rollbacks and releases.';
COMMENT ON COLUMN @extschema@.audit_log.changed_at IS 'When the value was changed.';
COMMENT ON COLUMN @extschema@.audit_log.changed_by IS 'The role that made the change.';


COMMENT ON COLUMN @extschema@.violations.violation_id IS 'The violation''s id, in the order they were recorded.';
COMMENT ON COLUMN @extschema@.violations.occurred_at IS 'When the write happened.';
COMMENT ON COLUMN @extschema@.violations.target IS 'The guarded table written to.';
COMMENT ON COLUMN @extschema@.violations.row_key IS 'The written row''s key, as text.';
COMMENT ON COLUMN @extschema@.violations.column_name IS 'The tenant column, by its name at the time.';
COMMENT ON COLUMN @extschema@.violations.role IS 'The role that wrote the row.';
COMMENT ON COLUMN @extschema@.violations.application_name IS 'The writing session''s application_name.';
COMMENT ON COLUMN @extschema@.violations.mode IS 'The guard''s mode: reject, quarantine, assign or log.';
COMMENT ON COLUMN @extschema@.violations.action IS 'What the guard did: rejected, quarantined, assigned or logged.';
COMMENT ON COLUMN @extschema@.violations.operation IS 'INSERT or UPDATE.';

COMMENT ON COLUMN @extschema@.quarantine.quarantine_id IS 'The quarantined row''s id, in the order rows arrived.';
COMMENT ON COLUMN @extschema@.quarantine.target IS 'The guarded table the row was written to.';
COMMENT ON COLUMN @extschema@.quarantine.operation IS 'INSERT or UPDATE: how release_quarantine puts the row back.';
COMMENT ON COLUMN @extschema@.quarantine.row_key IS 'The row''s key, as text.';
COMMENT ON COLUMN @extschema@.quarantine.row_data IS 'The whole row as jsonb; set its tenant here (or pass one to release_quarantine) to release it.';
COMMENT ON COLUMN @extschema@.quarantine.role IS 'The role that wrote the row.';
COMMENT ON COLUMN @extschema@.quarantine.application_name IS 'The writing session''s application_name.';
COMMENT ON COLUMN @extschema@.quarantine.quarantined_at IS 'When the row was kept out.';
COMMENT ON COLUMN @extschema@.quarantine.released_at IS 'When release_quarantine put the row back; NULL while it waits.';
COMMENT ON COLUMN @extschema@.quarantine.released_by IS 'The role that released it.';
COMMENT ON COLUMN @extschema@.quarantine.released_run IS 'The release_quarantine run that released it (its audit rows).';


COMMENT ON COLUMN @extschema@.progress.run_id IS 'The run''s id.';
COMMENT ON COLUMN @extschema@.progress.target IS 'The target table.';
COMMENT ON COLUMN @extschema@.progress.kind IS 'What made the run (runs.kind).';
COMMENT ON COLUMN @extschema@.progress.status IS 'The run''s recorded status (runs.status); state says what it is doing now.';
COMMENT ON COLUMN @extschema@.progress.rows_done IS 'Rows examined so far.';
COMMENT ON COLUMN @extschema@.progress.rows_total IS 'Rows the run examines: the NULL-tenant rows in fill, every row in reassign.';
COMMENT ON COLUMN @extschema@.progress.rows_per_second IS 'Rows examined per second in the walk going on now (since the end of its first batch), to one decimal.';
COMMENT ON COLUMN @extschema@.progress.eta IS 'The time left at rows_per_second, while the run is running or throttled; else NULL.';
COMMENT ON COLUMN @extschema@.progress.rows_changed IS 'Rows written so far.';
COMMENT ON COLUMN @extschema@.progress.left_for_review IS 'Rows left for a human so far: conflicts, unresolved rows and orphans.';
COMMENT ON COLUMN @extschema@.progress.pass IS 'Which pass: 1, the walk over the keys; then up to 3, over the rows the pass before did not write (run_skipped).';
COMMENT ON COLUMN @extschema@.progress.started_at IS 'When the run started.';
COMMENT ON COLUMN @extschema@.progress.updated_at IS 'When the run last reported (after each batch).';
COMMENT ON COLUMN @extschema@.progress.state IS 'running, throttled, paused, done, failed or cancelled (planned and rolled_back as status has them); failed also for a running run whose process is gone.';
COMMENT ON COLUMN @extschema@.progress.pid IS 'The process driving the run (runs.pid): the lead background worker, or the backend of the calling session.';
COMMENT ON COLUMN @extschema@.progress.alive IS 'Whether the process in pid holds the target''s run lock now (read from pg_locks): false the moment it is gone.';
COMMENT ON COLUMN @extschema@.progress.throttled_by IS 'Why the run waits before its next batch; NULL when it does not.';
COMMENT ON COLUMN @extschema@.progress.batch_size IS 'Rows per batch, the current one for an adaptive run.';
COMMENT ON COLUMN @extschema@.progress.percent IS 'rows_done as a percentage of rows_total, to one decimal; 100 for a done or planned run with nothing to examine.';
COMMENT ON COLUMN @extschema@.progress.background IS 'Whether background workers drive the run (start, resume).';
COMMENT ON COLUMN @extschema@.progress.error IS 'The error a failed run stopped on, as SQLSTATE: message.';


COMMENT ON FUNCTION @extschema@.audit(pg_catalog.name, pg_catalog.regclass) IS
    'Read-only, with the caller''s rights: one row per ordinary or partitioned table the caller may read (partitions counted in their parent; system, tenant_backfill''s, other extensions'' and temporary tables left out), in table_name order. role: root (the given root, else the table most single-column foreign keys on the tenant column point at), tenant (has the tenant column, named exactly), derivable (foreign keys lead from it to the root or a tenant table), reference (the root, a tenant or a reference table points at it) or local. rows is exact below 100000 estimated rows (pg_class.reltuples, summed over partitions) or without an estimate, else the estimate; null_tenant and cross_tenant (tenant tables only) are exact, cross_tenant counting a row once per foreign key without the tenant column through which it points at a row of another tenant. citus: distribute, reference, local or blocked, with each blocker and its fix in blockers.';
COMMENT ON FUNCTION @extschema@.distribution_plan(pg_catalog.name, pg_catalog.regclass) IS
    'Read-only: the statements, in order, that move the audited schema onto a Citus coordinator: drop the foreign keys between the tables to convert, create_reference_table for each reference table, create_distributed_table for the root by its key and for each tenant table by the tenant column, colocated with the root, and the foreign keys again as they were; local tables are left alone. While audit reports a table blocked it raises 55000, naming each with its first blocker; 42501 while a table it would convert is one the caller cannot read.';

COMMENT ON VIEW @extschema@.progress IS
    'Each run''s state (planned, running, throttled, paused, done, failed, cancelled, rolled_back), its process and whether it is alive, rows done and total, percent, rows per second and time left.';
