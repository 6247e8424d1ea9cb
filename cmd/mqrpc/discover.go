package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/rpc"
	"github.com/mqrpc/mqrpc/rpc/control"
)

func (a *app) discoveryFlags(c *cobra.Command) {
	c.Flags().DurationVarP(&a.wait, "wait", "w", time.Second, "how long to gather the answers of the instances")
	c.Flags().BoolVar(&a.jsonOut, "json", false, "print the answers as JSON")
}

// discover gathers the answers of the instances of name (every service
// when name is empty; one instance when id is set), failing with NotFound
// when none answered.
func discover[T control.Answer](a *app, name, id string) ([]T, error) {
	b, err := a.connect()
	if err != nil {
		return nil, err
	}
	defer closeBroker(b)
	ctx, cancel := withTimeout(a.wait)
	defer cancel()
	got, err := control.Discover[T](ctx, b, name, id)
	if errors.Is(err, control.ErrNoBroadcast) {
		return nil, fail(rpc.Unimplemented, "%s has no control plane: %v", dial.Redact(a.brokerURL), err)
	}
	if errors.Is(err, broker.ErrDisconnected) || errors.Is(err, broker.ErrClosed) {
		return nil, fail(rpc.Unavailable, "cannot reach broker %s: %v", dial.Redact(a.brokerURL), err)
	}
	if err != nil {
		return nil, fail(rpc.Unavailable, "%v", err)
	}
	if len(got) == 0 {
		what := "no service instance answered"
		if name != "" {
			what = fmt.Sprintf("no instance of service %q answered", name)
			if id != "" {
				what = fmt.Sprintf("instance %q of service %q did not answer", id, name)
			}
		}
		return nil, fail(rpc.NotFound, "%s within %v (%s)", what, a.wait, control.ServiceUnknown)
	}
	return got, nil
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func serviceArg(args []string, i int) string {
	if len(args) > i {
		return control.Name(args[i])
	}
	return ""
}

func (a *app) lsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "ls [SERVICE]",
		Short: "List services and their instances",
		Example: `  mqrpc ls
  mqrpc ls Calculator --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			pings, err := discover[control.PingResponse](a, serviceArg(args, 0), "")
			if err != nil {
				return err
			}
			if a.jsonOut {
				return a.printJSON(pings)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tID\tVERSION\tSTATUS")
			for _, p := range pings {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.ID, p.Version, orDash(p.Status))
			}
			return tw.Flush()
		},
	}
	a.discoveryFlags(c)
	return c
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) infoCmd() *cobra.Command {
	var schemas bool
	c := &cobra.Command{
		Use:   "info SERVICE [ID]",
		Short: "Show a service's methods, their types and JSON Schemas",
		Example: `  mqrpc info Calculator
  mqrpc info Calculator --schema
  mqrpc info Calculator --json`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(_ *cobra.Command, args []string) error {
			infos, err := discover[control.InfoResponse](a, serviceArg(args, 0), argOr(args, 1))
			if err != nil {
				return err
			}
			if a.jsonOut {
				return a.printJSON(infos)
			}
			ids := make([]string, len(infos))
			for i, in := range infos {
				ids[i] = in.ID
			}
			in := infos[0]
			w := a.out
			fmt.Fprintf(w, "Service:      %s\n", in.Name)
			fmt.Fprintf(w, "Instances:    %d (%s)\n", len(infos), strings.Join(ids, ", "))
			fmt.Fprintf(w, "Version:      %s\n", in.Version)
			if in.Description != "" {
				fmt.Fprintf(w, "Description:  %s\n", in.Description)
			}
			if in.Subject != "" {
				fmt.Fprintf(w, "Subject:      %s\n", in.Subject)
			}
			if len(in.Codecs) > 0 {
				fmt.Fprintf(w, "Codecs:       %s\n", strings.Join(in.Codecs, ", "))
			}
			fmt.Fprintf(w, "Methods:\n")
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			for _, ep := range in.Endpoints {
				if ep.RequestType == "" && ep.ReplyType == "" {
					fmt.Fprintf(tw, "  %s\t(raw bytes)\n", ep.Name)
				} else {
					fmt.Fprintf(tw, "  %s\t%s -> %s\n", ep.Name, orDash(ep.RequestType), orDash(ep.ReplyType))
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if schemas {
				for _, ep := range in.Endpoints {
					for _, s := range []struct {
						what   string
						schema json.RawMessage
					}{{"request", ep.RequestSchema}, {"reply", ep.ReplySchema}} {
						if len(s.schema) == 0 {
							continue
						}
						var v any
						_ = json.Unmarshal(s.schema, &v)
						b, _ := json.MarshalIndent(v, "  ", "  ")
						fmt.Fprintf(w, "\n%s %s schema:\n  %s\n", ep.Name, s.what, b)
					}
				}
			}
			return nil
		},
	}
	a.discoveryFlags(c)
	c.Flags().BoolVar(&schemas, "schema", false, "print the JSON Schemas of requests and replies")
	return c
}

func argOr(args []string, i int) string {
	if len(args) > i {
		return args[i]
	}
	return ""
}

func (a *app) pingCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "ping SERVICE [ID]",
		Short: "Check the health of every instance of a service (grpc.health.v1 meaning)",
		Long: `ping asks every instance of SERVICE for its health and prints each answer
with its round-trip time. An instance is SERVING, or NOT_SERVING while it
drains; a service nobody answers for is SERVICE_UNKNOWN. Exit status 0 when
an instance is SERVING, 14 (Unavailable) when all that answered are
NOT_SERVING, 5 (NotFound) when none answered.`,
		Example: `  mqrpc ping Calculator
  mqrpc ping Calculator -w 3s`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(_ *cobra.Command, args []string) error {
			name, id := serviceArg(args, 0), argOr(args, 1)
			b, err := a.connect()
			if err != nil {
				return err
			}
			defer closeBroker(b)
			bc, ok := b.(broker.Broadcaster)
			if !ok {
				return fail(rpc.Unimplemented, "%s has no control plane: %v", dial.Redact(a.brokerURL), control.ErrNoBroadcast)
			}
			ctx, cancel := withTimeout(a.wait)
			defer cancel()
			max := 0
			if id != "" {
				max = 1
			}
			type answer struct {
				control.PingResponse
				RTT time.Duration `json:"rtt"`
			}
			var got []answer
			start := time.Now()
			err = bc.Gather(ctx, &broker.Message{Subject: control.Subject(control.Ping, name, id)}, max, func(m *broker.Message) bool {
				var p control.PingResponse
				if json.Unmarshal(m.Body, &p) == nil && p.Type == control.PingResponseType {
					got = append(got, answer{p, time.Since(start)})
				}
				return true
			})
			if err != nil && !isNoResponders(err) {
				return fail(rpc.Unavailable, "%v", err)
			}
			if len(got) == 0 {
				return fail(rpc.NotFound, "no instance of service %q answered within %v (%s)", name, a.wait, control.ServiceUnknown)
			}
			serving := 0
			for _, p := range got {
				if p.Status == "" || p.Status == control.Serving {
					serving++ // a micro service without a status serves
				}
			}
			if a.jsonOut {
				if err := a.printJSON(got); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
				for _, p := range got {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.ID, orDefault(p.Status, control.Serving), p.RTT.Round(10*time.Microsecond))
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if serving == 0 {
				return fail(rpc.Unavailable, "no instance of service %q is %s", name, control.Serving)
			}
			return nil
		},
	}
	a.discoveryFlags(c)
	return c
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (a *app) statsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "stats SERVICE [ID]",
		Short: "Show per-method statistics of every instance of a service",
		Example: `  mqrpc stats Calculator
  mqrpc stats Calculator --json | jq '.[].endpoints[] | {name, num_requests}'`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(_ *cobra.Command, args []string) error {
			stats, err := discover[control.StatsResponse](a, serviceArg(args, 0), argOr(args, 1))
			if err != nil {
				return err
			}
			if a.jsonOut {
				return a.printJSON(stats)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "INSTANCE\tMETHOD\tREQUESTS\tERRORS\tIN FLIGHT\tAVERAGE\tTOTAL\tUP\tLAST ERROR")
			for _, s := range stats {
				up := time.Since(s.Started).Round(time.Second)
				for _, ep := range s.Endpoints {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", s.ID, ep.Name, ep.NumRequests, ep.NumErrors,
						ep.InFlight, ep.AverageProcessingTime.Round(time.Microsecond),
						ep.ProcessingTime.Round(time.Microsecond), up, ep.LastError)
				}
			}
			return tw.Flush()
		},
	}
	a.discoveryFlags(c)
	return c
}

func isNoResponders(err error) bool { return errors.Is(err, broker.ErrNoResponders) }
