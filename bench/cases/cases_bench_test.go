package cases

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/mqrpc/mqrpc/bench/harness"
	msgpackcodec "github.com/mqrpc/mqrpc/codec/msgpack"
)

// The benchmarks here are for profiling one path at a time
// (go test -bench Memory -cpuprofile ...); the comparison lives in
// cmd/mqbench.

func benchCase(b *testing.B, c harness.Case, size int) {
	t, err := c.Setup(context.Background())
	if err != nil {
		b.Skipf("%s/%s: %v", c.Group, c.Name, err)
	}
	defer t.Close()
	p := make([]byte, size)
	// A deadline, as mqbench's callers have, so the client does not add
	// its default timeout.
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	if err := t.Call(ctx, p); err != nil {
		b.Skipf("%s/%s: first call: %v", c.Group, c.Name, err)
	}
	b.ReportAllocs()
	if c.Msgs > 0 { // a stream: one op carries c.Msgs messages of size bytes
		b.SetBytes(int64(size * c.Msgs))
	} else {
		b.SetBytes(int64(size))
	}
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		if err := t.Call(ctx, p); err != nil {
			b.Fatal(err)
		}
	}
	// CPU time of the whole process (caller and in-process server) per
	// call: steadier than ns/op when other processes share the machine.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func testConfig() Config {
	return Config{
		Codec:   msgpackcodec.Codec{},
		NATSURL: EnvOr("MQRPC_NATS_URL", "nats://127.0.0.1:4222"),
		AMQPURL: EnvOr("MQRPC_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
	}
}

func benchGroup(b *testing.B, cs []harness.Case) {
	for _, c := range cs {
		for _, size := range []int{64, 4096} {
			b.Run(c.Name+"/"+sizeName(size), func(b *testing.B) { benchCase(b, c, size) })
		}
	}
}

func sizeName(n int) string {
	if n >= 1024 {
		return "4KiB"
	}
	return "64B"
}

func BenchmarkMemory(b *testing.B) { benchGroup(b, Memory(testConfig())) }
func BenchmarkNATS(b *testing.B)   { benchGroup(b, NATS(testConfig())) }
func BenchmarkAMQP(b *testing.B)   { benchGroup(b, AMQP(testConfig())) }

// The stream benchmarks: one op is one whole stream (5,000 messages on
// NATS and in memory), so allocs/op and cpu-ns/op divided by that count
// are the figures per message.
func BenchmarkMemoryStreams(b *testing.B) { benchGroup(b, MemoryStreams(testConfig())) }
func BenchmarkNATSStreams(b *testing.B)   { benchGroup(b, NATSStreams(testConfig())) }

// TestCasesEcho checks that the in-process cases answer with the echo of
// the request (the network cases are checked by mqbench's first call).
func TestCasesEcho(t *testing.T) {
	for _, c := range append(append(Memory(testConfig()), TCP(testConfig())...), MemoryStreams(testConfig())...) {
		t.Run(c.Group+"/"+c.Name, func(t *testing.T) {
			tg, err := c.Setup(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer tg.Close()
			for _, n := range []int{1, 64, 4096} {
				if err := tg.Call(context.Background(), make([]byte, n)); err != nil {
					t.Fatalf("%d bytes: %v", n, err)
				}
			}
		})
	}
}
