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
