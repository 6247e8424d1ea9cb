package harness

import (
	"net"
	"os"
	"testing"
	"time"
)

func TestListenerPIDFindsThisProcess(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	pid, err := ListenerPID(port)
	if err != nil {
		t.Fatal(err)
	}
	if pid != os.Getpid() {
		t.Fatalf("ListenerPID(%d) = %d, want this process, %d", port, pid, os.Getpid())
	}
	ln.Close()
	if pid, err := ListenerPID(port); err == nil {
		t.Fatalf("ListenerPID(%d) = %d after the listener closed, want an error", port, pid)
	}
}

func TestPidsCPUCountsThisProcess(t *testing.T) {
	before, ok := pidsCPU([]int{os.Getpid()})
	if !ok {
		t.Fatal("cannot read this process's CPU time")
	}
	// Burn CPU until the tick-grained counter moves: bounded.
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for time.Now().Before(deadline) {
		for i := 0; i < 1e6; i++ {
			x += i
		}
		if after, _ := pidsCPU([]int{os.Getpid()}); after > before {
			return
		}
	}
	t.Fatalf("CPU time did not move in 10s of spinning (%d)", x)
}
