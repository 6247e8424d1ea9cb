package rocketmq

import (
	"errors"
	"reflect"
	"unsafe"
)

// clientHooks reaches two methods of the client behind a rocketmq-client-go
// producer that the library keeps behind an unexported field of an internal
// type. Either may be nil when the producer does not have the expected
// shape (another client version); callers then fall back to slower paths.
//
// Why they are needed: the broker pushes a reply over the connection it
// learned from the requester's heartbeat. rocketmq-client-go sends its first
// heartbeat one second after start, when it usually knows no broker yet,
// then every 30 s; RequestAsync heartbeats only for a topic missing from the
// name server. So a fresh requester calling an existing topic is not
// registered, and the broker drops its replies ("channel of <client> not
// found") for up to 30 s (rocketmq-client-go #1047). Before the first
// request to a topic, Broker looks the topic up (which teaches the client
// the topic's brokers) and heartbeats, so the first reply finds its way.
// The topic lookup also tells Serve whether a topic exists without starting
// (and leaking) a consumer that fails for want of it.
type clientHooks struct {
	// heartbeat sends the client's heartbeat to every broker it knows.
	heartbeat func()
	// lookup fetches the topic's route from the name server (or the
	// client's cache) and remembers its brokers; it fails when the topic
	// does not exist.
	lookup func(topic string) error
	// refresh asks the name server for the routes of every topic the
	// client uses and rebalances its consumers (a consumer's client only).
	refresh func()
}

func hooksOf(p any) clientHooks {
	var h clientHooks
	v := reflect.ValueOf(p)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return h
	}
	f := v.Elem().FieldByName("client")
	if !f.IsValid() || f.Kind() != reflect.Interface || f.IsNil() {
		return h
	}
	// The field is unexported: re-create it as an exported value at the
	// same address so its (exported) methods can be called.
	client := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
	if m := client.MethodByName("SendHeartbeatToAllBrokerWithLock"); m.IsValid() && m.Type().NumIn() == 0 && m.Type().NumOut() == 0 {
		h.heartbeat = func() { m.Call(nil) }
	}
	update, rebalance := client.MethodByName("UpdateTopicRouteInfo"), client.MethodByName("RebalanceImmediately")
	if update.IsValid() && update.Type().NumIn() == 0 && rebalance.IsValid() && rebalance.Type().NumIn() == 0 {
		h.refresh = func() {
			update.Call(nil)
			rebalance.Call(nil)
		}
	}
	getNS := client.MethodByName("GetNameSrv")
	if !getNS.IsValid() || getNS.Type().NumIn() != 0 || getNS.Type().NumOut() != 1 {
		return h
	}
	errType := reflect.TypeOf((*error)(nil)).Elem()
	h.lookup = func(topic string) error {
		ns := getNS.Call(nil)[0]
		if ns.Kind() == reflect.Interface && ns.IsNil() {
			return errors.New("rocketmq: client has no name server")
		}
		m := ns.MethodByName("FetchPublishMessageQueues")
		if !m.IsValid() || m.Type().NumIn() != 1 || m.Type().In(0).Kind() != reflect.String ||
			m.Type().NumOut() != 2 || m.Type().Out(1) != errType {
			return nil // unknown shape: assume it exists, the slow paths cope
		}
		out := m.Call([]reflect.Value{reflect.ValueOf(topic)})
		if err, _ := out[1].Interface().(error); err != nil {
			return err
		}
		return nil
	}
	return h
}

// heartbeatFunc is hooksOf(p).heartbeat, for the benchmarks' raw client.
func heartbeatFunc(p any) func() { return hooksOf(p).heartbeat }
