# shellcheck shell=bash
# Redis for the test suite: redis-server on 127.0.0.1:6379, the shared store
# of middleware/dedupstore/redisstore. Not a broker, but started and stopped
# with them. Sourced by scripts/brokers, which provides log, wait_port,
# port_open, apt_install and MQRPC_STATE_DIR.
#
# Why these settings: loopback only, no password (protected mode stays on,
# which allows loopback clients); data in $MQRPC_STATE_DIR/redis (an
# append-only file, so a restart keeps the stored outcomes, as a production
# Redis would); daemonized by redis-server itself, with its pid file there.
# Overridable: MQRPC_REDIS_PORT (6379).

redis_host=127.0.0.1
redis_port="${MQRPC_REDIS_PORT:-6379}"

redis_dir() { printf '%s/redis' "$MQRPC_STATE_DIR"; }

redis_install() {
	command -v redis-server >/dev/null 2>&1 && return 0
	log "redis: installing redis-server with apt-get"
	# The package's postinst would start a default server through the init
	# system; on machines without one we start our own below instead.
	local policy=""
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		policy=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
	fi
	local rc=0
	DEBIAN_FRONTEND=noninteractive apt_install redis-server || rc=$?
	[[ -z "$policy" ]] || rm -f "$policy"
	if ((rc != 0)) || ! command -v redis-server >/dev/null 2>&1; then
		log "redis: apt-get install redis-server failed"
		return 1
	fi
}

redis_up() {
	local dir
	if port_open "$redis_host" "$redis_port"; then
		log "redis: already listening on $redis_host:$redis_port"
		return 0
	fi
	redis_install || return 1
	dir="$(redis_dir)"
	mkdir -p "$dir"
	cat >"$dir/redis.conf" <<EOF
bind $redis_host
port $redis_port
dir $dir
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
save ""
appendonly yes
EOF
	log "redis: starting redis-server on $redis_host:$redis_port"
	# setsid: the server must outlive this script and its process group.
	if ! setsid redis-server "$dir/redis.conf" </dev/null >/dev/null 2>&1; then
		log "redis: redis-server failed to start; see $dir/redis.log"
		return 1
	fi
	if ! wait_port "$redis_host" "$redis_port" 30; then
		log "redis: did not start; last log lines:"
		tail -n 20 "$dir/redis.log" >&2 || true
		return 1
	fi
	log "redis: ready"
}

redis_down() {
	local dir pid i
	dir="$(redis_dir)"
	if [[ ! -f "$dir/redis.pid" ]]; then
		log "redis: not started by this script"
		return 0
	fi
	pid="$(cat "$dir/redis.pid")"
	if kill -0 "$pid" 2>/dev/null; then
		log "redis: stopping pid $pid"
		kill "$pid"
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
	fi
	rm -f "$dir/redis.pid"
}

redis_status() {
	if port_open "$redis_host" "$redis_port"; then
		echo "redis: up ($redis_host:$redis_port)"
		return 0
	fi
	echo "redis: down"
	return 1
}
