package cases

import (
	"context"
	"fmt"
	"net"
	"net/rpc"

	"github.com/mqrpc/mqrpc/bench/harness"
)

// EchoService is the net/rpc service of the socket baseline.
type EchoService struct{}

// Echo replies with its argument.
func (EchoService) Echo(args []byte, reply *[]byte) error {
	*reply = args
	return nil
}

// TCP returns the socket baseline: net/rpc (gob) over one TCP connection on
// loopback, shared by all callers as net/rpc multiplexes.
func TCP(Config) []harness.Case {
	return []harness.Case{{
		Group: "tcp", Name: "net/rpc", Role: harness.RoleRaw,
		Setup: func(context.Context) (harness.Target, error) {
			srv := rpc.NewServer()
			if err := srv.RegisterName("EchoService", EchoService{}); err != nil {
				return nil, err
			}
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			// Not srv.Accept, which logs when the listener closes.
			go func() {
				for {
					conn, err := l.Accept()
					if err != nil {
						return
					}
					go srv.ServeConn(conn)
				}
			}()
			cli, err := rpc.Dial("tcp", l.Addr().String())
			if err != nil {
				_ = l.Close()
				return nil, fmt.Errorf("dial %s: %w", l.Addr(), err)
			}
			return &tcpTarget{l: l, cli: cli}, nil
		},
	}}
}

type tcpTarget struct {
	l   net.Listener
	cli *rpc.Client
}

func (t *tcpTarget) Call(ctx context.Context, p []byte) error {
	var rep []byte
	// net/rpc's Call makes the same one-slot channel; making it here lets
	// the wait end with ctx.
	c := t.cli.Go("EchoService.Echo", p, &rep, make(chan *rpc.Call, 1))
	select {
	case <-c.Done:
		if c.Error != nil {
			return c.Error
		}
		return checkEcho(p, rep)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t *tcpTarget) Close() error {
	err := t.cli.Close()
	_ = t.l.Close()
	return err
}
