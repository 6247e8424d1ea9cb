package cases

import (
	"context"

	"github.com/mqrpc/mqrpc/bench/harness"
	"github.com/mqrpc/mqrpc/broker/memory"
)

// Memory returns the in-process cases: a direct handler call with the
// codec (the baseline of the memory group) and mqrpc over broker/memory.
func Memory(cfg Config) []harness.Case {
	return []harness.Case{
		{
			Group: "memory", Name: "direct call + codec", Role: harness.RoleRaw,
			Setup: func(context.Context) (harness.Target, error) { return directTarget{cd: cfg.Codec}, nil },
		},
		{
			Group: "memory", Name: "mqrpc", Role: harness.RoleMQRPC, NoTarget: true,
			Setup: func(context.Context) (harness.Target, error) {
				srvB := memory.New()
				cliB := srvB.Connect()
				return newMQRPC(cfg.Codec, cliB, srvB, subject("mqbench"), cliB.Close, srvB.Close)
			},
		},
	}
}
