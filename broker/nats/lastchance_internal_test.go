package nats

import (
	"context"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// A suspect on its last start (one more crash dead-letters it) runs only
// in the suspect lane, never beside other suspects after laneWait: a crash
// of a request running beside it would otherwise be charged to it and
// dead-letter it (healthy requests dead-lettered with a poison whose
// redeliveries ran beside them, issue 17). Its process's lane is held here
// for longer than laneWait; the request starts only once it is free.
func TestSuspectLastStartRunsOnlyInTheLane(t *testing.T) {
	url := testenv.NATSURL(t)
	id := strings.ReplaceAll(broker.NewID(), "-", "_")
	js := JetStreamConfig{
		Stream:           "MQRPCTEST_" + id,
		SubjectPrefix:    "mqrpctest_" + id + ".q",
		DeadLetterPrefix: "mqrpctest_" + id + ".dead",
		AckWait:          time.Second,
		MaxDeliver:       5,
		MemoryStorage:    true,
	}
	nc, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	jsc, err := jetstream.New(nc)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = jsc.DeleteStream(ctx, js.Stream)
		_ = jsc.DeleteStream(ctx, js.Stream+"_DEAD")
		_ = jsc.DeleteKeyValue(ctx, js.Stream+"_DELIVERIES")
	})
	newB := func() *Broker {
		b, err := New(url, WithJetStream(js))
		require.NoError(t, err)
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const subj = "lastchance"

	// The first server takes the request and "dies" mid-request.
	dying := newB()
	started := make(chan struct{}, 1)
	_, err = dying.Serve(subj, broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}))
	require.NoError(t, err)
	require.NoError(t, newB().Send(ctx, &broker.Message{ID: "r1", Subject: subj, Body: []byte("x")}))
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("the request was not delivered")
	}

	// Its record says it already started MaxDeliver-1 times, the last one
	// still running: the next start is its last.
	st, err := jsc.Stream(ctx, js.Stream)
	require.NoError(t, err)
	raw, err := st.GetLastMsgForSubject(ctx, js.SubjectPrefix+"."+subj)
	require.NoError(t, err)
	md := &jetstream.MsgMetadata{Timestamp: raw.Time}
	md.Sequence.Stream = raw.Sequence
	kv, err := dying.js.deliveries(ctx)
	require.NoError(t, err)
	_, err = kv.Create(ctx, recordKey(md), []byte("4 running"))
	require.NoError(t, err)
	require.NoError(t, dying.Close())

	leave, alone, err := suspectLane.Enter(ctx, time.Second)
	require.NoError(t, err)
	require.True(t, alone)
	lanePassed := make(chan struct{})
	ran := make(chan bool, 1)
	_, err = newB().Serve(subj, broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		select {
		case <-lanePassed:
			ran <- true
		default:
			ran <- false
		}
		return nil, nil
	}))
	require.NoError(t, err)

	select {
	case <-ran:
		t.Fatal("the last start ran outside the suspect lane, beside another suspect")
	case <-time.After(2*laneWait + 2*time.Second):
	}
	close(lanePassed)
	leave()
	select {
	case inLane := <-ran:
		assert.True(t, inLane)
	case <-ctx.Done():
		t.Fatal("the last start never ran once the lane was free")
	}
}
