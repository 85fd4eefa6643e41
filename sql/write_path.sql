-- What every change leaves behind: the runs, a backup of each row's prior value, and
-- the audit log. All are registered with pg_extension_config_dump so pg_dump keeps them.

CREATE TABLE @extschema@.runs (
    run_id           bigserial PRIMARY KEY,
    target           pg_catalog.regclass NOT NULL,
    -- the target's schema-qualified name when the run started: history keeps it after a
    -- DROP TABLE, when target reads as a bare number
    target_name      pg_catalog.text,
    -- what made it (src/runs.rs, RunKind)
    kind             pg_catalog.text NOT NULL
                     CHECK (kind IN ('run', 'run_now', 'apply_decisions', 'soft_delete_orphans',
                                     'rollback', 'release_quarantine')),
    mode             pg_catalog.text,
    dry_run          pg_catalog.bool NOT NULL DEFAULT false,
    -- planned (a dry run: nothing written), running, paused, done, failed, cancelled,
    -- rolled_back (src/runs.rs, RunStatus)
    status           pg_catalog.text NOT NULL
                     CHECK (status IN ('planned', 'running', 'paused', 'done', 'failed', 'cancelled',
                                       'rolled_back')),
    -- CALL run's and start's settings (NULL for the other kinds); what else a kind was
    -- given (the decisions table, the run rolled back) is in parameters. batch_size is
    -- the current one: an adaptive run sizes each batch toward target_batch_ms.
    batch_size       pg_catalog.int4 CHECK (batch_size > 0),
    adaptive_batch   pg_catalog.bool NOT NULL DEFAULT false,
    target_batch_ms  pg_catalog.int4 CHECK (target_batch_ms > 0),
    pause_ms         pg_catalog.int4 CHECK (pause_ms >= 0),
    lock_timeout_ms  pg_catalog.int4 CHECK (lock_timeout_ms > 0),
    -- the throttle's limits (src/throttle.rs): replay lag of any standby, in time and
    -- in bytes, and the age of the oldest transaction of another session
    max_replica_lag       pg_catalog.interval,
    max_replica_lag_bytes pg_catalog.int8,
    max_transaction_age   pg_catalog.interval,
    -- a background run (start): how many workers, their role, and what was asked of it
    background       pg_catalog.bool NOT NULL DEFAULT false,
    workers          pg_catalog.int4 NOT NULL DEFAULT 1 CHECK (workers BETWEEN 1 AND 64),
    run_as           pg_catalog.oid,
    requested        pg_catalog.text CHECK (requested IN ('pause', 'cancel')),
    -- the process working on the run now (a worker, or the backend of a CALL run), and
    -- why it is waiting instead, when it is
    pid              pg_catalog.int4,
    throttled_by     pg_catalog.text,
    parameters       pg_catalog.jsonb NOT NULL DEFAULT '{}',
    rows_at_start    pg_catalog.int8,
    rows_total       pg_catalog.int8 NOT NULL DEFAULT 0,
    rows_done        pg_catalog.int8 NOT NULL DEFAULT 0,
    rows_changed     pg_catalog.int8 NOT NULL DEFAULT 0,
    by_phase         pg_catalog.jsonb NOT NULL DEFAULT '{}',
    left_for_review  pg_catalog.int8 NOT NULL DEFAULT 0,
    rows_skipped     pg_catalog.int8 NOT NULL DEFAULT 0,
    batches          pg_catalog.int4 NOT NULL DEFAULT 0,
    pass             pg_catalog.int4 NOT NULL DEFAULT 1,
    -- the longest time a batch held its rows locked: from its write statement to its commit
    longest_batch_ms pg_catalog.float8,
    -- keyset cursor: the last key done, and the highest key when the run started
    last_key         pg_catalog.text,
    upper_key        pg_catalog.text,
    started_at       pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    -- when the walk that goes on now began (the end of its first batch since the run
    -- started or was last resumed), and rows_done then: the rate and ETA of progress are
    -- this walk's, without the start-up, the cold first batch or the time it was paused
    walk_started_at  pg_catalog.timestamptz,
    walk_rows_base   pg_catalog.int8 NOT NULL DEFAULT 0,
    updated_at       pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished_at      pg_catalog.timestamptz,
    started_by       pg_catalog.name NOT NULL DEFAULT CURRENT_USER,
    error            pg_catalog.text,
    rolled_back_by   pg_catalog.int8
);
CREATE INDEX runs_target_idx ON @extschema@.runs (target, run_id);
COMMENT ON TABLE @extschema@.runs IS
    'Every run, run_now, apply_decisions, soft_delete_orphans, rollback and release_quarantine, with its counts and status.';

-- The key ranges of a run that several workers share (start(workers => N)): the first
-- pass over the keys is split into N parts of about as many rows, one per worker, each
-- with its own cursor. Only src/runs.rs writes here.
CREATE TABLE @extschema@.run_parts (
    run_id   pg_catalog.int8 NOT NULL REFERENCES @extschema@.runs (run_id),
    target   pg_catalog.regclass NOT NULL,
    part     pg_catalog.int4 NOT NULL CHECK (part >= 0),
    -- the part's keys: after after_key (NULL: from the first) up to up_to_key
    after_key pg_catalog.text,
    up_to_key pg_catalog.text NOT NULL,
    -- the part's cursor, and whether it has walked all its keys
    last_key pg_catalog.text,
    done     pg_catalog.bool NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, part)
);
COMMENT ON TABLE @extschema@.run_parts IS
    'The key ranges of a run shared by several workers, each with its cursor (start(workers => N)).';

-- The rows a pass of a run of committed batches did not write (another session held them,
-- or set them meanwhile), by key: the run's next pass decides these keys again and no
-- others, so it never writes a row the run wrote before, and costs what its rows do, not a
-- walk of the whole table. A later pass takes its batches' keys from here (deleting them);
-- the rows its last pass left stay, the record of what the run did not change. Only
-- src/runs.rs and src/writer.rs write here.
CREATE TABLE @extschema@.run_skipped (
    run_id  pg_catalog.int8 NOT NULL REFERENCES @extschema@.runs (run_id),
    target  pg_catalog.regclass NOT NULL,
    -- the pass that skipped the row
    pass    pg_catalog.int4 NOT NULL,
    row_key pg_catalog.text NOT NULL
);
-- Not a b-tree on the key: a key's text may be longer than a b-tree entry may be (a bytea
-- key prints as twice its size), and a pass takes its keys in no particular order.
CREATE INDEX run_skipped_run_pass_idx ON @extschema@.run_skipped (run_id, pass);
-- A later pass deletes the keys it takes: a published table needs an identity for that
-- (as backup's, above).
ALTER TABLE @extschema@.run_skipped REPLICA IDENTITY FULL;
COMMENT ON TABLE @extschema@.run_skipped IS
    'The rows a pass of a run did not write (held by another session, or set meanwhile), which its next pass tries again.';

-- Whether the process named by a run is working on it: it holds the target's run lock
-- (src/locks.rs: classid 1952804450 is its LOCK_CLASS, 'tenb'), which dies with it. A background worker takes the lock before its
-- start returns. pg_locks is visible to every role, and live (pg_stat_activity is a
-- snapshot per transaction, which would keep a dead process alive for a whole wait).
CREATE FUNCTION tenant_backfill_internal._run_alive(run_pid pg_catalog.int4, run_target pg_catalog.regclass)
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

-- The prior value of every row a run changed, written in the change's transaction
-- (src/writer.rs): enough to restore it exactly (rollback).
CREATE TABLE @extschema@.backup (
    run_id      pg_catalog.int8 NOT NULL,
    target      pg_catalog.regclass NOT NULL,
    row_key     pg_catalog.text NOT NULL,
    -- text, not name: a name takes 64 bytes in every row, 35% of a backup row's WAL.
    column_name pg_catalog.text NOT NULL,
    old_value   pg_catalog.text,
    new_value   pg_catalog.text
);
-- Rows arrive in run order, so a BRIN index finds a run's rows at almost no cost per
-- write (a b-tree here cost a fifth of a run's time in the benchmark). One row per
-- changed row and run; only src/writer.rs writes here (and audit_log), src/runs.rs
-- writes runs.
CREATE INDEX backup_run_id_idx ON @extschema@.backup USING brin (run_id);
-- A batch deletes the backup rows of rows it did not write after all (src/writer.rs, unlog),
-- and Postgres refuses a DELETE from a table without a replica identity that a publication
-- publishes (one FOR ALL TABLES publishes the extension's tables too): FULL, the whole row,
-- for a table with no key. It costs nothing until a row is deleted under wal_level logical.
ALTER TABLE @extschema@.backup REPLICA IDENTITY FULL;
COMMENT ON TABLE @extschema@.backup IS
    'Each changed row''s value before the run that changed it (the runbook''s customers_company_id_backup).';

CREATE TABLE @extschema@.audit_log (
    -- numbered by its sequence, in the order rows were logged; no b-tree on it: nothing
    -- looks a row up by its id, and the index was a quarter to a third of each audit row's write.
    audit_id    bigserial NOT NULL,
    run_id      pg_catalog.int8 NOT NULL,
    target      pg_catalog.regclass NOT NULL,
    row_key     pg_catalog.text NOT NULL,
    -- text, not name, here and in changed_by: as in backup (two names were 29% of an
    -- audit row's WAL).
    column_name pg_catalog.text NOT NULL,
    old_value   pg_catalog.text,
    new_value   pg_catalog.text,
    -- a phase number, override, manual, orphan, quarantine or rollback
    phase       pg_catalog.text,
    source      pg_catalog.text,
    rule        pg_catalog.text,
    evidence    pg_catalog.jsonb,
    changed_at  pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    changed_by  pg_catalog.text NOT NULL DEFAULT CURRENT_USER
);
-- BRIN for the same reason as backup's.
CREATE INDEX audit_log_run_id_idx ON @extschema@.audit_log USING brin (run_id);
-- The same replica identity as backup's: a batch deletes the audit rows of rows it did not
-- write after all (by ctid), and a published table needs an identity for that.
ALTER TABLE @extschema@.audit_log REPLICA IDENTITY FULL;
COMMENT ON TABLE @extschema@.audit_log IS
    'One row per changed value: who, when, from what to what, and on which evidence.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.runs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.run_parts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.run_skipped', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.backup', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_log_audit_id_seq', '');

CREATE VIEW @extschema@.progress AS
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
COMMENT ON VIEW @extschema@.progress IS
    'Each run''s state (planned, running, throttled, paused, done, failed, cancelled, rolled_back), its process and whether it is alive, rows done and total, percent, rows per second and time left.';
