# shellcheck shell=bash
# RabbitMQ for the test suite: one node, rabbit@localhost, AMQP on 127.0.0.1:5672.
#
# Sourced by scripts/brokers, which provides log, wait_port, port_open,
# apt_install and MQRPC_STATE_DIR. There is no systemd on the machines we run
# on, so the node is started directly with rabbitmq-server -detached.
#
# Why these settings:
#   - node name rabbit@localhost: the default (rabbit@$(hostname -s)) breaks on
#     machines whose host name does not resolve, and localhost always does;
#   - everything (AMQP, epmd, Erlang distribution) binds to loopback only;
#   - the Erlang cookie is created up front, owned by the user that runs the
#     node, so rabbitmqctl can talk to it on a fresh machine;
#   - the guest user keeps its default loopback-only restriction.
#
# Overridable: MQRPC_RABBITMQ_NODE (rabbit@localhost; the tests read it too),
# MQRPC_RABBITMQ_PORT (5672), MQRPC_RABBITMQ_DIST_PORT (25672).

rabbitmq_env() {
	export RABBITMQ_NODENAME="${MQRPC_RABBITMQ_NODE:-rabbit@localhost}"
	export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
	export RABBITMQ_NODE_PORT="${MQRPC_RABBITMQ_PORT:-5672}"
	export RABBITMQ_DIST_PORT="${MQRPC_RABBITMQ_DIST_PORT:-25672}"
	export ERL_EPMD_ADDRESS=127.0.0.1
	export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
	export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

rabbitmq_ctl() {
	rabbitmq_env
	rabbitmqctl -n "$RABBITMQ_NODENAME" "$@"
}

# rabbitmq_cookie makes sure the Erlang cookie exists and is private in every
# home a node or rabbitmqctl may run with (root's and the rabbitmq user's).
rabbitmq_cookie() {
	local home cookie=""
	for home in /var/lib/rabbitmq "$HOME"; do
		[[ -d "$home" ]] || continue
		if [[ -s "$home/.erlang.cookie" ]]; then
			cookie=$(cat "$home/.erlang.cookie")
			break
		fi
	done
	if [[ -z "$cookie" ]]; then
		cookie=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F')
	fi
	for home in /var/lib/rabbitmq "$HOME"; do
		[[ -d "$home" ]] || continue
		if [[ ! -s "$home/.erlang.cookie" ]]; then
			printf '%s' "$cookie" >"$home/.erlang.cookie"
		fi
		chmod 400 "$home/.erlang.cookie"
		if [[ "$home" == /var/lib/rabbitmq ]] && id rabbitmq >/dev/null 2>&1; then
			chown rabbitmq:rabbitmq "$home/.erlang.cookie"
		fi
	done
}

rabbitmq_install() {
	command -v rabbitmq-server >/dev/null 2>&1 && return 0
	log "rabbitmq: installing rabbitmq-server with apt-get"
	# The package's postinst would try to start a default node through the
	# init system; on machines without one we start our own below instead.
	local policy=""
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		policy=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
	fi
	local rc=0
	DEBIAN_FRONTEND=noninteractive apt_install rabbitmq-server || rc=$?
	[[ -z "$policy" ]] || rm -f "$policy"
	if ((rc != 0)); then
		log "rabbitmq: apt-get install rabbitmq-server failed"
		return "$rc"
	fi
}

# rabbitmq_nofile raises this shell's open-files limit to its hard limit,
# for the node it starts. With the default 1024, RabbitMQ's file handle
# cache runs dry once a few hundred queues exist (the test suites' quorum,
# retry, cancel and stream queues): queue processes then wait for a handle
# for ever and the whole node stops answering, new connections included.
rabbitmq_nofile() {
	ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
}

# rabbitmq_start starts the node detached with the raised limit. As root,
# /usr/sbin/rabbitmq-server switches to the rabbitmq user through su, whose
# PAM session puts the limit back to 1024; setpriv switches without PAM.
rabbitmq_start() {
	rabbitmq_nofile
	if [[ $EUID -eq 0 ]] && command -v setpriv >/dev/null 2>&1 && id rabbitmq >/dev/null 2>&1 &&
		[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
		cd /var/lib/rabbitmq &&
			HOME=/var/lib/rabbitmq exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
				/usr/lib/rabbitmq/bin/rabbitmq-server -detached
	fi
	exec rabbitmq-server -detached
}

rabbitmq_up() {
	rabbitmq_env
	if port_open 127.0.0.1 "$RABBITMQ_NODE_PORT"; then
		log "rabbitmq: already running on 127.0.0.1:$RABBITMQ_NODE_PORT"
		return 0
	fi
	rabbitmq_install || return 1
	rabbitmq_cookie
	local start=$SECONDS
	log "rabbitmq: starting $RABBITMQ_NODENAME on 127.0.0.1:$RABBITMQ_NODE_PORT"
	# A node left half-started (crashed, port never opened) is stopped first
	# so -detached does not refuse to start a node of the same name.
	rabbitmq_ctl -q --timeout 5 shutdown >/dev/null 2>&1 || true
	(rabbitmq_start) >>"$MQRPC_STATE_DIR/rabbitmq-start.log" 2>&1 || true
	# await_startup first needs the node to exist; wait_port bounds the
	# whole start, since a failed boot never opens the port.
	if ! wait_port 127.0.0.1 "$RABBITMQ_NODE_PORT" 120; then
		log "rabbitmq: did not open 127.0.0.1:$RABBITMQ_NODE_PORT within 120s; see $MQRPC_STATE_DIR/rabbitmq-start.log and /var/log/rabbitmq/"
		return 1
	fi
	if ! rabbitmq_ctl -q --timeout 60 await_startup >/dev/null 2>&1; then
		log "rabbitmq: node did not finish booting"
		return 1
	fi
	log "rabbitmq: up after $((SECONDS - start))s"
}

rabbitmq_down() {
	rabbitmq_env
	if ! command -v rabbitmqctl >/dev/null 2>&1; then
		log "rabbitmq: not installed"
		return 0
	fi
	if ! port_open 127.0.0.1 "$RABBITMQ_NODE_PORT" && ! rabbitmq_ctl -q --timeout 5 ping >/dev/null 2>&1; then
		log "rabbitmq: not running"
		return 0
	fi
	log "rabbitmq: stopping $RABBITMQ_NODENAME"
	rabbitmq_ctl -q --timeout 60 shutdown >/dev/null 2>&1 || rabbitmq_ctl -q --timeout 60 stop >/dev/null 2>&1
}

rabbitmq_status() {
	rabbitmq_env
	if port_open 127.0.0.1 "$RABBITMQ_NODE_PORT"; then
		log "rabbitmq: running on 127.0.0.1:$RABBITMQ_NODE_PORT"
		return 0
	fi
	log "rabbitmq: not running"
	return 1
}
