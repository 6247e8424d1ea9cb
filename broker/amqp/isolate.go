package amqp

import (
	"sync"
	"time"
)

// isolation lets a suspect request (one whose server was lost while
// holding it) run alone in a broker, so that if it crashes the process
// again, no other request was running with it. Durable handlers run
// between enter and leave; a suspect runs between alone and the release
// it returns. alone closes the gate to new handlers and waits for those
// running to finish. Both waits are bounded by maxWait: a handler may
// itself be waiting for a call served by this broker (a service calling
// another in the same process), which a closed gate holds back.
type isolation struct {
	mu      sync.Mutex
	running int
	gate    chan struct{} // closed-gate period: closed when it reopens; nil while open
	idle    chan struct{} // closed when running drops to 0; nil unless alone waits
}

// enter waits while a suspect runs alone, at most maxWait, then counts a
// handler in.
func (i *isolation) enter(maxWait time.Duration) {
	i.mu.Lock()
	if g := i.gate; g != nil {
		i.mu.Unlock()
		t := time.NewTimer(maxWait)
		select {
		case <-g:
		case <-t.C:
		}
		t.Stop()
		i.mu.Lock()
	}
	i.running++
	i.mu.Unlock()
}

// leave counts a handler out.
func (i *isolation) leave() {
	i.mu.Lock()
	i.running--
	if i.running == 0 && i.idle != nil {
		close(i.idle)
		i.idle = nil
	}
	i.mu.Unlock()
}

// alone closes the gate to new handlers and waits until none runs, or
// maxWait. One suspect runs at a time. The caller runs the suspect and then
// calls release, which reopens the gate.
func (i *isolation) alone(maxWait time.Duration) (release func()) {
	i.mu.Lock()
	for i.gate != nil {
		g := i.gate
		i.mu.Unlock()
		<-g
		i.mu.Lock()
	}
	gate := make(chan struct{})
	i.gate = gate
	var idle chan struct{}
	if i.running > 0 {
		idle = make(chan struct{})
		i.idle = idle
	}
	i.mu.Unlock()
	if idle != nil {
		t := time.NewTimer(maxWait)
		select {
		case <-idle:
		case <-t.C:
		}
		t.Stop()
	}
	return func() {
		i.mu.Lock()
		i.gate = nil
		i.idle = nil
		i.mu.Unlock()
		close(gate)
	}
}
