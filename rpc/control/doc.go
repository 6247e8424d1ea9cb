// Package control is mqrpc's control plane: every served instance of a
// service answers PING, INFO and STATS requests, and a caller gathers the
// answers of every instance, on any broker that has the
// [broker.Broadcaster] ability (broker/memory, broker/nats, broker/amqp,
// broker/rocketmq).
//
// The requests and answers are those of the NATS micro protocol: the
// subjects are $SRV.<VERB>, $SRV.<VERB>.<name> and $SRV.<VERB>.<name>.<id>,
// the answers are JSON documents of type io.nats.micro.v1.ping_response,
// info_response and stats_response, with mqrpc's additions (health status,
// request and reply types, JSON Schemas, requests in flight) in fields of
// their own. So on NATS, natscli's `nats micro ls|info|stats` shows mqrpc
// services, and mqrpc's CLI (cmd/mqrpc) shows nats.go micro services.
//
// Serve starts a service with its control plane:
//
//	srv := rpc.NewServer()
//	rpc.Handle(srv, "Add", add)
//	svc, err := control.Serve(b, "Calculator", srv, control.WithVersion("1.2.0"))
//	defer svc.Stop(ctx) // NOT_SERVING at once, then drains
//
// rpc.Server.Serve does the same with the control plane on by default.
// Health has grpc.health.v1's meaning: an instance is SERVING until its
// Stop begins, and NOT_SERVING while it drains; a service no instance
// answers for is SERVICE_UNKNOWN to the caller.
//
// docs/PROTOCOL.md ("Control plane") has the wire format on every broker.
package control
