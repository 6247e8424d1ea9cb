// Package chaos holds mqrpc's chaos tests: steady RPC load over real brokers
// (NATS core and JetStream, RabbitMQ fast and durable, RocketMQ) while the
// broker restarts, a server process is killed mid-request, or poison
// messages arrive, with every call's outcome counted.
//
// The tests are behind the build tag chaos, because they restart brokers:
// the regular go test ./... does not run them. Run them with scripts/chaos
// (see docs/RELIABILITY.md). Each test starts private broker processes of
// its own on loopback (a nats-server, a RabbitMQ node, a RocketMQ name server
// and broker) so a restart never disturbs tests sharing the brokers of
// scripts/brokers.
//
// The non-test files are the harness: private brokers (nodes.go), the load
// generator and its counters (load.go), the server under test, which also
// runs as a child process that a test can SIGKILL (server.go), and the
// summary table (report.go).
package chaos
