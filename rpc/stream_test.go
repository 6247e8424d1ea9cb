package rpc_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/codec"
	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
	msgpackcodec "github.com/mqrpc/mqrpc/codec/msgpack"
	"github.com/mqrpc/mqrpc/rpc"
)

// copyingBroker is a memory connection whose Post copies the body and says
// so (stream.BodyCopier, as broker/nats): the stream engine then reuses
// its buffers as soon as Post returns.
type copyingBroker struct{ *memory.Broker }

func (c copyingBroker) Post(ctx context.Context, addr string, m *broker.Message) error {
	cp := *m
	cp.Body = append([]byte(nil), m.Body...)
	return c.Broker.Post(ctx, addr, &cp)
}

func (copyingBroker) PostCopiesBody() bool { return true }

type payload struct {
	I    int    `json:"i" msgpack:"i"`
	Data string `json:"d" msgpack:"d"`
}

func payloadOf(i int) *payload {
	return &payload{I: i, Data: strings.Repeat(fmt.Sprint(i%10), i%301)}
}

// TestStreamMessagesIntact: every typed message arrives as sent, in order,
// with a codec that encodes into the stream's reused buffers
// (codec.Appender: msgpack) and one that does not (json), on a broker
// whose Post copies (the buffers are reused once posted) and one whose
// Post shares the body (reused once copied into a batch frame).
func TestStreamMessagesIntact(t *testing.T) {
	for _, cd := range []codec.Codec{msgpackcodec.Codec{}, jsoncodec.Codec{}} {
		for _, copying := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/copying=%v", cd.Name(), copying), func(t *testing.T) {
				root := memory.New()
				defer root.Close()
				srv := rpc.NewServer(rpc.WithCodec(cd))
				require.NoError(t, rpc.HandleBidiStream(srv, "Echo", func(_ context.Context, st *rpc.ServerStream[payload, payload]) error {
					for {
						in, err := st.Recv()
						if err == io.EOF {
							return nil
						}
						if err != nil {
							return err
						}
						if err := st.Send(in); err != nil {
							return err
						}
					}
				}))
				sb := root.Connect()
				var cb broker.Broker = root.Connect()
				if copying {
					cb = copyingBroker{cb.(*memory.Broker)}
				}
				sub, err := sb.Serve("svc", srv)
				require.NoError(t, err)
				defer sub.Stop(context.Background())
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				st, err := rpc.OpenStream[payload, payload](ctx, rpc.NewClient(cb, rpc.WithCodec(cd)), "svc", "Echo")
				require.NoError(t, err)
				defer st.Close()
				const n = 3000
				sent := make(chan error, 1)
				go func() {
					for i := 0; i < n; i++ {
						if err := st.Send(payloadOf(i)); err != nil {
							sent <- err
							return
						}
					}
					sent <- st.CloseSend()
				}()
				for i := 0; ; i++ {
					res, err := st.Recv()
					if err == io.EOF {
						require.Equal(t, n, i)
						break
					}
					require.NoError(t, err)
					require.Equal(t, payloadOf(i), res, "message %d", i)
				}
				require.NoError(t, <-sent)
			})
		}
	}
}

// TestStreamMessageTooLarge: a message over the size limit is refused by
// send with ResourceExhausted, and the stream goes on.
func TestStreamMessageTooLarge(t *testing.T) {
	for _, cd := range []codec.Codec{msgpackcodec.Codec{}, jsoncodec.Codec{}} {
		t.Run(cd.Name(), func(t *testing.T) {
			b := memory.New()
			defer b.Close()
			srv := rpc.NewServer(rpc.WithCodec(cd), rpc.WithMaxMessageSize(100))
			require.NoError(t, rpc.HandleServerStream(srv, "List", func(_ context.Context, _ *payload, send func(*payload) error) error {
				if err := send(payloadOf(1)); err != nil {
					return err
				}
				err := send(&payload{Data: strings.Repeat("x", 200)})
				if rpc.CodeOf(err) != rpc.ResourceExhausted {
					return fmt.Errorf("send of a large message: %v", err)
				}
				return send(payloadOf(2))
			}))
			sub, err := b.Serve("svc", srv)
			require.NoError(t, err)
			defer sub.Stop(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var got []*payload
			for res, err := range rpc.InvokeServerStream[payload, payload](ctx, rpc.NewClient(b, rpc.WithCodec(cd)), "svc", "List", &payload{}) {
				require.NoError(t, err)
				got = append(got, res)
			}
			assert.Equal(t, []*payload{payloadOf(1), payloadOf(2)}, got)
		})
	}
}
