# Shared by scripts/test and scripts/demo: installs what is missing on a fresh Debian machine.

bindir=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
pkglibdir=$(dirname "$bindir")/lib

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "$0: missing $*; install it (as root: apt-get install -y $*)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The PostgreSQL 15 server binaries.
ensure_postgres() {
    [ -x "$bindir/initdb" ] || apt_install postgresql-15
}

# The audit-context trigger in C (extension/): built against the server's headers and installed
# into its directories, where `pubsubpull migrate` finds it. The headers are those of the installed
# server's version, so that installing them does not upgrade the server.
install_context_extension() {
    command -v make >/dev/null || apt_install make
    if ! { [ -x "$bindir/pg_config" ] && [ -f "$("$bindir/pg_config" --includedir-server)/postgres.h" ]; }; then
        local version
        version=$(dpkg-query -W -f='${Version}' postgresql-15 2>/dev/null || true)
        apt_install "postgresql-server-dev-15${version:+=$version}"
    fi
    make -s -C extension install PG_CONFIG="$bindir/pg_config" >/dev/null
}
