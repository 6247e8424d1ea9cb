package tcpbroker

import (
	"encoding/gob"
	"net"
	"slices"
	"sync"

	"github.com/mqrpc/mqrpc/broker"
)

// The hub is the broker server of this transport, as nats-server is
// NATS's: it keeps the subscriptions and routes frames between
// connections. It knows nothing of the kernel.

// The kinds of frame.
const (
	sub uint64 = iota
	unsub
	req // a request (Corr != 0) or a one-way message
	rep
	noResp
	cancel
)

// frame is everything on the wire. Corr pairs a request and its reply.
type frame struct {
	Kind, Corr, Sub uint64
	Subject, Queue  string
	Msg             broker.Message
}

type peer struct {
	mu  sync.Mutex
	enc *gob.Encoder
}

func (p *peer) send(f *frame) error { p.mu.Lock(); defer p.mu.Unlock(); return p.enc.Encode(f) }

type member struct { // a server; in pending: a caller and its Corr
	p   *peer
	sub uint64
}

// Listen runs a hub on l until l is closed.
func Listen(l net.Listener) {
	var mu sync.Mutex
	groups := map[string]map[string][]member{} // subject -> queue -> members
	pending := map[uint64]member{}             // hub corr -> caller and its corr
	var next uint64
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			p, dec := &peer{enc: gob.NewEncoder(c)}, gob.NewDecoder(c)
			defer c.Close()
			defer drop(&mu, groups, func(m member) bool { return m.p == p })
			for {
				var f frame
				if dec.Decode(&f) != nil {
					return
				}
				mu.Lock()
				switch s := f.Msg.Subject; f.Kind {
				case sub:
					if groups[f.Subject] == nil {
						groups[f.Subject] = map[string][]member{}
					}
					groups[f.Subject][f.Queue] = append(groups[f.Subject][f.Queue], member{p, f.Sub})
				case unsub:
					go drop(&mu, groups, func(m member) bool { return m.p == p && m.sub == f.Sub })
				case req, cancel:
					if len(groups[s]) == 0 && f.Kind == req && f.Corr != 0 { // nobody serves s
						go p.send(&frame{Kind: noResp, Corr: f.Corr})
					}
					for q, ms := range groups[s] {
						targets := ms      // a cancel notice goes to every server
						if f.Kind == req { // a request to one per queue group, in turn
							targets, groups[s][q] = ms[:1], append(ms[1:len(ms):len(ms)], ms[0])
						}
						for _, m := range targets {
							g := f
							g.Sub = m.sub
							if f.Corr != 0 {
								next++
								pending[next], g.Corr = member{p, f.Corr}, next
							}
							go m.p.send(&g)
						}
					}
				case rep:
					if to, ok := pending[f.Corr]; ok {
						delete(pending, f.Corr)
						f.Corr = to.sub
						go to.p.send(&f)
					}
				}
				mu.Unlock()
			}
		}()
	}
}

func drop(mu *sync.Mutex, groups map[string]map[string][]member, gone func(member) bool) {
	mu.Lock()
	defer mu.Unlock()
	for _, qs := range groups {
		for q, ms := range qs {
			if qs[q] = slices.DeleteFunc(ms, gone); len(qs[q]) == 0 {
				delete(qs, q)
			}
		}
	}
}
