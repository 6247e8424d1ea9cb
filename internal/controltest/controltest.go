// Package controltest is rpc/control's conformance cases (discovery,
// info, stats, health while draining), shared by the modules whose brokers
// run them: rpc/control's tests for the brokers of the main module, and
// broker/rocketmq's, a module of its own.
package controltest

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
	"github.com/mqrpc/mqrpc/rpc/control"
)

// AddRequest is the Add method's request.
type AddRequest struct {
	A int `json:"a"`
	B int `json:"b"`
}

// AddReply is the Add method's reply.
type AddReply struct {
	Sum int `json:"sum"`
}

// uniqueName returns a service name no other test run uses, for brokers
// shared among engineers.
func uniqueName(prefix string) string {
	return prefix + "-" + strings.ReplaceAll(broker.NewID(), "-", "_")
}

func newCalc(t *testing.T, block chan struct{}) *rpc.Server {
	srv := rpc.NewServer()
	require.NoError(t, rpc.Handle(srv, "Add", func(_ context.Context, in *AddRequest) (*AddReply, error) {
		return &AddReply{Sum: in.A + in.B}, nil
	}))
	require.NoError(t, rpc.Handle(srv, "Fail", func(context.Context, *AddRequest) (*AddReply, error) {
		return nil, rpc.Errorf(rpc.NotFound, "no such thing")
	}))
	require.NoError(t, rpc.Handle(srv, "Block", func(ctx context.Context, _ *AddRequest) (*AddReply, error) {
		select {
		case <-block:
		case <-ctx.Done():
		}
		return &AddReply{}, nil
	}))
	require.NoError(t, rpc.HandleRaw(srv, "Raw", func(_ context.Context, b []byte) ([]byte, error) { return b, nil }))
	return srv
}

func discoverCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Run runs the control plane's cases on the broker open connects to: each
// call of open is a new connection, as another process would have.
func Run(t *testing.T, open func(t *testing.T) broker.Broker) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	svcName := uniqueName("calc")
	otherName := uniqueName("other")
	block := make(chan struct{})
	var svcs []*control.Service
	for i := 0; i < 2; i++ {
		s, err := newCalc(t, block).Serve(open(t), svcName, control.WithVersion("1.2.3"), control.WithDescription("adds"))
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Stop(ctx) })
		svcs = append(svcs, s)
	}
	other, err := rpc.NewServer().Serve(open(t), otherName)
	require.NoError(t, err)
	t.Cleanup(func() { _ = other.Stop(ctx) })
	hidden, err := newCalc(t, block).Serve(open(t), svcName, control.WithoutControl())
	require.NoError(t, err)
	t.Cleanup(func() { _ = hidden.Stop(ctx) })
	caller := open(t)

	t.Run("ping every instance of one service", func(t *testing.T) {
		pings, err := control.Discover[control.PingResponse](discoverCtx(t), caller, svcName, "")
		require.NoError(t, err)
		require.Len(t, pings, 2, "both instances, not the hidden one nor the other service")
		ids := map[string]bool{svcs[0].ID(): true, svcs[1].ID(): true}
		for _, p := range pings {
			assert.Equal(t, svcName, p.Name)
			assert.Equal(t, "1.2.3", p.Version)
			assert.Equal(t, control.PingResponseType, p.Type)
			assert.Equal(t, control.Serving, p.Status)
			assert.True(t, ids[p.ID], "instance %s", p.ID)
		}
	})
	t.Run("ping every service", func(t *testing.T) {
		pings, err := control.Discover[control.PingResponse](discoverCtx(t), caller, "", "")
		require.NoError(t, err)
		n := 0
		for _, p := range pings {
			if p.Name == svcName || p.Name == otherName {
				n++
			}
		}
		assert.Equal(t, 3, n, "two instances of %s and one of %s among %v", svcName, otherName, pings)
	})
	t.Run("one instance", func(t *testing.T) {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		pings, err := control.Discover[control.PingResponse](ctx, caller, svcName, svcs[1].ID())
		require.NoError(t, err)
		require.Len(t, pings, 1)
		assert.Equal(t, svcs[1].ID(), pings[0].ID)
		assert.Less(t, time.Since(start), 10*time.Second, "returns with the first answer")
	})
	t.Run("unknown service", func(t *testing.T) {
		pings, err := control.Discover[control.PingResponse](discoverCtx(t), caller, uniqueName("nobody"), "")
		require.NoError(t, err)
		assert.Empty(t, pings)
	})
	t.Run("info", func(t *testing.T) {
		infos, err := control.Discover[control.InfoResponse](discoverCtx(t), caller, svcName, svcs[0].ID())
		require.NoError(t, err)
		require.Len(t, infos, 1)
		info := infos[0]
		assert.Equal(t, "adds", info.Description)
		assert.Equal(t, svcName, info.Subject)
		names := []string{}
		for _, ep := range info.Endpoints {
			names = append(names, ep.Name)
		}
		assert.Equal(t, []string{"Add", "Block", "Fail", "Raw"}, names)
		add := info.Endpoints[0]
		assert.Equal(t, "github.com/mqrpc/mqrpc/internal/controltest.AddRequest", add.RequestType)
		assert.Equal(t, "github.com/mqrpc/mqrpc/internal/controltest.AddReply", add.ReplyType)
		var schema struct {
			Type       string                    `json:"type"`
			Properties map[string]map[string]any `json:"properties"`
		}
		require.NoError(t, json.Unmarshal(add.RequestSchema, &schema), "%s", add.RequestSchema)
		assert.Equal(t, "object", schema.Type)
		assert.Equal(t, "integer", schema.Properties["a"]["type"])
		raw := info.Endpoints[3]
		assert.Empty(t, raw.RequestType)
		assert.Nil(t, raw.RequestSchema)
	})
	t.Run("stats", func(t *testing.T) {
		c := rpc.NewClient(caller)
		for i := 0; i < 5; i++ {
			_, err := rpc.Invoke[AddRequest, AddReply](ctx, c, svcName, "Add", &AddRequest{A: 1, B: 2})
			require.NoError(t, err)
		}
		_, err := rpc.Invoke[AddRequest, AddReply](ctx, c, svcName, "Fail", &AddRequest{})
		require.Equal(t, rpc.NotFound, rpc.CodeOf(err))
		stats, err := control.Discover[control.StatsResponse](discoverCtx(t), caller, svcName, "")
		require.NoError(t, err)
		require.Len(t, stats, 2)
		byName := map[string]control.EndpointStats{}
		for _, s := range stats {
			assert.WithinDuration(t, time.Now(), s.Started, time.Minute)
			for _, ep := range s.Endpoints {
				e := byName[ep.Name]
				e.NumRequests += ep.NumRequests
				e.NumErrors += ep.NumErrors
				e.ProcessingTime += ep.ProcessingTime
				if ep.LastError != "" {
					e.LastError = ep.LastError
				}
				byName[ep.Name] = e
			}
		}
		// The hidden instance may have served some of the calls.
		hs := hidden.Stats()
		for _, ep := range hs.Endpoints {
			e := byName[ep.Name]
			e.NumRequests += ep.NumRequests
			e.NumErrors += ep.NumErrors
			byName[ep.Name] = e
		}
		assert.Equal(t, 5, byName["Add"].NumRequests)
		assert.Zero(t, byName["Add"].NumErrors)
		assert.Equal(t, 1, byName["Fail"].NumRequests)
		assert.Equal(t, 1, byName["Fail"].NumErrors)
		if byName["Fail"].LastError != "" { // the hidden instance may have served it
			assert.Equal(t, "NotFound: no such thing", byName["Fail"].LastError)
		}
		assert.Contains(t, byName, "Raw", "described methods are listed before their first call")
	})
	t.Run("health turns NOT_SERVING as draining starts", func(t *testing.T) {
		c := rpc.NewClient(caller)
		// Park calls until one is in flight on svcs[0], so its Stop has
		// something to drain (competing consumers spread them as they
		// will).
		inFlight := func(s *control.Service) int64 {
			for _, ep := range s.Stats().Endpoints {
				if ep.Name == "Block" {
					return ep.InFlight
				}
			}
			return 0
		}
		errs := make(chan error, 100)
		sent := 0
		for ; sent < 100 && inFlight(svcs[0]) == 0; sent++ {
			go func() {
				_, err := rpc.Invoke[AddRequest, AddReply](ctx, c, svcName, "Block", &AddRequest{})
				errs <- err
			}()
			require.Eventually(t, func() bool {
				return inFlight(svcs[0])+inFlight(svcs[1])+inFlight(hidden) == int64(sent+1)
			}, 10*time.Second, 5*time.Millisecond)
		}
		require.NotZero(t, inFlight(svcs[0]), "no call reached svcs[0] in %d", sent)
		stopped := make(chan error, 1)
		go func() { stopped <- svcs[0].Stop(ctx) }()
		require.Eventually(t, func() bool {
			pings, err := control.Discover[control.PingResponse](discoverCtx(t), caller, svcName, svcs[0].ID())
			return err == nil && len(pings) == 1 && pings[0].Status == control.NotServing
		}, 10*time.Second, 50*time.Millisecond, "the draining instance answers NOT_SERVING")
		pings, err := control.Discover[control.PingResponse](discoverCtx(t), caller, svcName, svcs[1].ID())
		require.NoError(t, err)
		require.Len(t, pings, 1)
		assert.Equal(t, control.Serving, pings[0].Status)
		select {
		case err := <-stopped:
			t.Fatalf("Stop returned (%v) with a call in flight", err)
		default:
		}
		close(block)
		require.NoError(t, <-stopped)
		for i := 0; i < sent; i++ {
			require.NoError(t, <-errs)
		}
		pings, err = control.Discover[control.PingResponse](discoverCtx(t), caller, svcName, "")
		require.NoError(t, err)
		require.Len(t, pings, 1, "a stopped instance answers no more")
		assert.Equal(t, svcs[1].ID(), pings[0].ID)
	})
}
