package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/mqrpc/mqrpc/broker"
)

// ErrNoBroadcast is returned by the discovery functions for a broker
// without the broker.Broadcaster ability.
var ErrNoBroadcast = errors.New("control: the broker cannot broadcast (no broker.Broadcaster)")

// Answer is a control answer: PingResponse, InfoResponse or StatsResponse.
type Answer interface {
	PingResponse | InfoResponse | StatsResponse
}

// Discover sends verb to every instance of every service (name ""), of
// one service, or one instance (id), and returns the answers that arrived
// before ctx ended, sorted by name and ID. The wait is bounded by ctx:
// without a deadline or a cancel, Discover waits for ever, except for one
// instance (id set), where it returns with the first answer. No answer at
// all is an empty result, not an error; answers that are not JSON of the
// verb's type are skipped (a foreign service on the same subject).
func Discover[T Answer](ctx context.Context, b broker.Broker, name, id string) ([]T, error) {
	bc, ok := b.(broker.Broadcaster)
	if !ok {
		return nil, ErrNoBroadcast
	}
	var zero T
	verb, want := Ping, PingResponseType
	switch any(zero).(type) {
	case InfoResponse:
		verb, want = Info, InfoResponseType
	case StatsResponse:
		verb, want = Stats, StatsResponseType
	}
	max := 0
	if id != "" {
		max = 1
	}
	var out []T
	err := bc.Gather(ctx, &broker.Message{Subject: Subject(verb, name, id)}, max, func(m *broker.Message) bool {
		var head struct {
			Type string `json:"type"`
		}
		var v T
		if json.Unmarshal(m.Body, &head) != nil || checkType(head.Type, want) != nil ||
			json.Unmarshal(m.Body, &v) != nil {
			return true
		}
		out = append(out, v)
		return true
	})
	if err != nil && !errors.Is(err, broker.ErrNoResponders) {
		return out, fmt.Errorf("control: %s: %w", Subject(verb, name, id), err)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := identityOf(out[i]), identityOf(out[j])
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.ID < b.ID
	})
	return out, nil
}

func identityOf(v any) Identity {
	switch a := v.(type) {
	case PingResponse:
		return a.Identity
	case InfoResponse:
		return a.Identity
	case StatsResponse:
		return a.Identity
	}
	return Identity{}
}
