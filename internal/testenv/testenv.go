// Package testenv tells tests where the real brokers are and what to do when
// one is missing: skip on a developer machine, fail under CI=true.
package testenv

import (
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

// Environment variables naming broker addresses, with loopback defaults.
const (
	EnvNATS     = "MQRPC_NATS_URL"
	EnvAMQP     = "MQRPC_AMQP_URL"
	EnvRocketMQ = "MQRPC_ROCKETMQ_NAMESRV"
	EnvRedis    = "MQRPC_REDIS_URL"

	DefaultNATS     = "nats://127.0.0.1:4222"
	DefaultAMQP     = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultRocketMQ = "127.0.0.1:9876"
	DefaultRedis    = "redis://127.0.0.1:6379/0"
)

// CI reports whether the tests run under CI (CI=true), where a missing
// broker fails the run instead of skipping.
func CI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

// NATSURL returns the NATS URL for tests, or skips/fails when nothing
// listens there.
func NATSURL(tb testing.TB) string { return need(tb, EnvNATS, DefaultNATS, "nats") }

// AMQPURL returns the RabbitMQ URL for tests, or skips/fails when nothing
// listens there.
func AMQPURL(tb testing.TB) string { return need(tb, EnvAMQP, DefaultAMQP, "rabbitmq") }

// RocketMQNameServer returns the RocketMQ name server address (host:port)
// for tests, or skips/fails when nothing listens there.
func RocketMQNameServer(tb testing.TB) string {
	return need(tb, EnvRocketMQ, DefaultRocketMQ, "rocketmq")
}

// RedisURL returns the Redis URL for tests (the shared Dedup store of
// middleware/dedupstore/redisstore), or skips/fails when nothing listens
// there.
func RedisURL(tb testing.TB) string { return need(tb, EnvRedis, DefaultRedis, "redis") }

// Lookup returns the value of env, or def.
func Lookup(env, def string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}

func need(tb testing.TB, env, def, name string) string {
	tb.Helper()
	addr := Lookup(env, def)
	hostport := addr
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		hostport = u.Host
	}
	if i := strings.IndexByte(hostport, ','); i >= 0 {
		hostport = hostport[:i]
	}
	c, err := net.DialTimeout("tcp", hostport, 2*time.Second)
	if err != nil {
		msg := name + " is not reachable at " + addr + " (" + env + "): " + err.Error() +
			"; start it with: scripts/brokers up " + name
		if CI() {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	_ = c.Close()
	return addr
}
