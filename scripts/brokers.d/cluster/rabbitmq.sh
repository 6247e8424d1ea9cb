# shellcheck shell=bash
# A 3-node RabbitMQ cluster for scripts/brokers --cluster: nodes
# mqrpc-c1@localhost .. mqrpc-c3@localhost, AMQP on 127.0.0.1:5681-5683
# (Erlang distribution 25681-25683), each with its own data and logs under
# $MQRPC_STATE_DIR/rabbitmq-cluster/<node>, one Erlang cookie shared by the
# three. They find each other at first boot (classic-config peer
# discovery). Sized for a 2-core machine shared with the rest of the suite:
# one Erlang scheduler each, a small async pool, a 1 GiB memory alarm (a
# node recovering its queues at boot passes 256 MiB, and an alarm blocks
# publishers on every node of the cluster).
# Use quorum queues (amqp.WithDurable(amqp.QuorumQueue)) for queues that
# survive a node.
#
# Connect with: amqp://guest:guest@127.0.0.1:5681/,amqp://guest:guest@127.0.0.1:5682/,amqp://guest:guest@127.0.0.1:5683/
#
# Sourced by scripts/brokers, which provides log, wait_port, port_open and
# MQRPC_STATE_DIR; installing comes from ../rabbitmq.sh (rabbitmq_install).

rabbitmq_cluster_nodes=(c1 c2 c3)
rabbitmq_cluster_base=${MQRPC_RABBITMQ_CLUSTER_PORT:-5681}
rabbitmq_cluster_bin=/usr/lib/rabbitmq/bin

rabbitmq_cluster_dir() { printf '%s/rabbitmq-cluster/%s' "$MQRPC_STATE_DIR" "$1"; }
rabbitmq_cluster_port() { echo $((rabbitmq_cluster_base + ${1#c} - 1)); }
rabbitmq_cluster_name() { printf 'mqrpc-%s@localhost' "$1"; }

# rabbitmq_cluster_env NODE: the environment of a node, or of rabbitmqctl
# talking to it (its HOME holds the shared cookie).
rabbitmq_cluster_env() {
	local n=$1 dir
	dir="$(rabbitmq_cluster_dir "$n")"
	export HOME="$dir"
	export RABBITMQ_NODENAME="$(rabbitmq_cluster_name "$n")"
	export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
	export RABBITMQ_NODE_PORT="$(rabbitmq_cluster_port "$n")"
	export RABBITMQ_DIST_PORT=$((20000 + $(rabbitmq_cluster_port "$n")))
	export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
	export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
	export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
	export RABBITMQ_MNESIA_BASE="$dir/mnesia"
	export RABBITMQ_LOG_BASE="$dir/log"
	export RABBITMQ_PID_FILE="$dir/pid"
	export ERL_EPMD_ADDRESS=127.0.0.1
	export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} +S 1:1 +A 8"
	export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

rabbitmq_cluster_ctl() {
	local n=$1
	shift
	(
		rabbitmq_cluster_env "$n"
		"$rabbitmq_cluster_bin/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@"
	)
}

rabbitmq_cluster_up() {
	local n dir cookie="" start=$SECONDS peers="" i=1
	rabbitmq_install || return 1
	for n in "${rabbitmq_cluster_nodes[@]}"; do
		peers+="cluster_formation.classic_config.nodes.$i = $(rabbitmq_cluster_name "$n")"$'\n'
		i=$((i + 1))
	done
	for n in "${rabbitmq_cluster_nodes[@]}"; do
		dir="$(rabbitmq_cluster_dir "$n")"
		mkdir -p "$dir/log"
		if [[ -s "$dir/.erlang.cookie" ]]; then
			cookie=$(cat "$dir/.erlang.cookie")
		fi
	done
	[[ -n "$cookie" ]] || cookie=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F')
	for n in "${rabbitmq_cluster_nodes[@]}"; do
		dir="$(rabbitmq_cluster_dir "$n")"
		if port_open 127.0.0.1 "$(rabbitmq_cluster_port "$n")"; then
			log "rabbitmq cluster: $(rabbitmq_cluster_name "$n") already running"
			continue
		fi
		if [[ ! -s "$dir/.erlang.cookie" ]]; then
			printf '%s' "$cookie" >"$dir/.erlang.cookie"
		fi
		chmod 400 "$dir/.erlang.cookie"
		cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$(rabbitmq_cluster_port "$n")
loopback_users.guest = true
log.console = false
vm_memory_high_watermark.absolute = 1GB
disk_free_limit.absolute = 100MB
cluster_formation.peer_discovery_backend = classic_config
$peers
CONF
		: >"$dir/rabbitmq-env.conf"
		echo '[].' >"$dir/enabled_plugins"
		log "rabbitmq cluster: starting $(rabbitmq_cluster_name "$n") on 127.0.0.1:$(rabbitmq_cluster_port "$n")"
		(
			rabbitmq_cluster_env "$n"
			rabbitmq_nofile
			setsid "$rabbitmq_cluster_bin/rabbitmq-server" >>"$dir/start.log" 2>&1 </dev/null &
		)
	done
	for n in "${rabbitmq_cluster_nodes[@]}"; do
		if ! wait_port 127.0.0.1 "$(rabbitmq_cluster_port "$n")" 180; then
			log "rabbitmq cluster: $(rabbitmq_cluster_name "$n") did not open its port within 180s; see $(rabbitmq_cluster_dir "$n")/log"
			return 1
		fi
		if ! rabbitmq_cluster_ctl "$n" -q --timeout 120 await_startup >/dev/null 2>&1; then
			log "rabbitmq cluster: $(rabbitmq_cluster_name "$n") did not finish booting"
			return 1
		fi
	done
	log "rabbitmq cluster: up after $((SECONDS - start))s; $(rabbitmq_cluster_ctl c1 -q cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]')"
}

rabbitmq_cluster_down() {
	local n
	for n in "${rabbitmq_cluster_nodes[@]}"; do
		port_open 127.0.0.1 "$(rabbitmq_cluster_port "$n")" || continue
		log "rabbitmq cluster: stopping $(rabbitmq_cluster_name "$n")"
		rabbitmq_cluster_ctl "$n" -q --timeout 60 shutdown >/dev/null 2>&1 || true
	done
}

rabbitmq_cluster_status() {
	local n rc=0 up=()
	for n in "${rabbitmq_cluster_nodes[@]}"; do
		if port_open 127.0.0.1 "$(rabbitmq_cluster_port "$n")"; then
			up+=("$n")
		else
			rc=1
		fi
	done
	echo "rabbitmq cluster: ${#up[@]}/${#rabbitmq_cluster_nodes[@]} nodes up (${up[*]:-none})"
	return $rc
}
