# shellcheck shell=bash
# RocketMQ name server + broker for the tests, sourced by scripts/brokers.
#
# The jars come from Maven Central (org.apache.rocketmq:rocketmq-namesrv and
# rocketmq-broker with their dependencies) through mvn, into a cache under
# $MQRPC_STATE_DIR/rocketmq; a warm cache skips Maven entirely. Both JVMs are
# started directly with a classpath rather than through the stock
# runserver.sh/runbroker.sh, whose CMS/PrintGC flags Java 17 rejects.
#
# Layout under $MQRPC_STATE_DIR/rocketmq:
#   <version>/lib/      the jars (cache; kept across down/up)
#   home/               ROCKETMQ_HOME, broker.conf
#   store/              the broker's store (wiped on down: tests want a clean broker)
#   logs/               namesrv.log, broker.log (stdout/stderr) and RocketMQ's own log files
#   namesrv.pid, broker.pid
#
# Environment knobs: MQRPC_ROCKETMQ_VERSION,
# MQRPC_ROCKETMQ_NAMESRV_HEAP / MQRPC_ROCKETMQ_BROKER_HEAP (JVM -Xmx); their
# defaults and the other JVM flags are in scripts/versions.env.
# MQRPC_ROCKETMQ_KEEP_STORE=1 makes `down` stop only the broker and keep its
# store, and `up` start it on the kept store: a broker restart, which the
# broker/rocketmq tests use to check that clients recover.

rocketmq_version() { printf '%s' "${MQRPC_ROCKETMQ_VERSION:-$ROCKETMQ_VERSION}"; }
rocketmq_dir() { printf '%s' "$MQRPC_STATE_DIR/rocketmq"; }

# rocketmq_fetch: download the jars unless cached. A marker file is written
# only after a complete copy, so an interrupted download is redone.
rocketmq_fetch() {
	local ver dir lib pom
	ver=$(rocketmq_version)
	dir="$(rocketmq_dir)/$ver"
	lib="$dir/lib"
	if [[ -f "$dir/.complete" ]]; then
		return 0
	fi
	command -v mvn >/dev/null || apt_install maven
	command -v java >/dev/null || apt_install openjdk-17-jre-headless
	log "rocketmq: fetching rocketmq-namesrv and rocketmq-broker $ver from Maven Central (first run only)"
	mkdir -p "$dir"
	rm -rf "$lib"
	pom="$dir/pom.xml"
	cat >"$pom" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mqrpc.local</groupId>
  <artifactId>rocketmq-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.rocketmq</groupId><artifactId>rocketmq-namesrv</artifactId><version>$ver</version></dependency>
    <dependency><groupId>org.apache.rocketmq</groupId><artifactId>rocketmq-broker</artifactId><version>$ver</version></dependency>
  </dependencies>
</project>
EOF
	# -B -q: no progress bars; the local repository lives beside the cache so
	# the whole thing is one directory to delete.
	if ! mvn -B -q -f "$pom" -Dmaven.repo.local="$(rocketmq_dir)/m2" \
		org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
		-DoutputDirectory="$lib" -DincludeScope=runtime >"$dir/mvn.log" 2>&1; then
		log "rocketmq: mvn failed; see $dir/mvn.log"
		tail -n 20 "$dir/mvn.log" >&2
		return 1
	fi
	touch "$dir/.complete"
}

rocketmq_pid_alive() {
	local f="$(rocketmq_dir)/$1.pid"
	[[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# rocketmq_registered: ask the name server for the cluster info (remoting
# request code 106, GET_BROKER_CLUSTER_INFO, JSON serialization) and look for
# our broker's address in the answer. Plain bash: no extra JVM per poll.
# Another name server and broker: rocketmq_registered NS_PORT BROKER_ADDR.
rocketmq_registered() {
	local ns_port=${1:-9876} addr=${2:-127.0.0.1:10911} hdr len total out
	hdr='{"code":106,"flag":0,"language":"JAVA","opaque":1,"serializeTypeCurrentRPC":"JSON","version":500}'
	len=${#hdr}
	total=$((4 + len))
	out=$(
		exec 3<>"/dev/tcp/127.0.0.1/$ns_port" || exit 1
		printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((total >> 24 & 255)) $((total >> 16 & 255)) $((total >> 8 & 255)) $((total & 255)))" >&3
		printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' 0 0 $((len >> 8 & 255)) $((len & 255)))" >&3
		printf '%s' "$hdr" >&3
		timeout 0.5 cat <&3 | tr -c '[:print:]' '.'
	) 2>/dev/null || true
	[[ "$out" == *"$addr"* ]]
}

rocketmq_status() {
	local ok=0
	if rocketmq_pid_alive namesrv && port_open 127.0.0.1 9876; then
		log "rocketmq: name server running on 127.0.0.1:9876 (pid $(cat "$(rocketmq_dir)/namesrv.pid"))"
	else
		log "rocketmq: name server not running"
		ok=1
	fi
	if rocketmq_pid_alive broker && port_open 127.0.0.1 10911; then
		if rocketmq_registered; then
			log "rocketmq: broker running on 127.0.0.1:10911, registered (pid $(cat "$(rocketmq_dir)/broker.pid"))"
		else
			log "rocketmq: broker running on 127.0.0.1:10911 but not registered with the name server"
			ok=1
		fi
	else
		log "rocketmq: broker not running"
		ok=1
	fi
	return $ok
}

# rocketmq_java NAME MAINCLASS HEAP ARGS...: start one JVM in the background,
# detached from the terminal, stdout/stderr to logs/NAME.log. The cluster
# profile sets rocketmq_root (its state directory) and rocketmq_ns (its
# name server).
rocketmq_java() {
	local name=$1 main=$2 heap=$3
	shift 3
	local root lib ns
	root=${rocketmq_root:-$(rocketmq_dir)}
	ns=${rocketmq_ns:-127.0.0.1:9876}
	lib="$(rocketmq_dir)/$(rocketmq_version)/lib"
	# -Duser.home: RocketMQ's logback configs write under ${user.home}/logs;
	# pointing it at the state dir keeps the files out of $HOME. The other
	# flags are ROCKETMQ_JVM_FLAGS (scripts/versions.env), split into words.
	local -a flags
	read -r -a flags <<<"$ROCKETMQ_JVM_FLAGS"
	setsid nohup java "${flags[@]}" -Xmx"$heap" \
		-Duser.home="$root" -Drocketmq.home.dir="$root/home" -Drocketmq.client.logRoot="$root/logs" \
		-Drocketmq.namesrv.addr="$ns" \
		-cp "$lib/*" "$main" "$@" </dev/null >"$root/logs/$name.log" 2>&1 &
	echo $! >"$root/$name.pid"
}

# rocketmq_broker_conf CLUSTER NAME NAMESRV PORT STORE: the configuration of
# a master. Small files: a 100 MiB commit log, an index sized for tests, no
# timer wheel (its files are sized for days of delays). Disk checks relaxed
# so a busy shared disk does not make the broker refuse writes; send/pull
# queue waits raised so a loaded two-core machine does not trip the
# broker's flow control ([TIMEOUT_CLEAN_QUEUE] broker busy). Replies are
# pushed to the requester, not also stored in the reply topic
# (storeReplyMessageEnable): nobody reads them there.
rocketmq_broker_conf() {
	cat <<EOF
brokerClusterName=$1
brokerName=$2
brokerId=0
brokerRole=ASYNC_MASTER
flushDiskType=ASYNC_FLUSH
namesrvAddr=$3
brokerIP1=127.0.0.1
listenPort=$4
storePathRootDir=$5
storePathCommitLog=$5/commitlog
mappedFileSizeCommitLog=104857600
maxHashSlotNum=50000
maxIndexNum=200000
timerWheelEnable=false
autoCreateTopicEnable=true
autoCreateSubscriptionGroup=true
diskMaxUsedSpaceRatio=95
waitTimeMillsInSendQueue=5000
waitTimeMillsInPullQueue=10000
storeReplyMessageEnable=false
EOF
}

rocketmq_up() {
	local root t0
	t0=$(date +%s)
	root=$(rocketmq_dir)
	rocketmq_fetch || return 1
	mkdir -p "$root/home/conf" "$root/logs" "$root/store"
	if rocketmq_pid_alive namesrv && port_open 127.0.0.1 9876; then
		log "rocketmq: name server already running"
	else
		if port_open 127.0.0.1 9876; then
			log "rocketmq: 127.0.0.1:9876 is taken by another process; not starting a name server"
			return 1
		fi
		cat >"$root/home/conf/namesrv.conf" <<EOF
listenPort=9876
EOF
		export ROCKETMQ_HOME="$root/home"
		rocketmq_java namesrv org.apache.rocketmq.namesrv.NamesrvStartup "${MQRPC_ROCKETMQ_NAMESRV_HEAP:-$ROCKETMQ_NAMESRV_HEAP}" \
			-c "$root/home/conf/namesrv.conf"
		if ! wait_port 127.0.0.1 9876 60; then
			log "rocketmq: name server did not start; see $root/logs/namesrv.log"
			tail -n 20 "$root/logs/namesrv.log" >&2
			return 1
		fi
	fi
	if rocketmq_pid_alive broker && port_open 127.0.0.1 10911; then
		log "rocketmq: broker already running"
	else
		if port_open 127.0.0.1 10911; then
			log "rocketmq: 127.0.0.1:10911 is taken by another process; not starting a broker"
			return 1
		fi
		if [[ "${MQRPC_ROCKETMQ_KEEP_STORE:-}" != 1 ]]; then
			rm -rf "$root/store"
		fi
		mkdir -p "$root/store"
		{
			rocketmq_broker_conf DefaultCluster broker-a 127.0.0.1:9876 10911 "$root/store"
			echo deleteWhen=04
			echo fileReservedTime=1
		} >"$root/home/conf/broker.conf"
		export ROCKETMQ_HOME="$root/home"
		rocketmq_java broker org.apache.rocketmq.broker.BrokerStartup "${MQRPC_ROCKETMQ_BROKER_HEAP:-$ROCKETMQ_BROKER_HEAP}" \
			-c "$root/home/conf/broker.conf"
		if ! wait_port 127.0.0.1 10911 90; then
			log "rocketmq: broker did not start; see $root/logs/broker.log"
			tail -n 20 "$root/logs/broker.log" >&2
			return 1
		fi
	fi
	local i
	for ((i = 0; i < 120; i++)); do
		if rocketmq_registered; then
			log "rocketmq: up (name server 127.0.0.1:9876, broker 127.0.0.1:10911) in $(($(date +%s) - t0))s"
			return 0
		fi
		sleep 0.5
	done
	log "rocketmq: broker never registered with the name server; see $root/logs"
	return 1
}

rocketmq_stop_one() {
	local name=$1 f pid i
	f="$(rocketmq_dir)/$name.pid"
	[[ -f "$f" ]] || return 0
	pid=$(cat "$f")
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "rocketmq: $name (pid $pid) ignored SIGTERM for 20s; killing it"
			kill -9 "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$f"
}

rocketmq_down() {
	# Broker first, so it does not spend its shutdown retrying the name server.
	rocketmq_stop_one broker
	if [[ "${MQRPC_ROCKETMQ_KEEP_STORE:-}" == 1 ]]; then
		log "rocketmq: broker down (name server and store kept)"
		return 0
	fi
	rocketmq_stop_one namesrv
	rm -rf "$(rocketmq_dir)/store"
	log "rocketmq: down"
}
