#!/usr/bin/env bash
# Spark interop check for rpcenv: a real Spark 4.3.0 TransportClient against the rpcenv server
# (examples/spark_interop.rs), and the rpcenv client against a real Spark TransportServer
# (SparkPeer.java), over 127.0.0.1. See README.md next to this script. Run it from anywhere.
#
# Ten directions, one server process and one client process each, one after the other:
#   - plaintext (Spark with spark.authenticate=false), both ways;
#   - Spark's AuthEngine (spark.authenticate=true, spark.network.crypto.enabled=true,
#     saslFallback=false, app id sparkSaslUser, a fixed secret) for every combination of
#     cipher {AES/CTR/NoPadding, AES/GCM/NoPadding} x authEngineVersion {1, 2} x
#     {Spark client -> rpcenv server, rpcenv client -> Spark server}.
# Every client runs the echo checks (echo_0B .. echo_16MiB, fail_boom, oneway_1000_count,
# concurrent_200), the stream checks (stream_0B, stream_1B, stream_1MiB, stream_64MiB: files
# streamed with TransportClient.stream from the server's StreamManager / rpcenv file server,
# checked byte by byte; stream_missing: Spark's "Stream '/files/missing' was not found.";
# the rpcenv client also open_channel_64MiB: RpcEnv::open_channel of a spark:// URI) and ends
# with __shutdown__; run.sh adds server_exit (the server exited 0 by
# itself). With AuthEngine the client first runs wrong_secret: a client with another secret
# must be refused with an authentication error within 5 s (not by a timeout), and the same
# server must then serve the real client. Prints PASS/FAIL per check, a summary per direction
# and "spark interop: N passed, M failed"; exits 0 only if nothing failed or was missing.
# Nothing is ever skipped: a missing jar, JDK or build fails the check.
#
# Environment:
#   RPCENV_CACHE          cache root (default ~/.cache/rpcenv); jars go to <root>/spark-4.3.0/jars
#   RPCENV_PYSPARK_SDIST  an already downloaded pyspark-4.3.0.tar.gz to take the jars from
#                         instead of running `pip download`
#   CARGO_TARGET_DIR      honoured when looking for the built example
#   RUST_LOG              passed through to the Rust peer (env_logger)
set -euo pipefail

SPARK_VERSION=4.3.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE_ROOT="${RPCENV_CACHE:-$HOME/.cache/rpcenv}"
CACHE="$CACHE_ROOT/spark-$SPARK_VERSION"
JARS="$CACHE/jars"
MARKER_JAR="spark-network-common_2.13-$SPARK_VERSION.jar"
BUILD="$HERE/build"
CLASSES="$BUILD/classes"
DIRECTION_TIMEOUT=300   # seconds, per process of each direction
PORT_WAIT=30            # seconds to wait for a server's port file
CHECKS=(echo_0B echo_1B echo_100B echo_64KiB echo_16MiB fail_boom oneway_1000_count concurrent_200
        stream_0B stream_1B stream_1MiB stream_64MiB stream_missing)
# The rpcenv client also downloads with RpcEnv::open_channel (a client-mode env, spark:// URI).
RUST_CLIENT_CHECKS=(open_channel_64MiB)
AUTH_CHECKS=(wrong_secret "${CHECKS[@]}")   # what a client with auth options reports
CIPHERS=(AES/CTR/NoPadding AES/GCM/NoPadding)
ENGINE_VERSIONS=(1 2)
# The shared secret of the AuthEngine directions (spark.authenticate.secret); the wrong_secret
# check uses "not-" followed by it.
AUTH_SECRET="rpcenv-interop-secret"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'spark interop: ERROR: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rpcenv-spark-interop.XXXXXX")"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
forget_pid() {  # a reaped pid may be reused: never signal it again
  local keep=() pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}
trap cleanup EXIT
trap 'echo "spark interop: interrupted" >&2; exit 130' INT TERM HUP

# ------------------------------------------------------------------------------------ jars

find_pip() {
  if python3 -m pip --version >/dev/null 2>&1; then echo "python3 -m pip"; return; fi
  if command -v pip3 >/dev/null 2>&1; then echo "pip3"; return; fi
  if command -v pip >/dev/null 2>&1; then echo "pip"; return; fi
  return 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* yourself"
  log "installing $* with apt-get"
  # Slim Debian images lack the man directories that the JDK's postinst links into.
  as_root mkdir -p /usr/share/man/man1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update \
    || die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
    || die "apt-get install $* failed"
}

fetch_jars() {
  if [ -f "$CACHE/.complete" ] && [ -f "$JARS/$MARKER_JAR" ]; then
    log "Spark $SPARK_VERSION jars: $JARS (cached)"
    return
  fi
  mkdir -p "$CACHE_ROOT"
  local tmp sdist extracted jars_dir
  tmp="$(mktemp -d "$CACHE_ROOT/.spark-$SPARK_VERSION.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'; cleanup" EXIT

  if [ -n "${RPCENV_PYSPARK_SDIST:-}" ]; then
    [ -f "$RPCENV_PYSPARK_SDIST" ] || die "RPCENV_PYSPARK_SDIST=$RPCENV_PYSPARK_SDIST: no such file"
    sdist="$RPCENV_PYSPARK_SDIST"
    log "Spark $SPARK_VERSION jars: taking them from $sdist"
  else
    local pip
    if ! pip="$(find_pip)"; then
      apt_install python3-pip
      pip="$(find_pip)" || die "pip is still missing after installing python3-pip"
    fi
    log "Spark $SPARK_VERSION jars: downloading pyspark==$SPARK_VERSION from PyPI (~456 MB)"
    # shellcheck disable=SC2086
    $pip download --no-deps --no-binary pyspark "pyspark==$SPARK_VERSION" -d "$tmp/dl" >&2 \
      || die "pip download pyspark==$SPARK_VERSION failed"
    sdist="$(find "$tmp/dl" -maxdepth 1 -name "pyspark-$SPARK_VERSION*.tar.gz" | head -n 1)"
    [ -n "$sdist" ] || die "pip download produced no pyspark-$SPARK_VERSION*.tar.gz in $tmp/dl"
  fi

  log "extracting deps/jars/ from $(basename "$sdist")"
  extracted="$tmp/x"
  mkdir -p "$extracted"
  tar -xzf "$sdist" -C "$extracted" --wildcards '*/deps/jars/*.jar' \
    || die "could not extract */deps/jars/*.jar from $sdist"
  jars_dir="$(find "$extracted" -type d -path '*/deps/jars' | head -n 1)"
  [ -n "$jars_dir" ] && [ -f "$jars_dir/$MARKER_JAR" ] \
    || die "$sdist has no deps/jars/$MARKER_JAR"

  rm -rf "$CACHE.old"
  if [ -e "$CACHE" ]; then mv "$CACHE" "$CACHE.old"; fi
  mkdir -p "$tmp/final"
  mv "$jars_dir" "$tmp/final/jars"
  touch "$tmp/final/.complete"
  mv "$tmp/final" "$CACHE"
  rm -rf "$CACHE.old" "$tmp"
  trap cleanup EXIT
  log "Spark $SPARK_VERSION jars: $(find "$JARS" -name '*.jar' | wc -l) jars in $JARS"
}

# ------------------------------------------------------------------------------------ java

java_major() {  # major version of the `javac` on PATH, 0 if unknown
  local v
  v="$(javac -version 2>&1 | awk '{print $2}')"
  v="${v%%.*}"
  [[ "$v" =~ ^[0-9]+$ ]] && echo "$v" || echo 0
}

ensure_java() {
  if ! command -v javac >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1 \
      || [ "$(java_major)" -lt 17 ]; then
    apt_install openjdk-17-jdk-headless
    local jdk
    jdk="$(find /usr/lib/jvm -maxdepth 1 -type d -name 'java-17-openjdk*' 2>/dev/null | head -n 1)"
    [ -n "$jdk" ] && export PATH="$jdk/bin:$PATH"
    command -v javac >/dev/null 2>&1 && command -v java >/dev/null 2>&1 \
      || die "javac/java still missing after installing openjdk-17-jdk-headless"
    [ "$(java_major)" -ge 17 ] || die "javac on PATH is older than 17 (Spark $SPARK_VERSION needs 17+)"
  fi
  log "java: $(javac -version 2>&1)"
}

# ------------------------------------------------------------------------------------ run

JAVA_OPTS=(
  -Dlog4j2.configurationFile="$HERE/log4j2.properties"
  # What Spark's own launcher passes on Java 17, so Netty runs as it does inside Spark.
  -XX:+IgnoreUnrecognizedVMOptions
  --add-opens=java.base/java.lang=ALL-UNNAMED
  --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  -Dio.netty.tryReflectionSetAccessible=true
)

TOTAL_PASS=0
TOTAL_FAIL=0
SUMMARY=()

# run_direction <title> <checks> <server command...> -- <client command...>
# <checks>: the names the client must report, separated by spaces. The server command gets
# the port file appended, the client command the port.
run_direction() {
  local title="$1"; shift
  local checks=()
  read -r -a checks <<<"$1"; shift
  local server_cmd=() client_cmd=()
  while [ "$1" != "--" ]; do server_cmd+=("$1"); shift; done
  shift
  client_cmd=("$@")

  local tag="${title//[^A-Za-z0-9]/_}"
  local port_file="$WORK/$tag.port" slog="$WORK/$tag.server.log"
  local cout="$WORK/$tag.client.out" cerr="$WORK/$tag.client.err"
  local pass=0 fail=0 spid cpid crc=0 src port="" name i

  echo
  echo "=== $title"
  rm -f "$port_file"
  timeout -k 10 "$DIRECTION_TIMEOUT" "${server_cmd[@]}" "$port_file" >"$slog" 2>&1 &
  spid=$!
  PIDS+=("$spid")

  for ((i = 0; i < PORT_WAIT * 10; i++)); do
    if [ -s "$port_file" ]; then port="$(tr -dc '0-9' <"$port_file")"; break; fi
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$port" ]; then
    if kill -0 "$spid" 2>/dev/null; then
      echo "FAIL server_start: no port file within ${PORT_WAIT} s; server log:"
    else
      src=0
      wait "$spid" || src=$?
      echo "FAIL server_start: the server exited with status $src before writing its port; server log:"
    fi
    sed 's/^/    | /' "$slog" | tail -n 40
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    forget_pid "$spid"
    fail=$((fail + 1 + ${#checks[@]}))   # the client's checks are missing too
  else
    echo "server listening on 127.0.0.1:$port"
    timeout -k 10 "$DIRECTION_TIMEOUT" "${client_cmd[@]}" "$port" >"$cout" 2>"$cerr" &
    cpid=$!
    PIDS+=("$cpid")
    wait "$cpid" || crc=$?
    forget_pid "$cpid"
    cat "$cout"
    pass=$(grep -c '^PASS ' "$cout" || true)
    fail=$(grep -c '^FAIL ' "$cout" || true)
    for name in "${checks[@]}"; do
      if ! grep -Eq "^(PASS|FAIL) $name(:|\$)" "$cout"; then
        echo "FAIL $name: missing from the client's output"
        fail=$((fail + 1))
      fi
    done
    if ! grep -q '^interop client: ' "$cout"; then
      echo "FAIL client_summary: the client printed no summary line (exit status $crc)"
      fail=$((fail + 1))
    elif [ "$crc" -ne 0 ] && [ "$fail" -eq 0 ]; then
      echo "FAIL client_exit: the client exited with status $crc although no check failed"
      fail=$((fail + 1))
    fi
    [ "$crc" -eq 124 ] && echo "(the client was killed after ${DIRECTION_TIMEOUT} s)"

    # The client ends with __shutdown__: the server must now exit 0 by itself.
    for ((i = 0; i < 150; i++)); do
      kill -0 "$spid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$spid" 2>/dev/null; then
      kill "$spid" 2>/dev/null || true
      wait "$spid" 2>/dev/null || true
      forget_pid "$spid"
      echo "FAIL server_exit: the server was still running 15 s after __shutdown__"
      fail=$((fail + 1))
    else
      src=0
      wait "$spid" || src=$?
      forget_pid "$spid"
      if [ "$src" -eq 0 ]; then
        echo "PASS server_exit"
        pass=$((pass + 1))
      else
        echo "FAIL server_exit: the server exited with status $src"
        fail=$((fail + 1))
      fi
    fi
    if [ "$fail" -ne 0 ]; then
      echo "--- client stderr (last 40 lines):"
      sed 's/^/    | /' "$cerr" | tail -n 40
      echo "--- server log (last 40 lines):"
      sed 's/^/    | /' "$slog" | tail -n 40
    fi
  fi
  echo "--- $title: $pass passed, $fail failed"
  SUMMARY+=("$(printf '%-86s %3d passed, %d failed' "$title:" "$pass" "$fail")")
  TOTAL_PASS=$((TOTAL_PASS + pass))
  TOTAL_FAIL=$((TOTAL_FAIL + fail))
}

main() {
  local start=$SECONDS
  fetch_jars
  ensure_java

  log "compiling SparkPeer.java into $CLASSES"
  rm -rf "$CLASSES"
  mkdir -p "$CLASSES"
  javac -Xlint:all,-path -d "$CLASSES" -cp "$JARS/*" "$HERE/SparkPeer.java" \
    || die "javac SparkPeer.java failed"

  command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH"
  log "cargo build --example spark_interop (in $ROOT)"
  (cd "$ROOT" && cargo build --example spark_interop) \
    || die "cargo build --example spark_interop failed"
  local rust_peer="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/spark_interop"
  [[ "$rust_peer" = /* ]] || rust_peer="$ROOT/$rust_peer"
  [ -x "$rust_peer" ] || die "built example not found at $rust_peer"

  local java_peer=(java "${JAVA_OPTS[@]}" -cp "$CLASSES:$JARS/*" SparkPeer)

  local n=0 cipher version auth
  run_direction "direction $((++n)): Spark client -> rpcenv server, plaintext" "${CHECKS[*]}" \
    "$rust_peer" server -- "${java_peer[@]}" client
  run_direction "direction $((++n)): rpcenv client -> Spark server, plaintext" \
    "${CHECKS[*]} ${RUST_CLIENT_CHECKS[*]}" \
    "${java_peer[@]}" server -- "$rust_peer" client
  for cipher in "${CIPHERS[@]}"; do
    for version in "${ENGINE_VERSIONS[@]}"; do
      auth=(--auth-secret "$AUTH_SECRET" --cipher "$cipher" --engine-version "$version")
      run_direction \
        "direction $((++n)): Spark client -> rpcenv server, $cipher, authEngineVersion $version" \
        "${AUTH_CHECKS[*]}" \
        "$rust_peer" server "${auth[@]}" -- "${java_peer[@]}" client "${auth[@]}"
      run_direction \
        "direction $((++n)): rpcenv client -> Spark server, $cipher, authEngineVersion $version" \
        "${AUTH_CHECKS[*]} ${RUST_CLIENT_CHECKS[*]}" \
        "${java_peer[@]}" server "${auth[@]}" -- "$rust_peer" client "${auth[@]}"
    done
  done

  echo
  echo "=== summary"
  printf '%s\n' "${SUMMARY[@]}"
  echo "(took $((SECONDS - start)) s)"
  echo "spark interop: $TOTAL_PASS passed, $TOTAL_FAIL failed"
  [ "$TOTAL_FAIL" -eq 0 ] && [ "$TOTAL_PASS" -gt 0 ]
}

main "$@"
