# shellcheck shell=bash
# RocketMQ with two masters for scripts/brokers --cluster: broker-a and
# broker-b (brokerId 0 each, cluster MqrpcTwoMasters, no slaves) under one
# name server, on 127.0.0.1: name server 9886, broker-a 10921 (and 10919,
# 10922), broker-b 10931 (and 10929, 10932), each with its own store under
# $MQRPC_STATE_DIR/rocketmq-cluster. A topic created on both (mqadmin
# updateTopic -c MqrpcTwoMasters) has queues on each; a topic made by
# autoCreateTopicEnable lives on the master that got its first message.
# Small heaps: the name server's of scripts/versions.env, 512 MiB per
# broker. Sourced by scripts/brokers after ../rocketmq.sh, whose jars
# (rocketmq_fetch) and JVM launcher (rocketmq_java) it uses.
#
# Connect with: rocketmq.New("127.0.0.1:9886")

rocketmq_cluster_ns_port=${MQRPC_ROCKETMQ_CLUSTER_PORT:-9886}
rocketmq_cluster_brokers=(broker-a broker-b)

rocketmq_cluster_dir() { printf '%s/rocketmq-cluster' "$MQRPC_STATE_DIR"; }
# rocketmq_cluster_port BROKER: its listen port.
rocketmq_cluster_port() {
	case $1 in
	broker-a) echo 10921 ;;
	broker-b) echo 10931 ;;
	esac
}

rocketmq_cluster_up() {
	local t0 root b port
	t0=$(date +%s)
	rocketmq_fetch || return 1
	root=$(rocketmq_cluster_dir)
	mkdir -p "$root/home/conf" "$root/logs"
	local rocketmq_root=$root rocketmq_ns=127.0.0.1:$rocketmq_cluster_ns_port
	export ROCKETMQ_HOME="$root/home"
	if port_open 127.0.0.1 "$rocketmq_cluster_ns_port"; then
		log "rocketmq cluster: name server already listening on $rocketmq_cluster_ns_port"
	else
		echo "listenPort=$rocketmq_cluster_ns_port" >"$root/home/conf/namesrv.conf"
		rocketmq_java namesrv org.apache.rocketmq.namesrv.NamesrvStartup "${MQRPC_ROCKETMQ_NAMESRV_HEAP:-$ROCKETMQ_NAMESRV_HEAP}" -c "$root/home/conf/namesrv.conf"
		if ! wait_port 127.0.0.1 "$rocketmq_cluster_ns_port" 60; then
			log "rocketmq cluster: name server did not start; see $root/logs/namesrv.log"
			tail -n 20 "$root/logs/namesrv.log" >&2
			return 1
		fi
	fi
	for b in "${rocketmq_cluster_brokers[@]}"; do
		port=$(rocketmq_cluster_port "$b")
		if port_open 127.0.0.1 "$port"; then
			log "rocketmq cluster: $b already listening on $port"
			continue
		fi
		mkdir -p "$root/$b/store"
		rocketmq_broker_conf MqrpcTwoMasters "$b" "127.0.0.1:$rocketmq_cluster_ns_port" "$port" "$root/$b/store" >"$root/home/conf/$b.conf"
		log "rocketmq cluster: starting $b on 127.0.0.1:$port"
		rocketmq_java "$b" org.apache.rocketmq.broker.BrokerStartup 512m -c "$root/home/conf/$b.conf"
	done
	local i ok
	for ((i = 0; i < 240; i++)); do
		ok=1
		for b in "${rocketmq_cluster_brokers[@]}"; do
			rocketmq_registered "$rocketmq_cluster_ns_port" "127.0.0.1:$(rocketmq_cluster_port "$b")" || ok=0
		done
		if ((ok)); then
			log "rocketmq cluster: up (name server 127.0.0.1:$rocketmq_cluster_ns_port, broker-a :10921, broker-b :10931) in $(($(date +%s) - t0))s"
			return 0
		fi
		sleep 0.5
	done
	log "rocketmq cluster: the brokers did not both register within 120s; see $root/logs"
	return 1
}

rocketmq_cluster_down() {
	local root name pid i
	root=$(rocketmq_cluster_dir)
	# Brokers first, so they do not spend their shutdown retrying the name server.
	for name in "${rocketmq_cluster_brokers[@]}" namesrv; do
		[[ -f "$root/$name.pid" ]] || continue
		pid=$(cat "$root/$name.pid")
		if kill -0 "$pid" 2>/dev/null; then
			log "rocketmq cluster: stopping $name (pid $pid)"
			kill "$pid" 2>/dev/null || true
			for ((i = 0; i < 100; i++)); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.2
			done
			kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
		fi
		rm -f "$root/$name.pid"
	done
	rm -rf "$root"/broker-?/store
}

rocketmq_cluster_status() {
	local b rc=0 up=() ns=1
	port_open 127.0.0.1 "$rocketmq_cluster_ns_port" || rc=1 ns=0
	for b in "${rocketmq_cluster_brokers[@]}"; do
		if ((ns)) && rocketmq_registered "$rocketmq_cluster_ns_port" "127.0.0.1:$(rocketmq_cluster_port "$b")"; then
			up+=("$b")
		else
			rc=1
		fi
	done
	echo "rocketmq cluster: name server 127.0.0.1:$rocketmq_cluster_ns_port, ${#up[@]}/${#rocketmq_cluster_brokers[@]} masters registered (${up[*]:-none})"
	return $rc
}
