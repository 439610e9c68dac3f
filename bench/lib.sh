# Shared by the benchmarks: a throwaway PostgreSQL cluster from the installed binaries (run as the
# postgres OS user), the release binary, the `items` table and the standard backlog.
# Source it after setting BENCH_PGPORT if the default port is taken.

bindir=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
port=${BENCH_PGPORT:-55499}
work=$(mktemp -d /tmp/pubsubpull-bench.XXXXXX)
chmod 755 "$work"
url="postgres://postgres@127.0.0.1:$port/bench"

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    as_pg "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
    [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
# PostgreSQL 15.19 and later decode only with the output plugins that output_plugin_libraries lists.
plugins_allowed=
if "$bindir/postgres" --describe-config | grep -q '^output_plugin_libraries'; then
    plugins_allowed="-c output_plugin_libraries=pgoutput,test_decoding,wal2json"
fi
psql() { command psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }

# Builds the release binary and starts the cluster with database `bench` and table `items`.
start_bench_cluster() {
    cargo build --release --quiet
    bin=$PWD/target/release/pubsubpull
    [ "$(id -u)" = 0 ] && chown postgres "$work"
    as_pg "$bindir/initdb" -D "$work/data" -A trust -U postgres --no-sync >/dev/null
    as_pg "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w -o "-p $port -k $work \
      -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=64 -c max_wal_senders=64 \
      -c shared_buffers=512MB -c max_wal_size=8GB -c checkpoint_timeout=1h -c synchronous_commit=off $plugins_allowed" start >/dev/null
    psql -d postgres -c "CREATE DATABASE bench"
    psql -d bench <<'SQL'
CREATE TABLE items (id bigint PRIMARY KEY, name text, amount numeric(12, 2), tags text[], payload jsonb, at timestamptz);
CREATE PROCEDURE small_transactions(n int) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..n LOOP
    INSERT INTO items VALUES (1000000 + i, 'small ' || i, i / 100.0, ARRAY['s'], jsonb_build_object('i', i), '2026-11-28 10:00:00+00');
    COMMIT;
  END LOOP;
END $$;
SQL
}

# The standard backlog: 200,000 inserts in one transaction, an update of half the rows, a delete
# of 10%, then 20,000 one-row transactions (340,000 changes).
backlog_changes=340000
write_backlog() {
    psql -d bench <<'SQL'
INSERT INTO items SELECT g, 'item number ' || g, g / 7.0, ARRAY['tag' || (g % 10), 'x'],
       jsonb_build_object('g', g, 'even', g % 2 = 0), '2026-11-28 10:00:00+00'::timestamptz + g * interval '1 second'
  FROM generate_series(1, 200000) g;
UPDATE items SET amount = amount + 1 WHERE id % 2 = 0;
DELETE FROM items WHERE id % 10 = 0;
CALL small_transactions(20000);
SQL
}

# One transaction of 1,000,000 inserts.
write_million() {
    psql -d bench -c "INSERT INTO items SELECT 2000000 + g, 'million ' || g, g, ARRAY['m'], '{\"m\": true}', '2026-11-28 10:00:00+00' FROM generate_series(1, 1000000) g"
}

current_lsn() { psql -d bench -Atc "SELECT pg_current_wal_insert_lsn()"; }

# Runs a command under /usr/bin/time, its stdout to $work/out; prints "seconds peak_kib".
measure() { /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out"; cat "$work/time"; }

# pg_recvlogical drains SLOT (plugin PLUGIN) to ENDPOS into a file; prints "seconds peak_kib".
drain_recv() { # plugin slot endpos
    local options
    case $1 in
        pgoutput) options="-o proto_version=2 -o publication_names=pubsubpull -o messages=true" ;;
        wal2json) options="-o format-version=2 -o include-xids=1 -o include-timestamp=1 -o include-lsn=1 -o include-type-oids=1" ;;
        test_decoding) options="-o include-xids=1 -o include-timestamp=1" ;;
    esac
    # shellcheck disable=SC2086
    measure "$bindir/pg_recvlogical" -h 127.0.0.1 -p "$port" -U postgres -d bench -S "$2" --start --endpos "$3" \
        $options -f "$work/recv.out"
}
