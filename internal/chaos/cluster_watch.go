package chaos

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"
)

// A LeaderWatch records, after a node's death, when each JetStream raft
// group (the meta group, every stream and every consumer) that the dead
// node led, or that had no leader, got a leader on another node, and when
// each watched connection was connected again: where the time to recover
// goes.
type LeaderWatch struct {
	c     *NATSCluster
	dead  string
	since time.Time
	conns map[string]*natsgo.Conn

	mu      sync.Mutex
	before  map[string]string        // leader of each group at the first look
	elected map[string]time.Duration // first seen with a live leader
	leader  map[string]string
	back    map[string]time.Duration // connection connected again
	stop    chan struct{}
	done    chan struct{}
}

// WatchLeaders starts a LeaderWatch of the death of node dead, about to
// be killed, polling the monitoring endpoint (/jsz) of a live node every
// 50 ms. Of conns it watches those connected to that node.
func (c *NATSCluster) WatchLeaders(dead int, conns map[string]*natsgo.Conn) *LeaderWatch {
	on := map[string]*natsgo.Conn{}
	for name, nc := range conns {
		if nc.ConnectedServerName() == c.Names[dead] {
			on[name] = nc
		}
	}
	w := &LeaderWatch{c: c, dead: c.Names[dead], since: time.Now(), conns: on,
		before: map[string]string{}, elected: map[string]time.Duration{}, leader: map[string]string{},
		back: map[string]time.Duration{}, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run(dead)
	return w
}

type jsz struct {
	Meta struct {
		Leader string `json:"leader"`
	} `json:"meta_cluster"`
	Accounts []struct {
		Streams []struct {
			Name    string `json:"name"`
			Cluster struct {
				Leader string `json:"leader"`
			} `json:"cluster"`
			Consumers []struct {
				Name    string `json:"name"`
				Cluster struct {
					Leader string `json:"leader"`
				} `json:"cluster"`
			} `json:"consumer_detail"`
		} `json:"stream_detail"`
	} `json:"account_details"`
}

func (w *LeaderWatch) run(dead int) {
	defer close(w.done)
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for name, nc := range w.conns {
			if _, ok := w.back[name]; !ok && nc.Status() == natsgo.CONNECTED && nc.ConnectedServerName() != w.dead {
				w.mu.Lock()
				w.back[name] = time.Since(w.since)
				w.mu.Unlock()
			}
		}
		for i := range w.c.Names {
			if i == dead {
				continue
			}
			if w.poll(client, i) {
				break
			}
		}
		select {
		case <-w.stop:
			return
		case <-tick.C:
		}
	}
}

// poll reads node i's view of the leaders; false when it did not answer.
func (w *LeaderWatch) poll(client *http.Client, i int) bool {
	resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(w.c.mport[i]) + "/jsz?accounts=true&streams=true&consumers=true")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var z jsz
	if err := json.NewDecoder(resp.Body).Decode(&z); err != nil {
		return false
	}
	at := time.Since(w.since)
	w.mu.Lock()
	defer w.mu.Unlock()
	see := func(group, leader string) {
		if _, ok := w.before[group]; !ok {
			w.before[group] = leader
		}
		w.leader[group] = leader
		if _, ok := w.elected[group]; !ok && leader != "" && leader != w.dead {
			w.elected[group] = at
		}
	}
	see("meta", z.Meta.Leader)
	for _, a := range z.Accounts {
		for _, s := range a.Streams {
			see(s.Name, s.Cluster.Leader)
			for _, c := range s.Consumers {
				see(s.Name+"/"+c.Name, c.Cluster.Leader)
			}
		}
	}
	return true
}

// Led reports whether the dead node led group (or group had no leader) at
// the watch's first look.
func (w *LeaderWatch) Led(group string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	was, ok := w.before[group]
	return ok && (was == "" || was == w.dead)
}

// Elected returns how long after the kill group (a stream, "stream/consumer"
// or "meta") was first seen led by a live node, and whether it was.
func (w *LeaderWatch) Elected(group string) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	d, ok := w.elected[group]
	return d, ok
}

// Stop ends the watch and describes it: each group the dead node led (or
// that had no leader at the first look) and when it got its new leader;
// when each connection was back.
func (w *LeaderWatch) Stop() string {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	var parts []string
	for g, was := range w.before {
		if was != "" && was != w.dead {
			continue
		}
		if d, ok := w.elected[g]; ok {
			parts = append(parts, fmt.Sprintf("%s leader %s at %v", g, w.leader[g], d.Round(10*time.Millisecond)))
		} else {
			parts = append(parts, fmt.Sprintf("%s leaderless (%q) to the end", g, w.leader[g]))
		}
	}
	slices.Sort(parts)
	var conns []string
	for name, d := range w.back {
		conns = append(conns, fmt.Sprintf("%s at %v", name, d.Round(10*time.Millisecond)))
	}
	slices.Sort(conns)
	out := "re-elected: " + strings.Join(parts, ", ")
	if len(parts) == 0 {
		out = "the dead node led nothing"
	}
	if len(conns) > 0 {
		out += "; reconnected: " + strings.Join(conns, ", ")
	}
	return out
}
