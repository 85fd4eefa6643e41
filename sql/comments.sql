-- What \df+, \dt+ and \d+ say about the extension: a COMMENT on every public function,
-- procedure, table, view and column of the schema (the internal _ functions have none).
-- It is the finalize step of the install script (src/lib.rs), so every object it
-- describes exists by then. The tables, the progress view, plan, CALL run and CALL
-- finalize keep the COMMENT written next to their definition (sql/schema.sql,
-- sql/write_path.sql, sql/guard.sql, sql/procedures.sql), and this file describes the
-- rest: one comment per object. pg_regress 14_described fails for anything public left
-- without a description.

-- ---------------------------------------------------------------- 1. describe the job

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

-- ---------------------------------------------------------------- 2. look before you leap

COMMENT ON FUNCTION @extschema@.preflight(pg_catalog.regclass, pg_catalog.text) IS
    'Read-only counts to check before a run, one row per check: total_rows, null_tenant, by_override, by_phase_<n>, conflicts, orphans, unresolved, source_null_tenant, source_bad_tenant, missing_index (and mismatched in mode reassign); detail names the sources, columns or values.';
COMMENT ON FUNCTION @extschema@.conflicts(pg_catalog.regclass, pg_catalog.text) IS
    'Read-only: the rows a unanimous phase refuses because its evidence names more than one tenant, with the evidence (tenant -> number of related rows, per source).';
COMMENT ON FUNCTION @extschema@.review_queue(pg_catalog.regclass, pg_catalog.text) IS
    'Read-only: every row left for a human (reason conflict, unresolved or orphan) with its evidence and the whole row as jsonb, for \copy to CSV; the last column, tenant, is left empty for the reviewer, and apply_decisions reads the file back. Needs SELECT on the whole target.';

-- ---------------------------------------------------------------- 3. run

COMMENT ON FUNCTION @extschema@.run_now(pg_catalog.regclass, pg_catalog.text, pg_catalog.bool) IS
    'Backfills the target in the caller''s transaction (one statement that decides and updates, then a backup and an audit row per changed row), for migrations and small tables; returns the run id, rows changed, rows changed per phase and rows left for review. A dry run writes no user row and ends planned.';
COMMENT ON FUNCTION @extschema@.apply_decisions(pg_catalog.regclass, pg_catalog.regclass) IS
    'Applies a reviewed table (columns row_key and tenant, such as review_queue''s CSV loaded back) as a run of its own, phase manual, with backup and audit; returns the rows changed. Rows with an empty tenant are left alone; an unknown key, a value that does not cast or a row decided twice differently is an error and nothing is applied.';
COMMENT ON FUNCTION @extschema@.soft_delete_orphans(pg_catalog.regclass, pg_catalog.bool) IS
    'Sets the target''s soft-delete column (now() for a timestamp or date, true for a boolean) on orphans not yet soft-deleted (NULL-tenant rows with no related row in any source), as a run with backup and audit that rollback undoes; returns the rows changed (a dry run: the rows it would change, writing none).';

-- ---------------------------------------------------------------- 4. check and undo

COMMENT ON FUNCTION @extschema@.validate(pg_catalog.regclass, pg_catalog.int8, pg_catalog.text) IS
    'Proves a run (default: the target''s latest that wrote something), one row per check: no_null_tenant (soft-deleted rows excepted), row_count_unchanged, sources_agree, audit_complete, backup_complete and, where the target has row-level security, isolation, checked with tenant_setting set to each tenant. ok is NULL where a check does not apply.';
COMMENT ON FUNCTION @extschema@.rollback(pg_catalog.int8, pg_catalog.bool) IS
    'Restores the rows a run changed from its backup in one transaction, as a run of its own (phase rollback), and marks the original rolled_back; returns rows restored and skipped. A row changed since the run is skipped unless force.';

-- ---------------------------------------------------------------- 5. keep it fixed

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

-- ---------------------------------------------------------------- 6. operate a long run

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

-- ---------------------------------------------------------------- the configuration

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

-- ---------------------------------------------------------------- what happened

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

-- ---------------------------------------------------------------- the guard

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

-- ---------------------------------------------------------------- progress

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

-- ---------------------------------------------------------------- 7. the whole database, and Citus

COMMENT ON FUNCTION @extschema@.audit(pg_catalog.name, pg_catalog.regclass) IS
    'Read-only, with the caller''s rights: one row per ordinary or partitioned table the caller may read (partitions counted in their parent; system, tenant_backfill''s, other extensions'' and temporary tables left out), in table_name order. role: root (the given root, else the table most single-column foreign keys on the tenant column point at), tenant (has the tenant column, named exactly), derivable (foreign keys lead from it to the root or a tenant table), reference (the root, a tenant or a reference table points at it) or local. rows is exact below 100000 estimated rows (pg_class.reltuples, summed over partitions) or without an estimate, else the estimate; null_tenant and cross_tenant (tenant tables only) are exact, cross_tenant counting a row once per foreign key without the tenant column through which it points at a row of another tenant. citus: distribute, reference, local or blocked, with each blocker and its fix in blockers.';
COMMENT ON FUNCTION @extschema@.distribution_plan(pg_catalog.name, pg_catalog.regclass) IS
    'Read-only: the statements, in order, that move the audited schema onto a Citus coordinator: drop the foreign keys between the tables to convert, create_reference_table for each reference table, create_distributed_table for the root by its key and for each tenant table by the tenant column, colocated with the root, and the foreign keys again as they were; local tables are left alone. While audit reports a table blocked it raises 55000, naming each with its first blocker; 42501 while a table it would convert is one the caller cannot read.';
