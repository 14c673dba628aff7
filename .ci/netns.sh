#!/usr/bin/env bash
# The example cluster on three "hosts" made of Linux network namespaces
# (tools/netns/netns-cluster.sh), with faults injected:
#
#   1. cut    the link of worker w2's host: its heartbeat asks must fail with a
#             connection error and the master must declare it lost;
#   2. heal   it: w2 registers again and runs tasks a driver submits;
#   3. crash  worker w3's host (cut + kill -9 of everything in it): the master must
#             declare it lost;
#   4. slow   a link (50 ms each way, 5 % loss): a stress run between two hosts
#             loses nothing and keeps per-sender order.
#
# Hosts: h1 10.77.0.1 (master, drivers, stress server), h2 10.77.0.2 (worker w2,
# stress clients), h3 10.77.0.3 (worker w3). The master runs with a worker timeout far
# beyond the detection bounds, so only the connection layer can explain a loss that is
# detected in time.
#
# Run as root from the repository (it builds the release examples it needs itself):
#
#   sudo .ci/netns.sh
#
# It prints one machine-readable line per figure, `NETNS name=value ... ok|FAIL`, and
# ends with `NETNS PASS` or `NETNS FAILED step=STEP: why` (exit 1) after the tail of
# every node's log. Every step is bounded in time; the cluster is torn down on exit,
# failure, Ctrl-C or SIGTERM. Settings (environment):
#
#   NETNS_TIGHT_CONF       --conf flags given to every node (default: the tight liveness
#                          settings below, which detect a vanished peer within ~2 s; set
#                          it to "" for the library's defaults, and then give the
#                          detection bounds below 15 s)
#   NETNS_DETECT_BOUND_S   cut: bound on the master's "worker lost" and on the worker's
#                          first connection error (default 5)
#   NETNS_CRASH_BOUND_S    crash: bound on the master's "worker lost" (default 5)
#   NETNS_HEAL_BOUND_S     heal: bound on the registration again (default 20)
#   NETNS_STEP_BOUND_S     every other wait and command (default 60)
#   NETNS_WORKER_TIMEOUT   the master's --worker-timeout (default 60s)
#   NETNS_WORKER_ARGS      more flags of the workers (default --task-delay 20ms)
#   NETNS_STRESS_ARGS      the stress clients' flags (default below)
#   NETNS_STRESS_CONF      --conf flags of the stress server and clients (default none)
#   NETNS_SLOW             "DELAY_MS LOSS_PCT" of the slow link (default "50 5")
#   NETNS_PREFIX           the cluster's name prefix (default: unique per run)
#   NETNS_LOG_DIR          where node logs go (default: a new directory under /tmp)
#   NETNS_KEEP_GOING=1     after a figure out of its bound, go on with the next steps
#                          (to measure them all); the script still fails at the end
#   NETNS_VERBOSE=1        show every command netns-cluster.sh runs
#   NCL_SLOW_BACKEND       delay/loss backend (default auto: netem if the kernel has it,
#                          else a userspace relay, which needs python3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NCL=$ROOT/tools/netns/netns-cluster.sh

TIGHT_DEFAULT="--conf rpc.io.keepAliveIdle=1s --conf rpc.io.keepAliveInterval=1s \
--conf rpc.io.keepAliveCount=2 --conf rpc.io.tcpUserTimeout=1500ms \
--conf rpc.io.connectionTimeout=2s"
NETNS_TIGHT_CONF=${NETNS_TIGHT_CONF-$TIGHT_DEFAULT}
DETECT_BOUND_S=${NETNS_DETECT_BOUND_S:-5}
CRASH_BOUND_S=${NETNS_CRASH_BOUND_S:-5}
HEAL_BOUND_S=${NETNS_HEAL_BOUND_S:-20}
STEP_BOUND_S=${NETNS_STEP_BOUND_S:-60}
WORKER_TIMEOUT=${NETNS_WORKER_TIMEOUT:-60s}
WORKER_ARGS=${NETNS_WORKER_ARGS:---task-delay 20ms}
STRESS_ARGS=${NETNS_STRESS_ARGS:---clients 4 --messages 2000 --mode mixed --window 16}
STRESS_CONF=${NETNS_STRESS_CONF:-}
read -r SLOW_DELAY_MS SLOW_LOSS_PCT <<<"${NETNS_SLOW:-50 5}"
export NCL_PREFIX=${NETNS_PREFIX:-$(printf 'n%07d' $(($$ % 10000000)))}
export NCL_SLOW_BACKEND=${NCL_SLOW_BACKEND:-auto}
[[ ${NETNS_VERBOSE:-0} == 1 ]] || export NCL_QUIET=1

read -ra CONF <<<"$NETNS_TIGHT_CONF"
read -ra SCONF <<<"$STRESS_CONF"
read -ra SARGS <<<"$STRESS_ARGS"
read -ra WARGS <<<"$WORKER_ARGS"
for bound in "$DETECT_BOUND_S" "$CRASH_BOUND_S" "$HEAL_BOUND_S" "$STEP_BOUND_S"; do
    [[ $bound =~ ^[0-9]+$ ]] || { echo "netns: bounds are whole seconds (got '$bound')" >&2; exit 2; }
done

if [[ -n $NETNS_TIGHT_CONF ]]; then
    echo "NETNS settings=tight conf=\"$NETNS_TIGHT_CONF\""
else
    echo "NETNS settings=defaults"
fi

# ---------------------------------------------------------------- helpers

STEP=setup
FINISHED=0
REPORTED=0
LOGS=
START_MS=0

# Milliseconds since the epoch, without a fork.
ms() {
    local t=$EPOCHREALTIME
    echo $((${t%.*} * 1000 + 10#${t#*.} / 1000))
}
# 1234 -> 1.23
secs() { printf '%d.%02d' $(($1 / 1000)) $((($1 % 1000) / 10)); }
say() { printf '%s\n' "$*"; }
# step NAME [WHAT]
step() {
    STEP=$1
    printf '\n=== netns step %s%s (at %s s)\n' "$1" "${2:+: $2}" "$(secs $(($(ms) - START_MS)))"
}

show_logs() {
    [[ -n $LOGS && -d $LOGS ]] || return 0
    local f
    for f in "$LOGS"/*.log; do
        [[ -f $f ]] || continue
        printf '\n--- last 40 lines of %s\n' "$f"
        tail -n 40 "$f"
    done
    printf '\n--- cluster status\n'
    "$NCL" status 2>&1 | tail -n 40 || true
}

fail() {
    REPORTED=1
    say "NETNS FAILED step=$STEP: $*"
    show_logs
    exit 1
}

# A figure out of its bound: fails the script, or with NETNS_KEEP_GOING=1 is noted and
# the script goes on (and fails at the end).
FAILED_STEPS=()
miss() {
    if [[ ${NETNS_KEEP_GOING:-0} == 1 ]]; then
        say "NETNS MISSED step=$STEP: $* (going on: NETNS_KEEP_GOING=1)"
        FAILED_STEPS+=("$STEP")
    else
        fail "$@"
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # A bounded command still running (interrupted): timeout passes the TERM on.
    [[ -n $BOUNDED_PID ]] && kill -TERM "$BOUNDED_PID" 2>/dev/null
    if ((FINISHED == 0 && REPORTED == 0)); then
        say "NETNS FAILED step=$STEP: interrupted or a command failed (exit status $rc)"
        show_logs
    fi
    timeout -k 5 60 "$NCL" down || say "netns: warning: 'netns-cluster.sh down' failed; run NCL_PREFIX=$NCL_PREFIX $NCL down"
    [[ -n $LOGS ]] && say "netns: node logs kept in $LOGS"
    ((FINISHED == 1)) && exit 0
    exit $((rc == 0 ? 1 : rc))
}

# netns-cluster.sh, bounded in time.
ncl() { timeout -k 5 "$STEP_BOUND_S" "$NCL" "$@" || fail "netns-cluster.sh $* failed (status $?)"; }

# The size of a log: wait_for looks only at what comes after it.
mark() { stat -c %s "$1" 2>/dev/null || echo 0; }

# The nodes that must keep running, pid -> name: wait_for fails the script at once when
# one of them exits.
declare -A MUST_LIVE

# wait_for BOUND_S LABEL FILE FROM REGEX [FILE FROM REGEX]...: polls the files (each from
# byte FROM) until every REGEX has matched a line in its file, or BOUND_S seconds pass.
# Sets SEEN_MS[LABEL#i] and SEEN_LINE[LABEL#i] for each pattern i found (0-based);
# returns 1 if some pattern was not found in time.
declare -A SEEN_MS SEEN_LINE
wait_for() {
    local bound=$1 label=$2 deadline line i n left pid
    shift 2
    deadline=$(($(ms) + bound * 1000))
    n=$(($# / 3))
    while :; do
        for pid in "${!MUST_LIVE[@]}"; do
            alive "$pid" || fail "${MUST_LIVE[$pid]} (pid $pid) exited; see its log below"
        done
        left=0
        for ((i = 0; i < n; i++)); do
            [[ -n ${SEEN_MS[$label#$i]:-} ]] && continue
            local file=${*:$((3 * i + 1)):1} from=${*:$((3 * i + 2)):1} re=${*:$((3 * i + 3)):1}
            if line=$(tail -c "+$((from + 1))" "$file" 2>/dev/null | grep -m1 -E -- "$re"); then
                SEEN_MS[$label#$i]=$(ms)
                SEEN_LINE[$label#$i]=$line
            else
                left=1
            fi
        done
        ((left == 0)) && return 0
        (($(ms) >= deadline)) && return 1
        sleep 0.05
    done
}

# figure NAME START_MS LABEL#i BOUND_S: prints "NETNS NAME=S bound_s=B ok" (or
# "NAME=>B ... FAIL" when the event was not seen); returns 1 on FAIL.
figure() {
    local name=$1 start=$2 key=$3 bound=$4 at
    at=${SEEN_MS[$key]:-}
    if [[ -z $at ]]; then
        say "NETNS $name=>$bound bound_s=$bound FAIL"
        return 1
    fi
    local took=$((at - start))
    if ((took > bound * 1000)); then
        say "NETNS $name=$(secs "$took") bound_s=$bound FAIL"
        return 1
    fi
    say "NETNS $name=$(secs "$took") bound_s=$bound ok"
}

# Whether process $1 runs (a zombie does not count).
alive() { grep -qE '^State:[[:space:]]*[^ZX[:space:]]' "/proc/$1/status" 2>/dev/null; }

# start NAME HOST CMD...: starts a node in HOST, output in $LOGS/NAME.log; prints its pid.
start() {
    local name=$1 host=$2
    shift 2
    NCL_RUN_LOG=$LOGS/$name.log timeout -k 5 "$STEP_BOUND_S" "$NCL" run "$host" "$@"
}

# bounded BOUND_S CMD...: runs CMD under timeout, in the background so that Ctrl-C and
# SIGTERM reach this script at once (timeout puts CMD in a process group of its own).
BOUNDED_PID=
bounded() {
    local bound=$1 rc=0
    shift
    timeout -k 5 "$bound" "$@" &
    BOUNDED_PID=$!
    wait "$BOUNDED_PID" || rc=$?
    BOUNDED_PID=
    return "$rc"
}

# ---------------------------------------------------------------- requirements

START_MS=$(ms)
step setup
if [[ $(id -u) != 0 ]]; then
    REPORTED=1
    say "NETNS FAILED step=setup: must run as root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    exit 1
fi
need_apt=()
command -v ip >/dev/null && command -v tc >/dev/null || need_apt+=(iproute2)
command -v python3 >/dev/null || need_apt+=(python3)
if ((${#need_apt[@]})); then
    say "netns: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq || fail "apt-get update failed"
    timeout 300 apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null ||
        fail "apt-get install ${need_apt[*]} failed"
fi
ip netns list >/dev/null 2>&1 || fail "'ip netns' does not work here"

say "netns: building the release examples (master, worker, demo, stress)"
bounded 900 cargo build --release --quiet --example master --example worker --example demo --example stress ||
    fail "cargo build --release of the examples failed"
BIN=$ROOT/target/release/examples

LOGS=${NETNS_LOG_DIR:-$(mktemp -d "/tmp/rpcenv-netns.$NCL_PREFIX.XXXXXX")}
mkdir -p "$LOGS"
timeout -k 5 60 "$NCL" down || true # leftovers of an earlier run with this prefix
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ncl up 3
M=10.77.0.1
MASTER_URI=rpc://Master@$M:7077
say "netns: cluster $NCL_PREFIX up; logs in $LOGS"
say "netns: node settings: ${NETNS_TIGHT_CONF:-(library defaults)}; master --worker-timeout $WORKER_TIMEOUT"

# ---------------------------------------------------------------- the cluster

step start "master on h1, workers w2 on h2 and w3 on h3"
MASTER_LOG=$LOGS/master.log
MASTER_PID=$(start master h1 "$BIN/master" --host "$M" --port 7077 \
    --worker-timeout "$WORKER_TIMEOUT" "${CONF[@]}") || fail "cannot start the master"
MUST_LIVE[$MASTER_PID]=master

wait_for "$STEP_BOUND_S" listening "$MASTER_LOG" 0 "^MASTER listening on $M:7077\$" ||
    fail "the master did not listen on $M:7077 within $STEP_BOUND_S s"
declare -A WPID
for n in 2 3; do
    WPID[w$n]=$(start "w$n" "h$n" "$BIN/worker" --master "$MASTER_URI" --id "w$n" \
        --host "10.77.0.$n" --port 7078 "${WARGS[@]}" "${CONF[@]}") ||
        fail "cannot start worker w$n"
    MUST_LIVE[${WPID[w$n]}]=w$n
done
wait_for "$STEP_BOUND_S" registered \
    "$MASTER_LOG" 0 '^MASTER worker registered id=w2 ' \
    "$MASTER_LOG" 0 '^MASTER worker registered id=w3 ' ||
    fail "the workers did not register within $STEP_BOUND_S s"

# driver LABEL TASKS: runs a driver in h1; checks DEMO OK; sets DRIVER_OUT.
driver() {
    local label=$1 tasks=$2 out=$LOGS/driver-$1.log rc=0
    bounded "$STEP_BOUND_S" "$NCL" exec h1 "$BIN/demo" --connect "$MASTER_URI" \
        --tasks "$tasks" "${CONF[@]}" >"$out" 2>&1 || rc=$?
    DRIVER_OUT=$(cat "$out")
    ((rc == 0)) || fail "the driver ($label) exited with status $rc$( ((rc == 124)) && echo " (timed out after $STEP_BOUND_S s)")"
    grep -q "^DEMO OK tasks=$tasks/$tasks " <<<"$DRIVER_OUT" || fail "the driver ($label) did not end with DEMO OK"
}
# tasks_of WORKER: how many tasks WORKER ran in the last driver run.
tasks_of() {
    grep -m1 '^  per worker ' <<<"$DRIVER_OUT" | grep -oE "(^|[ ,])$1 [0-9]+" | grep -oE '[0-9]+$' || echo 0
}

step baseline "a driver runs 60 tasks on both workers"
driver baseline 60
if (($(tasks_of w2) > 0 && $(tasks_of w3) > 0)); then
    say "NETNS baseline tasks=60 w2=$(tasks_of w2) w3=$(tasks_of w3) ok"
else
    say "NETNS baseline tasks=60 w2=$(tasks_of w2) w3=$(tasks_of w3) FAIL"
    fail "a worker ran no task"
fi

# ---------------------------------------------------------------- 1. cut

step cut "h2's link cut: w2's asks must fail, the master must lose w2 (bound ${DETECT_BOUND_S} s)"
m_from=$(mark "$MASTER_LOG")
w_from=$(mark "$LOGS/w2.log")
t0=$(ms)
ncl cut h2
ok=1
# The third pattern: w2's first failed heartbeat of any kind (a timeout, typically).
wait_for "$DETECT_BOUND_S" cut \
    "$MASTER_LOG" "$m_from" '^MASTER worker lost id=w2 ' \
    "$LOGS/w2.log" "$w_from" '^WORKER heartbeat failed id=w2 error=connection to ' \
    "$LOGS/w2.log" "$w_from" '^WORKER heartbeat failed id=w2 ' ||
    ok=0
figure cut_lost_s "$t0" 'cut#0' "$DETECT_BOUND_S" || ok=0
figure cut_connection_error_s "$t0" 'cut#1' "$DETECT_BOUND_S" || ok=0
first_failure=${SEEN_MS[cut#2]:-}
if [[ -n $first_failure ]]; then
    say "NETNS cut_first_failed_ask_s=$(secs $((first_failure - t0)))"
fi
say "  master: ${SEEN_LINE[cut#0]:-(no worker lost line for w2)}"
say "  w2:     ${SEEN_LINE[cut#2]:-(no failed heartbeat)}"
if [[ -n ${SEEN_LINE[cut#1]:-} && ${SEEN_LINE[cut#1]} != "${SEEN_LINE[cut#2]:-}" ]]; then
    say "  w2:     ${SEEN_LINE[cut#1]}"
fi
if grep -q '^MASTER worker lost id=w3 ' < <(tail -c "+$((m_from + 1))" "$MASTER_LOG"); then
    fail "the master lost w3, whose link was not cut"
fi
if ((ok == 0)); then
    missing=()
    [[ -n ${SEEN_MS[cut#0]:-} ]] || missing+=("the master did not declare w2 lost")
    [[ -n ${SEEN_MS[cut#1]:-} ]] || missing+=("w2's heartbeats did not fail with a connection error")
    joined=$(IFS=';'; echo "${missing[*]}")
    miss "within ${DETECT_BOUND_S} s of the cut (NETNS_DETECT_BOUND_S): ${joined//;/; }"
fi

# ---------------------------------------------------------------- 2. heal

step heal "h2's link back: w2 registers again and runs tasks (bound ${HEAL_BOUND_S} s)"
m_from=$(mark "$MASTER_LOG")
t0=$(ms)
ncl heal h2
wait_for "$HEAL_BOUND_S" heal "$MASTER_LOG" "$m_from" '^MASTER worker registered id=w2 ' || true
figure heal_registered_s "$t0" 'heal#0' "$HEAL_BOUND_S" ||
    miss "w2 did not register again within $HEAL_BOUND_S s of the heal"
driver heal 60
w2_tasks=$(tasks_of w2)
if ((w2_tasks > 0)); then
    say "NETNS heal_tasks tasks=60 w2=$w2_tasks w3=$(tasks_of w3) ok"
else
    say "NETNS heal_tasks tasks=60 w2=0 w3=$(tasks_of w3) FAIL"
    miss "w2 ran no task after the heal: $(grep '^  per worker' <<<"$DRIVER_OUT")"
fi

# ---------------------------------------------------------------- 3. crash

step crash "h3 crashes (cut + kill -9): the master must lose w3 (bound ${CRASH_BOUND_S} s)"
alive "$MASTER_PID" || fail "the master is not running"
m_from=$(mark "$MASTER_LOG")
t0=$(ms)
unset "MUST_LIVE[${WPID[w3]}]"
ncl crash h3
wait_for "$CRASH_BOUND_S" crash "$MASTER_LOG" "$m_from" '^MASTER worker lost id=w3 ' || true
say "  master: ${SEEN_LINE[crash#0]:-(no worker lost line for w3)}"
figure crash_lost_s "$t0" 'crash#0' "$CRASH_BOUND_S" ||
    miss "the master did not declare w3 lost within $CRASH_BOUND_S s of the crash (bound: NETNS_CRASH_BOUND_S)"
alive "${WPID[w3]}" && fail "w3 still runs after the crash"

# ---------------------------------------------------------------- 4. slow link + stress

step slow "h2's link: +${SLOW_DELAY_MS} ms each way, ${SLOW_LOSS_PCT} % loss; stress h2 -> h1"
MUST_LIVE=()
ncl kill h1 TERM
ncl kill h2 TERM
ncl slow h2 "$SLOW_DELAY_MS" "$SLOW_LOSS_PCT"
SERVER_LOG=$LOGS/stress-server.log
start stress-server h1 "$BIN/stress" --serve --host "$M" --port 7079 "${SCONF[@]}" >/dev/null ||
    fail "cannot start the stress server"
wait_for "$STEP_BOUND_S" serving "$SERVER_LOG" 0 "^STRESS serving on rpc://stress@$M:7079\$" ||
    fail "the stress server did not start within $STEP_BOUND_S s"
out=$LOGS/stress-client.log
t0=$(ms)
rc=0
bounded "$STEP_BOUND_S" "$NCL" exec h2 "$BIN/stress" --connect "rpc://stress@$M:7079" \
    "${SARGS[@]}" --quiet "${SCONF[@]}" >"$out" 2>&1 || rc=$?
took=$(($(ms) - t0))
result=$(grep -m1 '^RESULT ' "$out" || true)
latency=$(grep -m1 '^  ask latency ' "$out" | sed 's/^  ask latency *//' || true)
say "  stress: ${result:-(no RESULT line)}; ask latency ${latency:-?}"
lost=$(grep -oE 'lost=[0-9]+' <<<"$result" | cut -d= -f2 || true)
order=$(grep -oE 'order_violations=[0-9]+' <<<"$result" | cut -d= -f2 || true)
if ((rc == 0)) && [[ $lost == 0 && $order == 0 ]]; then
    say "NETNS slow_stress_s=$(secs "$took") lost=$lost order_violations=$order bound_s=$STEP_BOUND_S ok"
else
    say "NETNS slow_stress_s=$(secs "$took") lost=${lost:-?} order_violations=${order:-?} bound_s=$STEP_BOUND_S FAIL"
    miss "the stress run over the slow link: exit status $rc$( ((rc == 124)) && echo " (timed out)"), ${result:-no RESULT line}"
fi

# ---------------------------------------------------------------- done

step finish
say "NETNS total_s=$(secs $(($(ms) - START_MS)))"
if ((${#FAILED_STEPS[@]})); then
    REPORTED=1
    say "NETNS FAILED steps=$(IFS=,; echo "${FAILED_STEPS[*]}")"
    show_logs
    exit 1
fi
FINISHED=1
say "NETNS PASS"
