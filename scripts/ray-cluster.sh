#!/usr/bin/env bash
# A two-node Ray cluster on this machine, for the Ray executor's tests
# (shared/measurements/ray.md, "CI recipe").
#
#   scripts/ray-cluster.sh start           venv (reused) + head + second node; waits until both are ALIVE
#   scripts/ray-cluster.sh venv            only the venv (reused), so that it can be made ahead of time
#   scripts/ray-cluster.sh stop            stops only the cluster this script started
#   scripts/ray-cluster.sh restart-worker  restarts the second node (after a test killed it)
#   scripts/ray-cluster.sh status          prints the state file and the nodes the dashboard sees
#
# The head has 2 CPUs and the dashboard on 127.0.0.1:$RAY_DASHBOARD_PORT; the
# second node is 127.0.0.2 with 1 CPU, two fake GPUs (--num-gpus=2 on a
# GPU-less host only matters to the scheduler) and a custom resource "probe".
# Both share one private --temp-dir, which is also how `stop` finds exactly
# the processes of this cluster and no other Ray on the machine.
#
# The tests read target/ray-cluster/cluster.env (LATTICE_RAY_ADDRESS,
# LATTICE_RAY_DASHBOARD, LATTICE_RAY_PYTHON, ...); the same variables in the
# environment win over the file.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

VENV=${LATTICE_RAY_VENV:-$ROOT/target/ray-venv}
STATE_DIR=$ROOT/target/ray-cluster
STATE=$STATE_DIR/cluster.env
GCS_PORT=${RAY_GCS_PORT:-6379}
DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
WORKER_IP=127.0.0.2
WORKER_AGENT_PORT=${RAY_WORKER_AGENT_PORT:-52366}

# Node death shows in ~3 s instead of ~13 s; no usage reporting.
export RAY_USAGE_STATS_ENABLED=0 RAY_health_check_period_ms=1000 RAY_health_check_failure_threshold=3

log() { echo "ray-cluster: $*" >&2; }

ensure_venv() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import ray, ray.dashboard, aiohttp' 2>/dev/null; then
    return
  fi
  local base=${LATTICE_RAY_BASE_PYTHON:-python3}
  if ! "$base" -m venv --help >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else
      log "$base has no venv module; install python3-venv or set LATTICE_RAY_BASE_PYTHON"
      exit 1
    fi
  fi
  log "creating $VENV with ray[default] (~35 s, once)"
  rm -rf "$VENV"
  "$base" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install --quiet "ray[default]"
}

# PIDs of every process of the cluster whose marker is $1 (its temp dir);
# with $2, only those of that node (head or worker). Every process that
# `ray start` spawns inherits the environment set here (GCS, raylets,
# dashboard, client server, log monitors); the ones that rename themselves
# (ray::IDLE, ray::DashboardAgent, ray-dashboard-*) overwrite their
# environment, so they are found as descendants of the marked ones. Nothing
# else on the machine is touched.
cluster_pids() {
  local temp=$1 node=${2:-} roots=() pid envs
  [ -n "$temp" ] || return 0
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    envs=$(tr '\0' '\n' 2>/dev/null <"$dir/environ") || continue
    grep -qxF "LATTICE_RAY_CLUSTER=$temp" <<<"$envs" || continue
    if [ -n "$node" ]; then
      grep -qxF "LATTICE_RAY_NODE=$node" <<<"$envs" || continue
    fi
    roots+=("$pid")
  done
  [ ${#roots[@]} -gt 0 ] || return 0
  ps -eo pid=,ppid= | awk -v roots="${roots[*]}" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      do {
        changed = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
      } while (changed)
      for (p in keep) if (p in parent) print p
    }'
}

# TERM, up to 10 s of grace, then KILL.
kill_pids() {
  local pids=("$@") left i
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for i in $(seq 1 50); do
    left=()
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && left+=("$pid")
    done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.2
  done
  kill -KILL "${left[@]}" 2>/dev/null || true
  for i in $(seq 1 25); do
    local alive=0
    for pid in "${left[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    [ $alive = 0 ] && return 0
    sleep 0.2
  done
}

# Waits until the dashboard lists $1 alive nodes (up to 90 s).
wait_for_nodes() {
  local want=$1 i n
  for i in $(seq 1 180); do
    n=$("$VENV/bin/python" - "$DASHBOARD_PORT" <<'EOF' 2>/dev/null || echo 0
import json, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/api/v0/nodes?limit=1000",
                             headers={"User-Agent": "lattice-ray-cluster"})
body = json.load(urllib.request.urlopen(req, timeout=5))
print(sum(1 for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"))
EOF
)
    [ "$n" -ge "$want" ] 2>/dev/null && return 0
    sleep 0.5
  done
  log "the dashboard did not list $want alive nodes within 90 s"
  return 1
}

start_worker() {
  LATTICE_RAY_CLUSTER=$TEMP_DIR LATTICE_RAY_NODE=worker "$VENV/bin/ray" start --address="127.0.0.1:$GCS_PORT" --node-ip-address=$WORKER_IP \
    --num-cpus=1 --num-gpus=2 --memory=2000000000 --object-store-memory=200000000 \
    --resources='{"probe":1}' --labels='probe-node=worker2' \
    --dashboard-agent-listen-port="$WORKER_AGENT_PORT" --temp-dir="$TEMP_DIR" \
    --disable-usage-stats >"$STATE_DIR/worker-start.log" 2>&1 ||
    { cat "$STATE_DIR/worker-start.log" >&2; return 1; }
}

load_state() {
  TEMP_DIR=
  # shellcheck disable=SC1090
  [ -f "$STATE" ] && . "$STATE" && TEMP_DIR=${LATTICE_RAY_TEMP_DIR:-}
  return 0
}

start() {
  load_state
  if [ -n "$TEMP_DIR" ] && [ -n "$(cluster_pids "$TEMP_DIR")" ]; then
    if wait_for_nodes 2; then
      log "already running (state in $STATE)"
      return 0
    fi
    log "a cluster of ours runs but is not healthy: restarting it"
    stop
  fi
  ensure_venv
  mkdir -p "$STATE_DIR"
  # Short and private: Ray puts unix sockets under it (108-byte path limit).
  TEMP_DIR=$(mktemp -d /tmp/lattice-ray.XXXXXX)
  # Written first, so that `stop` finds the processes even if start fails half-way.
  cat >"$STATE" <<EOF
LATTICE_RAY_ADDRESS=127.0.0.1:$GCS_PORT
LATTICE_RAY_DASHBOARD=http://127.0.0.1:$DASHBOARD_PORT
LATTICE_RAY_PYTHON=$VENV/bin/python
LATTICE_RAY_TEMP_DIR=$TEMP_DIR
LATTICE_RAY_WORKER_IP=$WORKER_IP
LATTICE_RAY_CLUSTER_SCRIPT=$ROOT/scripts/ray-cluster.sh
EOF
  log "starting the head (temp dir $TEMP_DIR)"
  LATTICE_RAY_CLUSTER=$TEMP_DIR LATTICE_RAY_NODE=head "$VENV/bin/ray" start --head --port="$GCS_PORT" --num-cpus=2 --num-gpus=0 \
    --memory=4000000000 --object-store-memory=300000000 \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --temp-dir="$TEMP_DIR" --disable-usage-stats >"$STATE_DIR/head-start.log" 2>&1 ||
    { cat "$STATE_DIR/head-start.log" >&2; stop; exit 1; }
  log "starting the second node on $WORKER_IP"
  start_worker || { stop; exit 1; }
  wait_for_nodes 2 || { stop; exit 1; }
  log "up: address 127.0.0.1:$GCS_PORT, dashboard http://127.0.0.1:$DASHBOARD_PORT (state in $STATE)"
}

restart_worker() {
  load_state
  [ -n "$TEMP_DIR" ] || { log "no cluster of ours is running"; exit 1; }
  # What is left of the second node (its raylet may have been killed).
  # shellcheck disable=SC2046
  kill_pids $(cluster_pids "$TEMP_DIR" worker)
  start_worker
  wait_for_nodes 2
  log "second node restarted"
}

stop() {
  load_state
  if [ -z "$TEMP_DIR" ]; then
    log "no cluster of ours to stop"
    return 0
  fi
  # shellcheck disable=SC2046
  kill_pids $(cluster_pids "$TEMP_DIR")
  rm -rf "$TEMP_DIR" "$STATE"
  log "stopped"
}

status() {
  load_state
  [ -f "$STATE" ] && cat "$STATE" || { log "no cluster of ours"; return 1; }
  echo "processes: $(cluster_pids "$TEMP_DIR" | wc -l)"
  curl -s -A lattice-ray-cluster "http://127.0.0.1:$DASHBOARD_PORT/api/v0/nodes?limit=1000" | head -c 2000
  echo
}

case ${1:-} in
  start) start ;;
  venv) ensure_venv ;;
  stop) stop ;;
  restart-worker) restart_worker ;;
  status) status ;;
  *) echo "usage: $0 start|venv|stop|restart-worker|status" >&2; exit 2 ;;
esac
