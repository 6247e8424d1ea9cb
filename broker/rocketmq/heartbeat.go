package rocketmq

import (
	"reflect"
	"unsafe"
)

// heartbeatFunc returns a function that makes the client behind a
// rocketmq-client-go producer send its heartbeat to every broker it knows,
// or nil when the producer does not have the expected shape.
//
// Why: the broker pushes a reply over the connection it learned from the
// requester's heartbeat. rocketmq-client-go sends the first heartbeat one
// second after start, when it usually knows no broker yet, and then every
// 30 s; RequestAsync heartbeats only for a topic missing from the name
// server. So a fresh requester calling an existing topic is not registered
// and its replies are dropped ("channel of <client> not found") for up to
// 30 s (rocketmq-client-go #1047). The client has the right method
// (SendHeartbeatToAllBrokerWithLock) but keeps it behind an unexported
// field of an internal type; reflection is the only way to reach it. The
// shape is checked, and the reply retry in Broker.reply still covers the
// case where it is missing.
func heartbeatFunc(p any) func() {
	v := reflect.ValueOf(p)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil
	}
	f := v.Elem().FieldByName("client")
	if !f.IsValid() || f.Kind() != reflect.Interface || f.IsNil() {
		return nil
	}
	// The field is unexported: re-create it as an exported value at the
	// same address so its methods can be called.
	f = reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
	m := f.MethodByName("SendHeartbeatToAllBrokerWithLock")
	if !m.IsValid() || m.Type().NumIn() != 0 || m.Type().NumOut() != 0 {
		return nil
	}
	return func() { m.Call(nil) }
}
