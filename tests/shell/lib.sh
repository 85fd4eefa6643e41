# Shared by the shell-level tests in tests/shell: a throwaway primary (and replica)
# owned by user postgres, psql helpers, and assertions that count and report.
# Sourced by a test run as: test.sh VERSION
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

PGV=${1:?usage: $0 VERSION}
BIN=$(bindir_for "$PGV")
TEST_NAME=$(basename "$0" .sh)
PASSED=0
FAILED=0
CLUSTERS=()

cleanup() {
    local dir
    for dir in "${CLUSTERS[@]}"; do
        sudo -u postgres "$BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    done
    # (Ends with a success: the status of the trap must not become the script's.)
    [ -z "${SCRATCH:-}" ] || rm -rf "$SCRATCH"
}
trap cleanup EXIT

# primary_start NAME [SERVER OPTIONS]: a fresh cluster on its own port; database "test".
primary_start() {
    SCRATCH=$(scratch_dir "shell_$1")
    PRIMARY=$SCRATCH/primary
    PORT=$((57000 + PGV))
    cluster_start "$PGV" "$PRIMARY" "$PORT" "${2:-}"
    CLUSTERS+=("$PRIMARY")
    sudo -u postgres "$BIN/createdb" -h "$PRIMARY" -p "$PORT" -U postgres test
}

# psql on the primary's test database, as postgres; arguments as for psql.
sql() { sudo -u postgres "$BIN/psql" -X -v ON_ERROR_STOP=1 -h "$PRIMARY" -p "$PORT" -U postgres -d test "$@"; }
# Statements whose output does not matter (errors still stop the test's assertion).
quiet() { sql -q -c "$1" >/dev/null; }
# One value: the unaligned, untitled output of a query string.
val() { sql -tAq -c "$1"; }

# replica_start: a streaming replica of the primary (pg_basebackup -R), streaming.
replica_start() {
    REPLICA=$SCRATCH/replica
    REPLICA_PORT=$((PORT + 100))
    mkdir -p "$REPLICA"
    chown postgres:postgres "$REPLICA"
    sudo -u postgres "$BIN/pg_basebackup" -h "$PRIMARY" -p "$PORT" -U postgres -D "$REPLICA/data" -R -X stream -c fast >/dev/null
    # The standby's name in pg_stat_replication.
    echo "primary_conninfo = 'host=$PRIMARY port=$PORT user=postgres application_name=standby1'" \
        | sudo -u postgres tee -a "$REPLICA/data/postgresql.auto.conf" >/dev/null
    sudo -u postgres "$BIN/pg_ctl" -D "$REPLICA/data" -l "$REPLICA/server.log" -w \
        -o "-p $REPLICA_PORT -k $REPLICA -c listen_addresses=''" start >/dev/null
    CLUSTERS+=("$REPLICA")
    local i
    for i in $(seq 1 100); do
        [ "$(val "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND replay_lsn IS NOT NULL")" = 1 ] && return 0
        sleep 0.1
    done
    echo "the replica did not start streaming" >&2
    return 1
}

replica_sql() { sudo -u postgres "$BIN/psql" -X -v ON_ERROR_STOP=1 -h "$REPLICA" -p "$REPLICA_PORT" -U postgres -d test "$@"; }

replica_quiet() { replica_sql -q -c "$1" >/dev/null; }

replica_stop() {
    sudo -u postgres "$BIN/pg_ctl" -D "$REPLICA/data" -m fast -w stop >/dev/null 2>&1 || true
}

# wait_until QUERY [SECONDS]: polls until QUERY returns t (at most SECONDS, default 30),
# instead of sleeping a fixed time that a loaded machine may not keep.
wait_until() {
    local deadline=$((SECONDS + ${2:-30}))
    until [ "$(val "$1")" = t ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "timed out waiting for: $1" >&2
            return 1
        fi
        sleep 0.05
    done
}

section() { printf "\n--- %s (%ss)\n" "$*" "$SECONDS"; }

pass() { PASSED=$((PASSED + 1)); printf 'ok     %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAILED %s\n       expected: %s\n       actual:   %s\n' "$1" "$2" "$3"; }

# assert_eq WHAT EXPECTED ACTUAL
assert_eq() { if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "$2" "$3"; fi; }
# assert_true WHAT VALUE: VALUE is t (a boolean query result or a shell test's echo).
assert_true() { assert_eq "$1" t "$2"; }
# assert_contains WHAT NEEDLE HAYSTACK
assert_contains() { case "$3" in *"$2"*) pass "$1" ;; *) fail "$1" "... $2 ..." "$3" ;; esac; }
# assert_fails WHAT MESSAGE SQL: the SQL fails with an error containing MESSAGE.
assert_fails() {
    local out
    if out=$(sql -tAq -c "$3" 2>&1); then
        fail "$1" "an error: $2" "success: $out"
    else
        assert_contains "$1" "$2" "$out"
    fi
}

# finish: the summary line scripts/test counts, and the exit status.
finish() {
    echo "$TEST_NAME on Postgres $PGV: $PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ]
}
