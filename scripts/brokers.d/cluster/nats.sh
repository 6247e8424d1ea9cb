# shellcheck shell=bash
# A 3-node NATS cluster with JetStream for scripts/brokers --cluster: nodes
# n1, n2, n3 on 127.0.0.1, client ports 4231-4233 (monitoring 8231-8233,
# routes 6231-6233), each with its own JetStream store under
# $MQRPC_STATE_DIR/nats-cluster/<node>. Streams made with
# JetStreamConfig.Replicas = 3 keep a copy on every node. Sourced by
# scripts/brokers, which provides log, wait_port, port_open and
# MQRPC_STATE_DIR; the binary comes from ../nats.sh (nats_install, nats_bin).
#
# Connect with: nats://127.0.0.1:4231,nats://127.0.0.1:4232,nats://127.0.0.1:4233

nats_cluster_nodes=(n1 n2 n3)
nats_cluster_client_base=${MQRPC_NATS_CLUSTER_PORT:-4231}

nats_cluster_dir() { printf '%s/nats-cluster/%s' "$MQRPC_STATE_DIR" "$1"; }
# nats_cluster_port NODE KIND: the client, http or route port of a node.
nats_cluster_port() {
	local i=${1#n} off
	case $2 in
	client) off=0 ;;
	http) off=4000 ;;
	route) off=2000 ;;
	esac
	echo $((nats_cluster_client_base + off + i - 1))
}

nats_cluster_url() {
	local n urls=()
	for n in "${nats_cluster_nodes[@]}"; do
		urls+=("nats://127.0.0.1:$(nats_cluster_port "$n" client)")
	done
	local IFS=,
	echo "${urls[*]}"
}

nats_cluster_up() {
	local bin n dir routes=() i
	nats_install || return 1
	bin="$(nats_bin)"
	for n in "${nats_cluster_nodes[@]}"; do
		routes+=("\"nats-route://127.0.0.1:$(nats_cluster_port "$n" route)\"")
	done
	for n in "${nats_cluster_nodes[@]}"; do
		if port_open 127.0.0.1 "$(nats_cluster_port "$n" client)"; then
			log "nats cluster: $n already listening on $(nats_cluster_port "$n" client)"
			continue
		fi
		dir="$(nats_cluster_dir "$n")"
		mkdir -p "$dir/jetstream"
		# Small stores: three JetStream servers share 2 cores and a
		# laptop's memory with the rest of the suite.
		cat >"$dir/nats.conf" <<CONF
server_name: "$n"
listen: "127.0.0.1:$(nats_cluster_port "$n" client)"
http: "127.0.0.1:$(nats_cluster_port "$n" http)"
max_payload: 8MB
max_pending: 64MB
jetstream {
  store_dir: "$dir/jetstream"
  max_memory_store: 128MB
  max_file_store: 1GB
}
cluster {
  name: "mqrpc"
  listen: "127.0.0.1:$(nats_cluster_port "$n" route)"
  routes: [$(
			IFS=,
			echo "${routes[*]}"
		)]
}
CONF
		log "nats cluster: starting $n on 127.0.0.1:$(nats_cluster_port "$n" client)"
		setsid "$bin" -c "$dir/nats.conf" >"$dir/nats.log" 2>&1 </dev/null &
		echo $! >"$dir/nats.pid"
	done
	for n in "${nats_cluster_nodes[@]}"; do
		if ! wait_port 127.0.0.1 "$(nats_cluster_port "$n" client)" 30; then
			log "nats cluster: $n did not start; last log lines:"
			tail -n 20 "$(nats_cluster_dir "$n")/nats.log" >&2 || true
			return 1
		fi
	done
	# JetStream is ready once the nodes elected a meta leader: /healthz
	# answers 200 on every node then.
	for ((i = 0; i < 150; i++)); do
		if nats_cluster_healthy; then
			log "nats cluster: ready at $(nats_cluster_url)"
			return 0
		fi
		sleep 0.2
	done
	log "nats cluster: listening but JetStream not healthy after 30s; continuing"
	return 0
}

nats_cluster_healthy() {
	command -v curl >/dev/null 2>&1 || return 0
	local n
	for n in "${nats_cluster_nodes[@]}"; do
		curl -fsS "http://127.0.0.1:$(nats_cluster_port "$n" http)/healthz" >/dev/null 2>&1 || return 1
	done
}

nats_cluster_down() {
	local n dir pid i
	for n in "${nats_cluster_nodes[@]}"; do
		dir="$(nats_cluster_dir "$n")"
		[[ -f "$dir/nats.pid" ]] || continue
		pid="$(cat "$dir/nats.pid")"
		if kill -0 "$pid" 2>/dev/null; then
			log "nats cluster: stopping $n (pid $pid)"
			kill "$pid"
			for ((i = 0; i < 50; i++)); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.2
			done
		fi
		rm -f "$dir/nats.pid"
	done
}

nats_cluster_status() {
	local n rc=0 up=()
	for n in "${nats_cluster_nodes[@]}"; do
		if port_open 127.0.0.1 "$(nats_cluster_port "$n" client)"; then
			up+=("$n")
		else
			rc=1
		fi
	done
	echo "nats cluster: ${#up[@]}/${#nats_cluster_nodes[@]} nodes up (${up[*]:-none}); $(nats_cluster_url)"
	return $rc
}
