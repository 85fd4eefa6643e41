-- Raises an error caught by a procedure below again, once it has been recorded and
-- committed: the same SQLSTATE and message, and the detail and hint when there are.
CREATE FUNCTION tenant_backfill_internal._raise(
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

-- The one retry rule of the procedures below: a step that could not get its locks in
-- time (55P03) is tried again, at most 5 more times, after 0.1, 0.2, 0.4, 0.8 and 1.6
-- seconds. Given the failures so far, says so in a NOTICE and returns the seconds to
-- sleep before the next try, or NULL when the tries are used up.
CREATE FUNCTION tenant_backfill_internal._lock_retry(failures pg_catalog.int4, what pg_catalog.text)
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

-- The two procedures below COMMIT, so they cannot carry a SET search_path clause: they
-- run under the caller's search_path, and every operator in them is qualified (a type
-- or operator planted in a schema that comes first would otherwise resolve). The
-- functions they call pin their own search_path.

-- The production path. pgrx cannot COMMIT from Rust, so this thin procedure loops over
-- the steps of src/committed.rs and commits after each: the throttle check, then exactly
-- one batch. Errors are caught only to record them durably (status failed, advisory lock
-- released) and re-raised. A batch's first try waits only briefly for rows other
-- sessions hold; when that runs out, the batch is done again at once, skipping those
-- rows for a later pass. (A background run's worker, src/worker.rs, takes the same
-- steps; its waits are outside any transaction, where this procedure's pg_sleep holds
-- a snapshot for the length of each wait, at most 2 seconds of a throttle.)
CREATE PROCEDURE @extschema@.run(
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
COMMENT ON PROCEDURE @extschema@.run(pg_catalog.regclass, pg_catalog.int4, pg_catalog.int4, pg_catalog.text, pg_catalog.bool,
                                     pg_catalog.int4, pg_catalog.int4, pg_catalog.interval, pg_catalog.int8) IS
    'Backfill a target in committed batches in this session: resumable, one run per target at a time, throttled by replica lag, old transactions and autovacuum; batch_size NULL sizes each batch toward target_batch_ms.';

-- One batch of a background run (src/worker.rs), its error caught in this block's
-- subtransaction and returned, so the worker can record it and go on or stop.
CREATE FUNCTION tenant_backfill_internal._run_batch_caught(
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

-- NOT NULL without a long lock. Each step is its own transaction under a short
-- lock_timeout, retried with backoff; it never cancels or kills other sessions. On any
-- failure the check constraint it added is dropped again, so nothing is left behind.
CREATE PROCEDURE @extschema@.finalize(
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
COMMENT ON PROCEDURE @extschema@.finalize(pg_catalog.regclass, pg_catalog.int4) IS
    'Make the tenant column NOT NULL without a long lock: CHECK NOT VALID, VALIDATE, SET NOT NULL, drop the CHECK.';

-- One row per target row that needs a decision. The Rust side builds and checks the
-- statement; PL/pgSQL's RETURN QUERY EXECUTE streams its rows straight into the result.
CREATE FUNCTION @extschema@.plan(target pg_catalog.regclass, mode pg_catalog.text DEFAULT 'fill')
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
COMMENT ON FUNCTION @extschema@.plan(pg_catalog.regclass, pg_catalog.text) IS
    'What would happen to each row that needs a decision: fill, reassign, conflict, orphan or unresolved, with the evidence.';

-- A table created (or altered) to inherit from a guarded table gets the same guard:
-- triggers are not inherited by legacy inheritance children, and a NULL written to the
-- child would be seen through the parent. It fires for every CREATE TABLE and ALTER
-- TABLE of the database, so it decides in plain SQL and calls into the extension only
-- for a table that inherits from a guarded one and has no guard of its own; as the
-- extension's owner, since the role that runs the DDL need not have any rights on the
-- extension (it owns the table the guard goes on).
CREATE FUNCTION tenant_backfill_internal._on_ddl_command_end()
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
CREATE EVENT TRIGGER tenant_backfill_inheritors ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION tenant_backfill_internal._on_ddl_command_end();

-- A dropped target, source or override table leaves the configuration with a NOTICE;
-- runs, backups and the audit log stay (runs keep the target's name as text). As the
-- extension's owner, since the role that drops a table may not write the
-- configuration: what it may do is shown by the DROP it just did.
CREATE FUNCTION tenant_backfill_internal._on_sql_drop()
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
CREATE EVENT TRIGGER tenant_backfill_drops ON sql_drop
    EXECUTE FUNCTION tenant_backfill_internal._on_sql_drop();

-- Called only by the event trigger above, as the extension's owner: no one else needs it.
-- (The other internal functions stay executable: CALL run, CALL finalize and plan run
-- with the caller's rights and call them; each refuses outside its context.)
REVOKE EXECUTE ON FUNCTION tenant_backfill_internal._guard_inheritors(pg_catalog.regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tenant_backfill_internal._on_ddl_command_end() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tenant_backfill_internal._on_sql_drop() FROM PUBLIC;
