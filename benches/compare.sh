#!/usr/bin/env bash
# shellcheck disable=SC2317  # functions called from traps and the brace group look unreachable
# sluice vs PgBouncer (Debian's 1.18 and 1.25.2) vs a direct connection, side by side in one
# run. See benches/README.md.
#
# Installs what it needs (PostgreSQL via scripts/ensure-deps, pgbouncer), builds sluice and
# the load generator in release, starts a throwaway PostgreSQL, sluice and both PgBouncers with
# the same pool settings, runs every measurement with the targets alternating, prints one table
# and writes CSV to target/bench/. Everything it starts or creates is removed on exit.
#
# Environment (defaults in brackets):
#   BENCH_PGBOUNCER_NEW [../shared/anchors/pgbouncer-1.25.2/pgbouncer, relative to the repo]
#                             the second PgBouncer binary (the newest release), run beside
#                             Debian's; when it is missing or does not run, the script says so
#                             and compares with Debian's alone
#   BENCH_SECONDS [10]        length of each pgbench run and each many-tenants run
#   BENCH_ROUNDS [2]          how often the whole alternation (sluice, each PgBouncer, direct)
#                             repeats
#   BENCH_CLIENTS [100]       pgbench clients through the proxies (direct uses BENCH_POOL)
#   BENCH_POOL [20]           pool size of the bench tenant, and direct pgbench's clients
#   BENCH_IDLE_CLIENTS [5000] idle authenticated clients opened through each proxy
#   BENCH_LOGIN_SECONDS [min(5, BENCH_SECONDS)]  length of each login-rate run
#   BENCH_TENANTS [500]       tenants of the many-tenants run (10 per database, 2 clients each)
#   BENCH_SCALE [10]          pgbench -i scale
#   BENCH_OUT [target/bench]  where the CSV and the table go
#   BENCH_KEEP [0]            1 keeps the temp dir (logs, configs) for a look afterwards
#   BENCH_SLUICE_BASE []      a git revision: also build that revision's sluice (release, in a
#                             git worktree of its own with the target dir target/bench-base/,
#                             kept per commit and reused) and run it as the target sluice-base,
#                             with sluice's config, in the same alternation; the table gets a
#                             sluice-base column and a sluice/base ratio. Unset: no baseline
# The whole script is one brace group: bash reads it to the end before running any of it, so
# editing (or checking out another version of) this file mid-run cannot change what runs.
{
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

seconds=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-2}
clients=${BENCH_CLIENTS:-100}
pool=${BENCH_POOL:-20}
idle_clients=${BENCH_IDLE_CLIENTS:-5000}
login_seconds=${BENCH_LOGIN_SECONDS:-$((seconds < 5 ? seconds : 5))}
tenants=${BENCH_TENANTS:-500}
scale=${BENCH_SCALE:-10}
out=${BENCH_OUT:-target/bench}
keep=${BENCH_KEEP:-0}
# The many-tenants layout: 10 roles per database; the server-connection budget both proxies
# get for those tenants (sluice: the cluster's max_server_connections; PgBouncer:
# max_db_connections per database, split evenly).
per_db=10
budget=100
tenant_password=tenant-pw
bench_password=bench-pw
# Prepared statements per server connection, in sluice and in PgBouncer 1.21+ (the default of
# sluice and of PgBouncer 1.25), so both prepare in transaction mode.
prepared_statements=200

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- dependencies, build
scripts/ensure-deps
# Debian puts it in /usr/sbin, which a non-root PATH may lack.
find_pgbouncer() { command -v pgbouncer 2>/dev/null || { [[ -x /usr/sbin/pgbouncer ]] && echo /usr/sbin/pgbouncer; }; }
if ! find_pgbouncer >/dev/null; then
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    log "installing pgbouncer"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends pgbouncer
fi
pgbouncer_bin=$(find_pgbouncer) || die "pgbouncer not found after installing it"

# PgBouncer refuses to run as root: it runs as the postgres OS user, as PostgreSQL does.
as_postgres=()
run_user=$(id -un)
if [[ $(id -u) == 0 ]]; then
    id -u postgres >/dev/null 2>&1 || useradd --system postgres
    # setpriv execs (no fork), so $! is the server's own pid.
    as_postgres=(setpriv --reuid=postgres --regid=postgres --init-groups)
    run_user=postgres
fi

# The PgBouncers to compare with: Debian's, and the newest release from the anchors folder
# (built upstream; it links libevent, c-ares and libssl, which the package above brings).
# Each is a target named pgbouncer-MAJOR.MINOR.
pgbouncer_new=${BENCH_PGBOUNCER_NEW:-$repo/../shared/anchors/pgbouncer-1.25.2/pgbouncer}
pgb_bins=("$pgbouncer_bin")
if [[ ! -e $pgbouncer_new ]]; then
    log "warning: no PgBouncer at $pgbouncer_new (BENCH_PGBOUNCER_NEW); comparing with Debian's $pgbouncer_bin only"
elif [[ ! -x $pgbouncer_new ]]; then
    log "warning: $pgbouncer_new (BENCH_PGBOUNCER_NEW) is not executable; comparing with Debian's $pgbouncer_bin only"
elif ! err=$("${as_postgres[@]}" "$pgbouncer_new" --version 2>&1); then
    log "warning: $pgbouncer_new does not run as $run_user: $(head -1 <<<"$err"); comparing with Debian's $pgbouncer_bin only"
else
    pgb_bins+=("$pgbouncer_new")
fi
pgb_targets=()
declare -A pgb_bin_of=() pgb_version_of=() pgb_prepared_of=()
for bin in "${pgb_bins[@]}"; do
    version=$("$bin" --version | awk 'NR == 1 {print $2}')
    [[ -n $version ]] || die "no version from $bin --version"
    label=pgbouncer-${version%.*}
    [[ -z ${pgb_bin_of[$label]:-} ]] || label=$label-new
    pgb_targets+=("$label")
    pgb_bin_of[$label]=$bin
    pgb_version_of[$label]=$version
    # -M prepared through PgBouncer needs max_prepared_statements, new in 1.21.
    if [[ $(printf '%s\n1.21.0\n' "$version" | sort -V | head -1) == 1.21.0 ]]; then
        pgb_prepared_of[$label]=1
    else
        pgb_prepared_of[$label]=0
    fi
done
# The optional baseline: another revision's sluice, run beside the current one.
base_rev=${BENCH_SLUICE_BASE:-}
base_commit=
sluices=(sluice)
if [[ -n $base_rev ]]; then
    base_commit=$(git -C "$repo" rev-parse --verify -q "$base_rev^{commit}") ||
        die "BENCH_SLUICE_BASE=$base_rev is not a commit of this repository"
    sluices+=(sluice-base)
fi
proxies=("${sluices[@]}" "${pgb_targets[@]}")
targets=("${proxies[@]}" direct)

bindir=
if command -v initdb >/dev/null 2>&1; then
    bindir=$(dirname "$(readlink -f "$(command -v initdb)")")
else
    bindir=$(find /usr/lib/postgresql -path '*/bin/initdb' 2>/dev/null | sort -V | tail -1 | xargs -r dirname)
fi
[[ -x $bindir/initdb && -x $bindir/pg_ctl ]] || die "PostgreSQL's initdb/pg_ctl not found"

# ---------------------------------------------------------------- limits, temp dir, cleanup
hard=$(ulimit -Hn)
want=65536
if [[ $hard == unlimited ]] || ((hard > want)); then
    ulimit -n "$want" 2>/dev/null || true
else
    ulimit -n "$hard" 2>/dev/null || true
fi
nofile=$(ulimit -n)
if ((idle_clients + 500 > nofile)); then
    log "open-files limit is $nofile: idle clients capped at $((nofile - 500))"
    idle_clients=$((nofile - 500))
fi
if ((idle_clients > 9000)); then
    log "PgBouncer's max_client_conn is 10000: idle clients capped at 9000"
    idle_clients=9000
fi

tmp=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$tmp"
mkdir -p "$tmp/logs" "$tmp/out"
[[ ${#as_postgres[@]} == 0 ]] || chown postgres "$tmp"
sluice_pids=()
pgb_pids=()
pg_started=0
base_worktree=

stop_pid() {
    local pid=$1 sig=$2
    [[ -n $pid ]] || return 0
    kill "-$sig" "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    for pid in "${sluice_pids[@]}"; do stop_pid "$pid" TERM; done
    for pid in "${pgb_pids[@]}"; do stop_pid "$pid" TERM; done
    if [[ -n $base_worktree ]]; then
        git -C "$repo" worktree remove --force "$base_worktree" >/dev/null 2>&1 || rm -rf "$base_worktree"
        git -C "$repo" worktree prune
    fi
    if ((pg_started)); then
        "${as_postgres[@]}" "$bindir/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1
    fi
    if ((rc != 0)); then
        for f in "$tmp"/postgres.log "$tmp"/sluice*.log "$tmp"/pgbouncer-*.log "$tmp"/pgbouncer-*.out; do
            [[ -s $f ]] && { echo "--- tail of $f" >&2; tail -20 "$f" >&2; }
        done
    fi
    if [[ $keep == 1 ]]; then
        log "kept $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- build
log "building sluice and the load generator (release)"
cargo build --release --bin sluice
target_dir=${CARGO_TARGET_DIR:-target}
sluice_bin=$target_dir/release/sluice
loadgen=$(cargo bench --no-run --bench loadgen --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\/loadgen-[^"]*\)".*/\1/p' | tail -1)
[[ -x $sluice_bin && -x $loadgen ]] || die "build products not found ($sluice_bin, $loadgen)"

# The baseline: built once per commit in a worktree of its own (removed after the build) with a
# target dir of its own, so neither build invalidates the other's; the binary is kept under the
# commit's name and reused.
base_bin=
if [[ -n $base_commit ]]; then
    mkdir -p "$target_dir/bench-base"
    base_dir=$(cd "$target_dir/bench-base" && pwd)
    base_bin=$base_dir/sluice-$base_commit
    if [[ -x $base_bin ]]; then
        log "baseline sluice ${base_commit:0:7} ($base_rev): reusing $base_bin"
    else
        log "building the baseline sluice ${base_commit:0:7} ($base_rev, release) in $base_dir"
        base_worktree=$base_dir/src
        # Left over by a run that was killed outright.
        git -C "$repo" worktree remove --force "$base_worktree" >/dev/null 2>&1 || rm -rf "$base_worktree"
        git -C "$repo" worktree prune
        git -C "$repo" worktree add -q --detach "$base_worktree" "$base_commit"
        (cd "$base_worktree" && CARGO_TARGET_DIR=$base_dir/target cargo build --release --bin sluice)
        cp "$base_dir/target/release/sluice" "$base_bin.partial"
        mv "$base_bin.partial" "$base_bin"
        git -C "$repo" worktree remove --force "$base_worktree"
        base_worktree=
    fi
fi

# Ports below the kernel's ephemeral range, so no outgoing connection holds the one we pick.
read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || ephemeral_low=32768
port_low=$((ephemeral_low > 12000 ? ephemeral_low - 10000 : 1024))
declare -A used_ports=()
free_port() {
    local p
    while :; do
        p=$((port_low + RANDOM % 10000))
        [[ -z ${used_ports[$p]:-} ]] || continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            used_ports[$p]=1
            echo "$p"
            return
        fi
    done
}

wait_ready() { # name port pid
    local name=$1 port=$2 pid=$3
    for _ in $(seq 300); do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            die "$name exited during startup"
        fi
        "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1 && return 0
        sleep 0.1
    done
    die "$name not ready on port $port"
}

clk_tck=$(getconf CLK_TCK)
# utime and stime of a process (all threads), in clock ticks: "user system".
cpu_of() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo "${12} ${13}"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# calc NUMERATOR DENOMINATOR [DECIMALS]: the quotient (awk arithmetic); empty when either is
# empty or the denominator is zero.
calc() {
    [[ -n $1 && -n ${2:-} ]] || return 0
    awk -v d="$2" -v p="${3:-2}" "BEGIN { if (d + 0 == 0) exit; printf \"%.\" p \"f\", ($1) / d }"
}
kv() { sed -n "s/.*\\<$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }

# ---------------------------------------------------------------- PostgreSQL
pg_port=$(free_port)
log "starting PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on port $pg_port"
printf '%s\n' "$(head -c 18 /dev/urandom | base64 | tr -d '/+=')" >"$tmp/pwfile"
[[ ${#as_postgres[@]} == 0 ]] || chown postgres "$tmp/pwfile"
"${as_postgres[@]}" "$bindir/initdb" -D "$tmp/data" -U postgres --pwfile="$tmp/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync \
    >"$tmp/initdb.log" 2>&1 || {
    cat "$tmp/initdb.log" >&2
    die "initdb failed"
}
rm -f "$tmp/pwfile"
# max_connections: each proxy keeps up to its bench pool and the many-tenants budget of server
# connections open (idle until server_idle_timeout) while the next target runs, and the
# direct login run adds 32 backends at a time.
cat >>"$tmp/data/postgresql.conf" <<EOF
# sluice benchmark (benches/compare.sh)
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$tmp'
max_connections = $(((pool + budget) * ${#proxies[@]} + 100))
shared_buffers = '256MB'
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
"${as_postgres[@]}" "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/postgres.log" -w -t 60 start >/dev/null
pg_started=1

psql_super() { psql -X -q -v ON_ERROR_STOP=1 -h "$tmp" -p "$pg_port" -U postgres "$@"; }

log "creating the bench tenant and pgbench tables (scale $scale)"
psql_super -d postgres <<EOF
CREATE ROLE bench LOGIN PASSWORD '$bench_password';
CREATE DATABASE bench OWNER bench;
EOF
PGPASSWORD=$bench_password pgbench -i -q -s "$scale" -h 127.0.0.1 -p "$pg_port" -U bench bench \
    >"$tmp/pgbench-init.log" 2>&1 || {
    cat "$tmp/pgbench-init.log" >&2
    die "pgbench -i failed"
}

dbs=$(((tenants + per_db - 1) / per_db))
log "creating $tenants tenants in $dbs databases"
{
    for ((i = 0; i < tenants; i++)); do
        printf "CREATE ROLE t%04d LOGIN PASSWORD '%s';\n" "$i" "$tenant_password"
    done
} | psql_super -d postgres
for ((d = 0; d < dbs; d++)); do
    printf 'CREATE DATABASE tdb%03d;\n' "$d"
done | psql_super -d postgres

# The SCRAM verifiers, for PgBouncer's auth_file and sluice's tenants, so neither proxy runs
# PBKDF2 per client login. PgBouncer logs in to the server with the keys the client's SCRAM
# exchange proved; sluice needs the plaintext for that (server_password).
psql_super -d postgres -At -F ' ' \
    -c "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = 'bench' OR rolname ~ '^t[0-9]{4}\$' ORDER BY rolname" \
    >"$tmp/verifiers"
declare -A verifier=()
while read -r name secret; do verifier[$name]=$secret; done <"$tmp/verifiers"
[[ ${verifier[bench]:-} == SCRAM-SHA-256* ]] || die "no SCRAM verifier for bench"

# ---------------------------------------------------------------- sluice
# One config for sluice and the baseline; only the ports differ.
declare -A port_of=([direct]=$pg_port)
declare -A pid_of=([direct]="")
{
    cat <<EOF
[defaults]
pool_mode = "transaction"
pool_size = $pool
max_client_connections = $((idle_clients + 1000))
max_prepared_statements = $prepared_statements

# The bench tenant's cluster.
[clusters.main]
host = "127.0.0.1"
port = $pg_port
max_server_connections = $budget
tls = "disable"

# The same server for the many-tenants run, with its own budget, so the bench tenant's idle
# connections do not count against it.
[clusters.many]
host = "127.0.0.1"
port = $pg_port
max_server_connections = $budget
tls = "disable"

[[tenants]]
database = "bench"
user = "bench"
cluster = "main"
EOF
    printf 'password = "%s"\nserver_password = "%s"\n' "${verifier[bench]}" "$bench_password"
    for ((i = 0; i < tenants; i++)); do
        user=$(printf 't%04d' "$i")
        printf '\n[[tenants]]\ndatabase = "tdb%03d"\nuser = "%s"\ncluster = "many"\npassword = "%s"\nserver_password = "%s"\n' \
            $((i / per_db)) "$user" "${verifier[$user]}" "$tenant_password"
    done
} >"$tmp/sluice-common.toml"
start_sluice() { # target binary revision
    local target=$1 bin=$2 rev=$3 port metrics pid
    port=$(free_port)
    metrics=$(free_port)
    {
        printf 'listen = "127.0.0.1:%s"\nmetrics_listen = "127.0.0.1:%s"\n\n' "$port" "$metrics"
        cat "$tmp/sluice-common.toml"
    } >"$tmp/$target.toml"
    "$bin" --check-config "$tmp/$target.toml" >/dev/null
    SLUICE_LOG=warn "$bin" --config "$tmp/$target.toml" >"$tmp/$target.log" 2>&1 &
    pid=$!
    sluice_pids+=("$pid")
    wait_ready "$target" "$port" "$pid"
    port_of[$target]=$port
    pid_of[$target]=$pid
    log "sluice $rev ($target) on port $port (pid $pid)"
}
sluice_rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')
start_sluice sluice "$sluice_bin" "$sluice_rev"
[[ -z $base_bin ]] || start_sluice sluice-base "$base_bin" "${base_commit:0:7}"

# ---------------------------------------------------------------- PgBouncer
# One auth_file for all; each PgBouncer gets its own ini, log and port, and the same settings
# (max_prepared_statements only where it exists, 1.21+).
{
    for name in "${!verifier[@]}"; do
        printf '"%s" "%s"\n' "$name" "${verifier[$name]}"
    done
} >"$tmp/userlist.txt"
[[ ${#as_postgres[@]} == 0 ]] || chown postgres "$tmp/userlist.txt"
per_db_budget=$(((budget + dbs - 1) / dbs))
start_pgbouncer() { # target
    local target=$1 port pid
    local ini=$tmp/$target.ini
    port=$(free_port)
    {
        echo "[databases]"
        echo "bench = host=127.0.0.1 port=$pg_port dbname=bench"
        for ((d = 0; d < dbs; d++)); do
            printf 'tdb%03d = host=127.0.0.1 port=%s dbname=tdb%03d max_db_connections=%s\n' \
                "$d" "$pg_port" "$d" "$per_db_budget"
        done
        cat <<EOF

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $tmp/userlist.txt
pool_mode = transaction
default_pool_size = $pool
max_client_conn = 10000
server_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
logfile = $tmp/$target.log
EOF
        ((pgb_prepared_of[$target])) && echo "max_prepared_statements = $prepared_statements"
        true
    } >"$ini"
    [[ ${#as_postgres[@]} == 0 ]] || chown postgres "$ini"
    "${as_postgres[@]}" "${pgb_bin_of[$target]}" "$ini" >"$tmp/$target.out" 2>&1 &
    pid=$!
    pgb_pids+=("$pid")
    wait_ready "$target" "$port" "$pid"
    port_of[$target]=$port
    pid_of[$target]=$pid
    log "PgBouncer ${pgb_version_of[$target]} ($target, ${pgb_bin_of[$target]}) on port $port (pid $pid)$( ((pgb_prepared_of[$target])) || echo ', no -M prepared before 1.21')"
}
for target in "${pgb_targets[@]}"; do
    start_pgbouncer "$target"
done

# ---------------------------------------------------------------- measurements
declare -A R=() # "metric|target" → value
add() { R["$1|$2"]=$(awk "BEGIN { printf \"%.12g\", ${R["$1|$2"]:-0} + ($3) }"); }

mkdir -p "$out"
runs_csv=$out/runs.csv
echo "round,target,mode,clients,seconds,transactions,failed,tps,latency_avg_ms,latency_p99_ms,cpu_user_us_per_tx,cpu_system_us_per_tx" >"$runs_csv"

modes=(simple extended prepared)
pgbench_run() { # round target mode
    local round=$1 target=$2 mode=$3
    local port=${port_of[$target]} pid=${pid_of[$target]}
    local c=$clients
    [[ $target == direct ]] && c=$pool
    local name=${target}_${mode}_$round
    local before after
    [[ -z $pid ]] || before=$(cpu_of "$pid")
    PGPASSWORD=$bench_password pgbench -h 127.0.0.1 -p "$port" -U bench -n -S -c "$c" -j 2 \
        -T "$seconds" -M "$mode" -l --log-prefix="$tmp/logs/$name" bench \
        >"$tmp/out/$name.txt" 2>&1 || {
        tail -5 "$tmp/out/$name.txt" >&2
        die "pgbench $name failed"
    }
    [[ -z $pid ]] || after=$(cpu_of "$pid")
    local o tx failed tps lat p99 n idx user_us="" sys_us=""
    o=$(<"$tmp/out/$name.txt")
    tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$o")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$o")
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' <<<"$o")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$o")
    # Per-transaction log: field 3 is the latency in µs.
    awk '$3 ~ /^[0-9]+$/ {print $3}' "$tmp/logs/$name".* | sort -n >"$tmp/lat"
    n=$(wc -l <"$tmp/lat")
    ((n > 0)) || die "pgbench $name logged no transactions"
    idx=$(((n * 99 + 99) / 100))
    p99=$(calc "$(sed -n "${idx}p" "$tmp/lat")" 1000 3)
    rm -f "$tmp/logs/$name".* "$tmp/lat"
    if [[ -n $pid ]]; then
        read -r u0 s0 <<<"$before"
        read -r u1 s1 <<<"$after"
        user_us=$(calc "($u1 - $u0) * 1000000 / $clk_tck" "$tx" 3)
        sys_us=$(calc "($s1 - $s0) * 1000000 / $clk_tck" "$tx" 3)
        add "cpu_ticks_$mode" "$target" "$u1 - $u0 + $s1 - $s0"
        add "cpu_tx_$mode" "$target" "$tx"
    fi
    add "tps_$mode" "$target" "$tps / $rounds"
    add "lat_$mode" "$target" "$lat / $rounds"
    add "p99_$mode" "$target" "$p99 / $rounds"
    echo "$round,$target,$mode,$c,$seconds,$tx,${failed:-0},$tps,$lat,$p99,$user_us,$sys_us" >>"$runs_csv"
    log "$(printf 'round %s %-14s %-8s tps %9s  avg %7s ms  p99 %7s ms  cpu µs/tx %s' \
        "$round" "$target" "$mode" "$tps" "$lat" "$p99" "${user_us:+$user_us user + $sys_us sys}")"
}

for ((round = 1; round <= rounds; round++)); do
    for mode in "${modes[@]}"; do
        for target in "${targets[@]}"; do
            if [[ $mode == prepared && ${pgb_prepared_of[$target]:-1} == 0 ]]; then
                continue
            fi
            pgbench_run "$round" "$target" "$mode"
        done
    done
done
for target in "${proxies[@]}"; do
    R["rss_mib|$target"]=$(calc "$(rss_kib "${pid_of[$target]}")" 1024 1)
done

# Before the idle test: the thousands of connections it closes leave TIME_WAIT sockets that
# slow every later loopback connect (measured: ~700 instead of ~1,100 logins/s).
log "login rate: ${login_seconds}s of connect, SELECT 1, disconnect (32 in parallel)"
for ((round = 1; round <= rounds; round++)); do
    for target in "${targets[@]}"; do
        line=$("$loadgen" --bench login port="${port_of[$target]}" user=bench \
            password="$bench_password" dbname=bench seconds="$login_seconds" \
            pid="${pid_of[$target]:-0}")
        log "round $round $target login: $line"
        add login_n "$target" "$(kv logins "$line")"
        add login_secs "$target" "$(kv secs "$line")"
        add login_failed "$target" "$(kv failed "$line")"
        add login_ticks "$target" "$(kv cpu_ticks "$line")"
    done
done

log "idle clients: $idle_clients through each proxy"
for target in "${proxies[@]}"; do
    line=$("$loadgen" --bench idle port="${port_of[$target]}" user=bench password="$bench_password" \
        dbname=bench clients="$idle_clients" pid="${pid_of[$target]}")
    log "$target idle: $line"
    opened=$(kv opened "$line")
    R["idle_kib|$target"]=$(calc "$(kv rss_open_kib "$line") - $(kv rss_before_kib "$line")" "$opened" 2)
    R["idle_open|$target"]=$opened
    R["idle_after_close_mib|$target"]=$(calc "$(kv rss_closed_kib "$line")" 1024 1)
done

log "many tenants: $tenants tenants x 2 clients, SELECT 1 in a loop, ${seconds}s"
for ((round = 1; round <= rounds; round++)); do
    for target in "${proxies[@]}"; do
        line=$("$loadgen" --bench tenants port="${port_of[$target]}" password="$tenant_password" \
            tenants="$tenants" clients=2 per_db="$per_db" seconds="$seconds" \
            pid="${pid_of[$target]}")
        log "round $round $target tenants: $line"
        add mt_tps "$target" "$(kv tx "$line") / $(kv secs "$line") / $rounds"
        add mt_p99 "$target" "$(kv p99_us "$line") / 1000 / $rounds"
        add mt_connected "$target" "$(kv connected "$line") / $rounds"
        add mt_served "$target" "$(kv tenants_served "$line") / $rounds"
        add mt_errors "$target" "($(kv errors "$line") + $(kv connect_failed "$line")) / $rounds"
        add mt_stalled "$target" "$(kv stalled "$line") / $rounds"
        add mt_ticks "$target" "$(kv cpu_ticks "$line")"
        add mt_tx "$target" "$(kv tx "$line")"
    done
done

# ---------------------------------------------------------------- derived figures
for target in "${targets[@]}"; do
    for mode in "${modes[@]}"; do
        if [[ -n ${R["cpu_tx_$mode|$target"]:-} ]]; then
            R["cpu_$mode|$target"]=$(calc "${R["cpu_ticks_$mode|$target"]} * 1000000 / $clk_tck" "${R["cpu_tx_$mode|$target"]}" 2)
        fi
    done
    R["login_rate|$target"]=$(calc "${R["login_n|$target"]}" "${R["login_secs|$target"]}" 0)
    if [[ $target != direct ]]; then
        R["login_cpu|$target"]=$(calc "${R["login_ticks|$target"]} * 1000000 / $clk_tck" "${R["login_n|$target"]}" 1)
        R["mt_cpu|$target"]=$(calc "${R["mt_ticks|$target"]} * 1000000 / $clk_tck" "${R["mt_tx|$target"]}" 2)
    fi
done

# ---------------------------------------------------------------- table and CSV
rows=(
    "tps_simple|tps, -M simple"
    "tps_extended|tps, -M extended"
    "tps_prepared|tps, -M prepared"
    "lat_simple|latency avg ms, simple"
    "lat_extended|latency avg ms, extended"
    "lat_prepared|latency avg ms, prepared"
    "p99_simple|latency p99 ms, simple"
    "p99_extended|latency p99 ms, extended"
    "p99_prepared|latency p99 ms, prepared"
    "cpu_simple|proxy CPU µs/tx, simple"
    "cpu_extended|proxy CPU µs/tx, extended"
    "cpu_prepared|proxy CPU µs/tx, prepared"
    "rss_mib|RSS MiB after pgbench"
    "idle_kib|KiB per idle client"
    "idle_after_close_mib|RSS MiB after idle closed"
    "login_rate|logins/s (SCRAM)"
    "login_cpu|proxy CPU µs/login"
    "mt_tps|many tenants: tps"
    "mt_p99|many tenants: p99 ms"
    "mt_connected|many tenants: clients in"
    "mt_served|many tenants: tenants served"
    "mt_errors|many tenants: errors"
    "mt_stalled|many tenants: stalled >1s"
    "mt_cpu|many tenants: CPU µs/tx"
)
summary_csv=$out/summary.csv
table=$out/table.txt
ratio() { calc "$1" "$2" 2; }
fmt() {
    if [[ -n $1 ]]; then
        awk -v v="$1" 'BEGIN { f = (v >= 100 || v == int(v)) ? "%.0f" : "%.2f"; printf f, v }'
    else
        echo "-"
    fi
}
# Columns: each target's figure, then sluice over every other target (the baseline, each
# PgBouncer, direct).
headers=(metric "${targets[@]}")
for t in "${targets[@]:1}"; do
    t=${t/#pgbouncer-/pgb}
    headers+=("sluice/${t#sluice-}")
done
widths=(32)
for h in "${headers[@]:1}"; do widths+=($((${#h} > 10 ? ${#h} : 10))); done
# row_cells KEY: the cells of one metric (figures, then ratios); "" where a figure does not apply.
row_cells() {
    local key=$1 t v s i
    cells=()
    for t in "${targets[@]}"; do
        v=${R["$key|$t"]:-}
        [[ $key == *prepared && ${pgb_prepared_of[$t]:-1} == 0 ]] && v=
        [[ $t == direct ]] && [[ $key == cpu_* || $key == rss_* || $key == idle_* || $key == login_cpu || $key == mt_* ]] && v=
        cells+=("$v")
    done
    s=${cells[0]}
    for ((i = 1; i < ${#targets[@]}; i++)); do
        cells+=("$(ratio "$s" "${cells[$i]}")")
    done
}
print_row() { # cells…
    local i line
    line=$(printf '%-*s' "${widths[0]}" "$1")
    shift
    for ((i = 1; $# > 0; i++)); do
        line+=$(printf ' %*s' "${widths[$i]}" "$1")
        shift
    done
    echo "$line"
}
pgb_versions=
for t in "${pgb_targets[@]}"; do pgb_versions+=${pgb_versions:+, }${pgb_version_of[$t]}; done
{
    echo "sluice benchmark  $(date -u '+%Y-%m-%d %H:%M UTC')  $(nproc) cores  sluice $sluice_rev${base_commit:+  sluice-base ${base_commit:0:7} ($base_rev)}  PgBouncer $pgb_versions  PostgreSQL $("$bindir/postgres" --version | awk '{print $3}')"
    echo "pgbench -S -c $clients (direct -c $pool) -j 2 -T $seconds, scale $scale, pool $pool, $rounds rounds alternating; idle clients $idle_clients; tenants $tenants x 2 clients, budget $budget"
    print_row "${headers[@]}"
    for row in "${rows[@]}"; do
        row_cells "${row%%|*}"
        formatted=()
        for c in "${cells[@]}"; do formatted+=("$(fmt "$c")"); done
        print_row "${row#*|}" "${formatted[@]}"
    done
} | tee "$table"
{
    (
        IFS=,
        echo "${headers[*]}"
    )
    for row in "${rows[@]}"; do
        row_cells "${row%%|*}"
        (
            IFS=,
            echo "${row%%|*},${cells[*]}"
        )
    done
} >"$summary_csv"
log "wrote $runs_csv, $summary_csv, $table"
exit
}
