# shellcheck shell=bash
# NATS for the test suite: nats-server with JetStream on 127.0.0.1:4222.
# Sourced by scripts/brokers, which provides log, wait_port, port_open,
# apt_install and MQRPC_STATE_DIR.

nats_host=127.0.0.1
nats_port=4222
# The Go-module fallback (scripts/versions.env).
nats_go_version=$NATS_SERVER_VERSION

nats_dir() { printf '%s/nats' "$MQRPC_STATE_DIR"; }

# nats_bin prints the path of a nats-server binary, or fails.
nats_bin() {
	local gobin
	if command -v nats-server >/dev/null 2>&1; then
		command -v nats-server
		return 0
	fi
	gobin="$(go env GOPATH 2>/dev/null)/bin/nats-server"
	if [[ -x "$gobin" ]]; then
		printf '%s\n' "$gobin"
		return 0
	fi
	return 1
}

nats_install() {
	nats_bin >/dev/null && return 0
	# The Go module first: the same server version the tests embed (Debian's
	# package is much older). apt-get is the fallback without a Go toolchain.
	if command -v go >/dev/null 2>&1; then
		log "nats: building nats-server $nats_go_version with go install"
		if GOFLAGS= go install "github.com/nats-io/nats-server/v2@$nats_go_version" && nats_bin >/dev/null; then
			return 0
		fi
	fi
	if command -v apt-get >/dev/null 2>&1; then
		log "nats: installing nats-server with apt-get"
		if apt_install nats-server && nats_bin >/dev/null; then
			return 0
		fi
	fi
	log "nats: cannot install nats-server (tried go install and apt-get)"
	return 1
}

nats_up() {
	local dir bin
	if port_open "$nats_host" "$nats_port"; then
		log "nats: already listening on $nats_host:$nats_port"
		return 0
	fi
	nats_install || return 1
	bin="$(nats_bin)"
	dir="$(nats_dir)"
	mkdir -p "$dir/jetstream"
	# max_payload: a 1 MiB body plus headers must fit, with room to spare.
	cat >"$dir/nats.conf" <<EOF
listen: "$nats_host:$nats_port"
http: "$nats_host:8222"
max_payload: 8MB
max_pending: 64MB
jetstream {
  store_dir: "$dir/jetstream"
  max_memory_store: 256MB
  max_file_store: 1GB
}
EOF
	log "nats: starting $bin on $nats_host:$nats_port"
	# setsid: the server must outlive this script and its process group.
	setsid "$bin" -c "$dir/nats.conf" >"$dir/nats.log" 2>&1 </dev/null &
	echo $! >"$dir/nats.pid"
	if ! wait_port "$nats_host" "$nats_port" 30; then
		log "nats: did not start; last log lines:"
		tail -n 20 "$dir/nats.log" >&2 || true
		return 1
	fi
	# The port opens before JetStream is ready; /healthz says when it is.
	local i
	for ((i = 0; i < 50; i++)); do
		if nats_healthy; then
			log "nats: ready"
			return 0
		fi
		sleep 0.2
	done
	log "nats: listening but JetStream not healthy yet; continuing"
	return 0
}

nats_healthy() {
	command -v curl >/dev/null 2>&1 || return 0
	curl -fsS "http://$nats_host:8222/healthz" >/dev/null 2>&1
}

nats_down() {
	local dir pid i
	dir="$(nats_dir)"
	if [[ ! -f "$dir/nats.pid" ]]; then
		log "nats: not started by this script"
		return 0
	fi
	pid="$(cat "$dir/nats.pid")"
	if kill -0 "$pid" 2>/dev/null; then
		log "nats: stopping pid $pid"
		kill "$pid"
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
	fi
	rm -f "$dir/nats.pid"
}

nats_status() {
	if port_open "$nats_host" "$nats_port"; then
		echo "nats: up ($nats_host:$nats_port)"
		return 0
	fi
	echo "nats: down"
	return 1
}
