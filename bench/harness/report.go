package harness

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Environment describes the machine and the brokers a run measured.
type Environment struct {
	CPU, Memory, Kernel, Go string
	NumCPU                  int
	// Codec is the media type of the codec mqrpc used.
	Codec string
	// Revision names the mqrpc source measured (a commit), if known.
	Revision string
	// Brokers maps a group to the version of its broker server.
	Brokers map[string]string
}

// Fill reads the machine's description from the runtime and /proc.
func (e *Environment) Fill() {
	e.NumCPU = runtime.NumCPU()
	e.Go = runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
	e.CPU = procField("/proc/cpuinfo", "model name")
	if kb := procField("/proc/meminfo", "MemTotal"); kb != "" {
		var n int64
		if _, err := fmt.Sscanf(kb, "%d", &n); err == nil {
			e.Memory = fmt.Sprintf("%.1f GiB", float64(n)/(1<<20))
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
}

func procField(path, name string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Report renders Results as text, Markdown and SVG.
type Report struct {
	Results *Results
	Env     Environment
	// Command is the command line that produced the results.
	Command string
}

// TargetRatio is the ratio mqrpc must reach against its broker's raw client at
// concurrency 1 and 64.
const TargetRatio = 0.9

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

func dur(d time.Duration) string {
	switch {
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	case d >= 10*time.Microsecond:
		return fmt.Sprintf("%.0f µs", float64(d)/1e3)
	}
	return fmt.Sprintf("%.1f µs", float64(d)/1e3)
}

func rate(r float64) string {
	switch {
	case r >= 100:
		return fmt.Sprintf("%.0f", r)
	case r >= 10:
		return fmt.Sprintf("%.1f", r)
	}
	return fmt.Sprintf("%.2f", r)
}

// baseline returns the raw cell of c's group at c's concurrency and size.
func (r *Results) baseline(c *Cell) *Cell {
	for _, cs := range r.Cases {
		if cs.Group == c.Group && cs.Role == RoleRaw {
			return r.Cells[Key{Group: c.Group, Name: cs.Name, Conc: c.Conc, Size: c.Size}]
		}
	}
	return nil
}

// Ratio returns c's throughput relative to its group's raw baseline, and
// false when the group has no baseline (or c is it).
//
// With several rounds it is the median of the per-round ratios: each
// round's slices of c and of its baseline ran seconds apart, so a round's
// ratio is a paired measurement, and the median of them ignores the one
// round a burst on the shared machine hit one side of, which the ratio of
// the totals does not. With one round it is the ratio of the totals.
func (r *Results) Ratio(c *Cell) (float64, bool) {
	b := r.baseline(c)
	if b == nil || b == c || b.Throughput() == 0 {
		return 0, false
	}
	if rr := r.roundRatios(c); len(rr) >= 2 {
		return median(rr), true
	}
	return c.Throughput() / b.Throughput(), true
}

// median returns the median of sorted, which is not empty.
func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// roundRatios returns the per-round ratios of c to its baseline, sorted.
func (r *Results) roundRatios(c *Cell) []float64 {
	b := r.baseline(c)
	if b == nil || b == c {
		return nil
	}
	var out []float64
	for i := range c.PerRound {
		if i < len(b.PerRound) && b.PerRound[i] > 0 {
			out = append(out, c.PerRound[i]/b.PerRound[i])
		}
	}
	sort.Float64s(out)
	return out
}

// Text returns the result tables as plain text for a terminal.
func (rp *Report) Text() string {
	var sb strings.Builder
	r := rp.Results
	for _, stream := range []bool{false, true} {
		var groups []string
		for _, g := range r.Groups() {
			if r.isStreamGroup(g) == stream {
				groups = append(groups, g)
			}
		}
		if len(groups) == 0 {
			continue
		}
		// A stream case's cells count messages, its c is the number of
		// streams and its latency that of a whole stream.
		unit, per := "calls/s", "call"
		if stream {
			unit, per = "msgs/s", "msg"
		}
		for _, size := range r.Config.Sizes {
			fmt.Fprintf(&sb, "\npayload %s\n", sizeName(size))
			fmt.Fprintf(&sb, "%-15s %-38s %4s %11s %9s %9s %9s %10s %7s %7s %s\n", "broker", "case", "c", unit, "p50", "p99", "cpu/"+per, "brokercpu", "allocs", "ratio", "errors")
			for _, g := range groups {
				for _, c := range r.Sorted(g, size) {
					ratio := ""
					if x, ok := r.Ratio(c); ok {
						ratio = fmt.Sprintf("%.2f", x)
					}
					errs := ""
					if c.Errors > 0 {
						errs = fmt.Sprintf("%d (%s)", c.Errors, c.FirstErr)
					}
					fmt.Fprintf(&sb, "%-15s %-38s %4d %11.0f %9s %9s %9s %10s %7.1f %7s %s\n", c.Group, c.Name, c.Conc, c.Throughput(),
						dur(c.Hist.Quantile(0.5)), dur(c.Hist.Quantile(0.99)), dur(c.CPUPerCall()), brokerCPU(c), c.AllocsPerCall(), ratio, errs)
				}
			}
		}
	}
	for _, s := range r.Skipped {
		fmt.Fprintf(&sb, "\nSKIPPED %s / %s: %s", s.Group, s.Name, s.Reason)
	}
	if len(r.Skipped) > 0 {
		sb.WriteString("\n")
	}
	return sb.String()
}

// Markers delimit the part of the Markdown file that mqbench rewrites.
const (
	BeginMarker = "<!-- mqbench:begin (generated by bench/cmd/mqbench; edits inside are overwritten) -->"
	EndMarker   = "<!-- mqbench:end -->"
)

// Markers delimit the part of the Markdown file that mqbench rewrites
// with the stream cases' results.
const (
	StreamsBeginMarker = "<!-- mqbench:streams:begin (generated by bench/cmd/mqbench; edits inside are overwritten) -->"
	StreamsEndMarker   = "<!-- mqbench:streams:end -->"
)

// WriteMarkdown writes the report into path: the request-reply results
// between BeginMarker and EndMarker and the stream results between
// StreamsBeginMarker and StreamsEndMarker, each only when the run measured
// such cases, so that a run of the stream cases alone keeps the
// request-reply results of an earlier run, and the other way round. The
// text around the markers is kept; a region whose markers are missing is
// added at the end, and a file without any marker is written anew. svgPath,
// when set, is linked as the chart.
func (rp *Report) WriteMarkdown(path, svgPath string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	s := string(old)
	if !strings.Contains(s, BeginMarker) && !strings.Contains(s, StreamsBeginMarker) {
		s = "# Benchmarks\n"
	}
	if gen := rp.Markdown(svgPath, filepath.Dir(path)); gen != "" {
		s = replaceRegion(s, BeginMarker, EndMarker, gen)
	}
	if gen := rp.StreamsMarkdown(); gen != "" {
		s = replaceRegion(s, StreamsBeginMarker, StreamsEndMarker, gen)
	}
	return os.WriteFile(path, []byte(s), 0o644)
}

// replaceRegion puts gen between begin and end in s, or adds the region
// at the end of s when s lacks the markers.
func replaceRegion(s, begin, end, gen string) string {
	i := strings.Index(s, begin)
	j := strings.Index(s, end)
	if i < 0 || j < i {
		return strings.TrimRight(s, "\n") + "\n\n" + begin + "\n" + gen + end + "\n"
	}
	return s[:i] + begin + "\n" + gen + end + s[j+len(end):]
}

// casesOf returns the stream cases of r (stream) or its request-reply
// cases, in order.
func (r *Results) casesOf(stream bool) []Case {
	var out []Case
	for _, c := range r.Cases {
		if c.IsStream() == stream {
			out = append(out, c)
		}
	}
	return out
}

// isStreamGroup reports whether group g holds stream cases.
func (r *Results) isStreamGroup(g string) bool {
	for _, c := range r.Cases {
		if c.Group == g {
			return c.IsStream()
		}
	}
	return false
}

// Markdown returns the generated request-reply part of docs/BENCHMARKS.md,
// or "" when the run measured no request-reply case. relTo is the
// directory the chart link is relative to.
func (rp *Report) Markdown(svgPath, relTo string) string {
	var sb strings.Builder
	r := rp.Results
	e := rp.Env
	unary := r.casesOf(false)
	if len(unary) == 0 {
		return ""
	}
	fmt.Fprintf(&sb, "\nRun of %s, %s in all; %d rounds of %v per case, concurrency and size, interleaved; codec %s.\n\n",
		r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Took.Round(time.Second), r.Config.Rounds, r.Config.Slice, e.Codec)
	sb.WriteString("```\n" + rp.Command + "\n```\n\n")
	if e.Revision != "" {
		fmt.Fprintf(&sb, "mqrpc revision measured: %s.\n\n", e.Revision)
	}
	sb.WriteString("| machine | |\n|---|---|\n")
	fmt.Fprintf(&sb, "| CPU | %s, %d cores (nproc) |\n| memory | %s |\n| OS | %s |\n| Go | %s |\n", e.CPU, e.NumCPU, e.Memory, e.Kernel, e.Go)
	groups := make([]string, 0, len(e.Brokers))
	for g := range e.Brokers {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	for _, g := range groups {
		fmt.Fprintf(&sb, "| %s | %s |\n", g, e.Brokers[g])
	}
	sb.WriteString("\nBrokers, servers and callers all run on this one machine, on loopback; every server is in the benchmark's own process.\n")

	writeSkipped(&sb, r.Skipped, false)

	if svgPath != "" {
		rel, err := filepath.Rel(relTo, svgPath)
		if err != nil {
			rel = svgPath
		}
		fmt.Fprintf(&sb, "\n![Throughput against concurrency](%s)\n", filepath.ToSlash(rel))
	}

	// Summary: ratio to the baseline per case, size and concurrency.
	sb.WriteString("\n### Throughput ratio to the baseline of the same broker\n\n")
	fmt.Fprintf(&sb, "The baseline is the broker's raw client (memory: a direct handler call with the codec). Target: mqrpc ≥ %.1f at c=1 and c=64 on every broker (✗: missed; ⚠: calls failed in this cell, see the details below). Rows without a target: the memory broker's, whose baseline is a function call, and the typed rows, which run a codec that the raw clients do not. In brackets: lowest and highest ratio of the single rounds.\n\n", TargetRatio)
	sb.WriteString("| broker | case |")
	for _, size := range r.Config.Sizes {
		for _, c := range r.Config.Concurrency {
			fmt.Fprintf(&sb, " %s c=%d |", sizeName(size), c)
		}
	}
	sb.WriteString("\n|---|---|")
	for range r.Config.Sizes {
		for range r.Config.Concurrency {
			sb.WriteString("---|")
		}
	}
	sb.WriteString("\n")
	for _, cs := range unary {
		if cs.Role == RoleRaw {
			continue
		}
		fmt.Fprintf(&sb, "| %s | %s |", cs.Group, cs.Name)
		for _, size := range r.Config.Sizes {
			for _, conc := range r.Config.Concurrency {
				c := r.Cells[Key{Group: cs.Group, Name: cs.Name, Conc: conc, Size: size}]
				x, ok := 0.0, false
				if c != nil {
					x, ok = r.Ratio(c)
				}
				if !ok {
					sb.WriteString(" – |")
					continue
				}
				mark := ""
				if cs.Role == RoleMQRPC && !cs.NoTarget && (conc == 1 || conc == 64) && x < TargetRatio {
					mark = " ✗"
				}
				rr := r.roundRatios(c)
				spread := ""
				if len(rr) > 1 {
					spread = fmt.Sprintf(" [%.2f–%.2f]", rr[0], rr[len(rr)-1])
				}
				if b := r.baseline(c); c.Errors > 0 || (b != nil && b.Errors > 0) {
					mark += " ⚠ errors"
				}
				fmt.Fprintf(&sb, " **%.2f**%s%s |", x, spread, mark)
			}
		}
		sb.WriteString("\n")
	}

	// Details: one row per case and size, the concurrencies side by side.
	concs := r.Config.Concurrency
	lo, hi := concs[0], concs[len(concs)-1]
	sb.WriteString("\n### Details\n\n")
	fmt.Fprintf(&sb, "Calls/s at each concurrency; p99 latency, CPU/call and broker CPU/call at c=%d · c=%d.\n\n", lo, hi)
	fmt.Fprintf(&sb, "| broker | case | size | calls/s (c=%s) | p99 | CPU/call | broker CPU/call | allocs/call | errors |\n|---|---|--:|--:|--:|--:|--:|--:|--:|\n",
		joinInts(concs, " · "))
	for _, size := range r.Config.Sizes {
		for _, cs := range unary {
			cells := make([]*Cell, len(concs))
			errs, found := 0, false
			firstErr := ""
			for i, conc := range concs {
				cells[i] = r.Cells[Key{Group: cs.Group, Name: cs.Name, Conc: conc, Size: size}]
				if c := cells[i]; c != nil {
					found = true
					errs += int(c.Errors)
					if firstErr == "" {
						firstErr = c.FirstErr
					}
				}
			}
			if !found {
				continue
			}
			pair := func(f func(*Cell) string) string {
				a, b := "–", "–"
				if c := cells[0]; c != nil {
					a = f(c)
				}
				if c := cells[len(cells)-1]; c != nil {
					b = f(c)
				}
				return a + " · " + b
			}
			rates := make([]string, len(cells))
			allocs := "–"
			for i, c := range cells {
				rates[i] = "–"
				if c != nil {
					rates[i] = rate(c.Throughput())
					allocs = fmt.Sprintf("%.1f", c.AllocsPerCall())
				}
			}
			e := fmt.Sprint(errs)
			if errs > 0 {
				e += " (" + oneLine(firstErr) + ")"
			}
			fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", cs.Group, cs.Name, sizeName(size),
				strings.Join(rates, " · "),
				pair(func(c *Cell) string { return dur(c.Hist.Quantile(0.99)) }),
				pair(func(c *Cell) string { return dur(c.CPUPerCall()) }),
				pair(brokerCPU), allocs, e)
		}
	}
	sb.WriteString("\nCPU/call and allocs/call are the CPU time (user + system) and the heap allocations of the benchmark process during the measurement, divided by the calls: caller, broker client and server together. Broker CPU/call is the CPU time of the broker server's own processes (nats-server; RabbitMQ's Erlang VM; RocketMQ's broker and name server), read from /proc in 10 ms ticks, divided by the calls; – where there is no broker process. On a loaded machine these are steadier than calls/s.\n\n")
	return sb.String()
}

// writeSkipped lists the cases of skipped that are stream cases (stream)
// or request-reply cases.
func writeSkipped(sb *strings.Builder, skipped []Skipped, stream bool) {
	head := false
	for _, s := range skipped {
		if s.Stream != stream {
			continue
		}
		if !head {
			sb.WriteString("\n**Not measured in this run:**\n\n")
			head = true
		}
		fmt.Fprintf(sb, "- %s / %s: %s\n", s.Group, s.Name, oneLine(s.Reason))
	}
}

// StreamTargetRatio is the ratio a stream of mqrpc's engine must reach
// against the broker's raw client publishing the same messages.
const StreamTargetRatio = 0.8

// StreamsMarkdown returns the generated stream part of docs/BENCHMARKS.md,
// or "" when the run measured no stream case: for every stream case the
// messages/s at each message size and number of streams and, beside the
// raw client of its broker, the ratio to it.
func (rp *Report) StreamsMarkdown() string {
	r := rp.Results
	cases := r.casesOf(true)
	if len(cases) == 0 {
		return ""
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nRun of %s; %d rounds of %v per case, size and number of streams, interleaved",
		r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Config.Rounds, r.Config.Slice)
	if rp.Env.Revision != "" {
		fmt.Fprintf(&sb, "; mqrpc revision %s", rp.Env.Revision)
	}
	sb.WriteString(".\n\n```\n" + rp.Command + "\n```\n")
	writeSkipped(&sb, r.Skipped, true)
	fmt.Fprintf(&sb, "\nMessages/s received, and in bold the ratio to the raw client of the same broker: the median of the rounds' ratios, lowest and highest in brackets. Target: ≥ %.1f for broker/stream (✗: missed; ⚠: failed calls). CPU and allocations per message are the benchmark process's at %s × %d.\n\n",
		StreamTargetRatio, sizeName(r.Config.Sizes[0]), r.Config.Streams[0])
	sb.WriteString("| broker | case |")
	for _, size := range r.Config.Sizes {
		for _, n := range r.Config.Streams {
			fmt.Fprintf(&sb, " %s × %d |", sizeName(size), n)
		}
	}
	sb.WriteString(" CPU, allocs /msg |\n|---|---|")
	for range r.Config.Sizes {
		for range r.Config.Streams {
			sb.WriteString("--:|")
		}
	}
	sb.WriteString("--:|\n")
	for _, cs := range cases {
		group, _, _ := strings.Cut(cs.Group, "-")
		fmt.Fprintf(&sb, "| %s | %s |", group, cs.Name)
		for _, size := range r.Config.Sizes {
			for _, n := range r.Config.Streams {
				c := r.Cells[Key{Group: cs.Group, Name: cs.Name, Conc: n, Size: size}]
				if c == nil {
					sb.WriteString(" – |")
					continue
				}
				sb.WriteString(" ")
				if x, ok := r.Ratio(c); ok {
					fmt.Fprintf(&sb, "**%.2f**", x)
					if rr := r.roundRatios(c); len(rr) > 1 {
						fmt.Fprintf(&sb, " [%.2f–%.2f]", rr[0], rr[len(rr)-1])
					}
					if cs.Role == RoleMQRPC && !cs.NoTarget && x < StreamTargetRatio {
						sb.WriteString(" ✗")
					}
					sb.WriteString(" · ")
				}
				sb.WriteString(siNumber3(c.Throughput()))
				if b := r.baseline(c); c.Errors > 0 || (b != nil && b.Errors > 0) {
					sb.WriteString(" ⚠")
				}
				sb.WriteString(" |")
			}
		}
		if c := r.Cells[Key{Group: cs.Group, Name: cs.Name, Conc: r.Config.Streams[0], Size: r.Config.Sizes[0]}]; c != nil {
			fmt.Fprintf(&sb, " %s, %.1f |\n", dur(c.CPUPerCall()), c.AllocsPerCall())
		} else {
			sb.WriteString(" – |\n")
		}
	}
	sb.WriteString("\n")
	return sb.String()
}

// siNumber3 formats a rate with about three significant digits and a k
// or M suffix.
func siNumber3(v float64) string {
	switch {
	case v >= 1e6:
		return rate(v/1e6) + "M"
	case v >= 1e3:
		return rate(v/1e3) + "k"
	}
	return rate(v)
}

// joinInts joins ns with sep.
func joinInts(ns []int, sep string) string {
	parts := make([]string, len(ns))
	for i, n := range ns {
		parts[i] = fmt.Sprint(n)
	}
	return strings.Join(parts, sep)
}

// brokerCPU formats c's broker CPU per call, or "–" when not measured.
func brokerCPU(c *Cell) string {
	if d, ok := c.BrokerCPUPerCall(); ok {
		return dur(d)
	}
	return "–"
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// SVG returns a chart of throughput (log scale) against concurrency, one
// panel per payload size, one line per case.
func (rp *Report) SVG() string {
	r := rp.Results
	const (
		panelW, panelH = 420.0, 320.0
		left, top      = 70.0, 60.0
		gap            = 60.0
		legendW        = 280.0
	)
	n := float64(len(r.Config.Sizes))
	width := left + n*panelW + (n-1)*gap + 30 + legendW
	height := top + panelH + 70
	unary := r.casesOf(false)
	lo, hi := math.Inf(1), 0.0
	for _, c := range r.Cells {
		if r.isStreamGroup(c.Group) {
			continue
		}
		if t := c.Throughput(); t > 0 {
			lo = math.Min(lo, t)
			hi = math.Max(hi, t)
		}
	}
	if hi == 0 {
		lo, hi = 1, 10
	}
	lo = math.Pow(10, math.Floor(math.Log10(lo)))
	hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	y := func(v float64) float64 {
		return top + panelH - (math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*panelH
	}
	concs := r.Config.Concurrency
	x := func(i int) float64 {
		if len(concs) == 1 {
			return panelW / 2
		}
		return 30 + float64(i)*(panelW-60)/float64(len(concs)-1)
	}
	colors := map[string]string{"nats": "#1f77b4", "amqp": "#ff7f0e", "rocketmq": "#2ca02c", "memory": "#9467bd", "tcp": "#7f7f7f"}
	dashes := map[string]string{RoleRaw: "", RoleMQRPC: "8,4", RolePeer: "2,3"}
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&sb, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&sb, `<text x="%.0f" y="22" font-size="15" font-weight="bold">Throughput (calls/s, log scale) against concurrent callers</text>`+"\n", left)
	for pi, size := range r.Config.Sizes {
		ox := left + float64(pi)*(panelW+gap)
		fmt.Fprintf(&sb, `<g transform="translate(%.1f,0)">`+"\n", ox)
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" text-anchor="middle" font-weight="bold">payload %s</text>`+"\n", panelW/2, top-10, sizeName(size))
		fmt.Fprintf(&sb, `<rect x="0" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#444"/>`+"\n", top, panelW, panelH)
		for d := lo; d <= hi*1.0001; d *= 10 {
			fmt.Fprintf(&sb, `<line x1="0" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", panelW, y(d), y(d))
			for _, m := range []float64{2, 5} {
				if d*m < hi {
					fmt.Fprintf(&sb, `<line x1="0" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#f0f0f0"/>`+"\n", panelW, y(d*m), y(d*m))
				}
			}
			fmt.Fprintf(&sb, `<text x="-6" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", y(d), siNumber(d))
		}
		for i, c := range concs {
			fmt.Fprintf(&sb, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", x(i), x(i), top, top+panelH)
			fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" text-anchor="middle">%d</text>`+"\n", x(i), top+panelH+16, c)
		}
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" text-anchor="middle">concurrent callers</text>`+"\n", panelW/2, top+panelH+36)
		for _, cs := range unary {
			var pts []string
			for i, conc := range concs {
				c := r.Cells[Key{Group: cs.Group, Name: cs.Name, Conc: conc, Size: size}]
				if c == nil || c.Throughput() <= 0 {
					continue
				}
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(i), y(c.Throughput())))
			}
			col := colors[cs.Group]
			if col == "" {
				col = "#000"
			}
			dash := ""
			if d := dashes[cs.Role]; d != "" {
				dash = fmt.Sprintf(` stroke-dasharray="%s"`, d)
			}
			fmt.Fprintf(&sb, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", col, dash, strings.Join(pts, " "))
			for _, p := range pts {
				xy := strings.Split(p, ",")
				fmt.Fprintf(&sb, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", xy[0], xy[1], col)
			}
		}
		sb.WriteString("</g>\n")
	}
	lx := left + n*panelW + (n-1)*gap + 30
	for i, cs := range unary {
		ly := top + 10 + float64(i)*20
		col := colors[cs.Group]
		dash := ""
		if d := dashes[cs.Role]; d != "" {
			dash = fmt.Sprintf(` stroke-dasharray="%s"`, d)
		}
		fmt.Fprintf(&sb, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", lx, lx+30, ly, ly, col, dash)
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" dominant-baseline="middle">%s: %s</text>`+"\n", lx+36, ly, cs.Group, xmlEscape(cs.Name))
	}
	fy := top + 20 + float64(len(unary))*20
	fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" fill="#555">solid: baseline (raw client)</text>`+"\n", lx, fy)
	fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" fill="#555">dashed: mqrpc, dotted: peer</text>`+"\n", lx, fy+16)
	sb.WriteString("</svg>\n")
	return sb.String()
}

func siNumber(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return fmt.Sprintf("%g", v)
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
