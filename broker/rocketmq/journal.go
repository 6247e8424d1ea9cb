package rocketmq

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mqrpc/mqrpc/broker/kernel"
)

// journal makes a delivery that crashed its server process count as a
// delivery, which RocketMQ does not do: a consumer that dies before it
// commits an offset makes the broker hand the message to the group's next
// consumer as if it were new, so a request that crashes its server would
// crash every server in turn, forever, and hold back the offsets of the
// messages queued behind it.
//
// Each Serve appends a line to a file of its own before it hands a message
// to the handler ("S <key>") and after it settled the delivery
// ("D <key>"); key names the stored message (queue and offset), not its
// sender's ID. The file is locked (flock) while its Serve runs. A server
// that finds an unlocked file of the same group (its process ended) adopts
// the deliveries started there and never settled as crashed deliveries
// ("C <key> <n>" in its own file) and removes the file; a message whose
// stored copy crashed a server is then not run again but sent back through
// the retry path, one delivery more, and dead-lettered once the group's
// limit is reached. Its message ID is remembered as a suspect ("X <id>",
// "Y <id>" once it ran or was dead-lettered): a crash takes every delivery
// in flight with it, so a suspect runs alone, and only the message that
// crashes the server is counted again. Files are looked for when Serve starts and whenever a
// queue's messages arrive from an offset at or below one already seen (a
// queue taken over from another server).
//
// Writes are not synced: they survive the process, which is what a crash
// ends, not the machine. Servers find each other's files only in the same
// directory, so crashes are counted among the processes of one machine (or
// of a shared directory).
type journal struct {
	dir, name string

	mu      sync.Mutex
	f       *os.File
	size    int64
	pending map[string]struct{} // started here, not settled
	crashed map[string]int      // adopted crashed deliveries by key
	suspect map[string]struct{} // message IDs that were in flight at a crash
	offsets map[string]int64    // highest offset seen per queue
	err     error               // first write error; the journal is then off
}

// journalRotate is the file size at which the journal is rewritten with
// only what is still open.
const journalRotate = 1 << 20

const journalExt = ".journal"

// openJournal creates this Serve's file in dir (created if needed) and
// adopts the files of ended processes.
func openJournal(dir, name string) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("delivery journal: %w", err)
	}
	j := &journal{dir: dir, name: name, pending: map[string]struct{}{}, crashed: map[string]int{}, suspect: map[string]struct{}{}, offsets: map[string]int64{}}
	f, err := lockedFile(filepath.Join(dir, name+journalExt))
	if err != nil {
		return nil, fmt.Errorf("delivery journal: %w", err)
	}
	j.f = f
	j.mu.Lock()
	defer j.mu.Unlock()
	j.adoptLocked()
	return j, j.err
}

// lockedFile opens path for appending and takes its lock.
func lockedFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// seen records a delivery from queue at offset and reports whether it may
// be a message another server had started: the queue is new to this Serve
// or it went back. It then looks for the files of ended processes.
func (j *journal) seen(queue string, offset int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	last, ok := j.offsets[queue]
	if !ok || offset <= last {
		j.adoptLocked()
	}
	if !ok || offset > last {
		j.offsets[queue] = offset
	}
}

// crashes returns how many deliveries of key crashed a server.
func (j *journal) crashes(key string) int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.crashed[key]
}

// suspected reports whether the message id was in flight when a server
// crashed.
func (j *journal) suspected(id string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	_, ok := j.suspect[id]
	return ok
}

// suspectID records that the message id was in flight at a crash; clear
// forgets it once it ran without crashing or was dead-lettered.
func (j *journal) suspectID(id string, on bool) {
	if id == "" || strings.ContainsAny(id, " \n") {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	_, ok := j.suspect[id]
	switch {
	case on && !ok:
		j.suspect[id] = struct{}{}
		j.writeLocked("X " + id + "\n")
	case !on && ok:
		delete(j.suspect, id)
		j.writeLocked("Y " + id + "\n")
	}
}

// start records that key is about to be handed to the handler.
func (j *journal) start(key string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.pending[key] = struct{}{}
	j.writeLocked("S " + key + "\n")
}

// finish records that the delivery of key is settled (acknowledged, sent
// back or dead-lettered).
func (j *journal) finish(key string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	_, p := j.pending[key]
	_, c := j.crashed[key]
	if !p && !c {
		return
	}
	delete(j.pending, key)
	delete(j.crashed, key)
	j.writeLocked("D " + key + "\n")
	if j.size > journalRotate {
		j.rotateLocked()
	}
}

func (j *journal) writeLocked(line string) {
	if j.err != nil || j.f == nil || line == "" {
		return
	}
	n, err := j.f.WriteString(line)
	j.size += int64(n)
	if err != nil {
		j.err = fmt.Errorf("delivery journal: %w", err)
	}
}

// adoptLocked turns the open deliveries of every ended process's file into
// crashed deliveries of this journal and removes those files.
func (j *journal) adoptLocked() {
	entries, err := os.ReadDir(j.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, journalExt) || name == j.name+journalExt {
			continue
		}
		path := filepath.Join(j.dir, name)
		f, err := os.OpenFile(path, os.O_RDONLY, 0)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			_ = f.Close() // its server is running
			continue
		}
		open, suspects := readJournal(f)
		var b strings.Builder
		for key, n := range open {
			j.crashed[key] += n
			b.WriteString("C " + key + " " + strconv.Itoa(n) + "\n")
		}
		for id := range suspects {
			if _, ok := j.suspect[id]; !ok {
				j.suspect[id] = struct{}{}
				b.WriteString("X " + id + "\n")
			}
		}
		j.writeLocked(b.String())
		if j.err == nil {
			_ = os.Remove(path)
		}
		_ = f.Close()
	}
}

// readJournal returns the deliveries a journal file leaves open (crashed
// ones it adopted, and ones it started and never settled) and the message
// IDs it suspects.
func readJournal(f *os.File) (map[string]int, map[string]struct{}) {
	open := map[string]int{}
	suspects := map[string]struct{}{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue // a line cut short by the crash
		}
		key := fields[1]
		switch fields[0] {
		case "S":
			open[key]++
		case "D":
			delete(open, key)
		case "C":
			if len(fields) == 3 {
				if n, err := strconv.Atoi(fields[2]); err == nil && n > 0 {
					open[key] += n
				}
			}
		case "X":
			suspects[key] = struct{}{}
		case "Y":
			delete(suspects, key)
		}
	}
	return open, suspects
}

// rotateLocked replaces the file with one holding only what is open.
func (j *journal) rotateLocked() {
	path := filepath.Join(j.dir, j.name+journalExt)
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	f, err := lockedFile(tmp)
	if err != nil {
		return // keep appending to the old one
	}
	var b strings.Builder
	for key := range j.pending {
		b.WriteString("S " + key + "\n")
	}
	for key, n := range j.crashed {
		b.WriteString("C " + key + " " + strconv.Itoa(n) + "\n")
	}
	for id := range j.suspect {
		b.WriteString("X " + id + "\n")
	}
	n, err := f.WriteString(b.String())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = f.Close()
		_ = os.Remove(tmp)
		return
	}
	_ = j.f.Close()
	j.f, j.size = f, int64(n)
}

// close releases the file; it is removed when nothing is open, and left
// for the next server to adopt otherwise.
func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	var err error
	if len(j.pending) == 0 && len(j.crashed) == 0 && len(j.suspect) == 0 {
		err = os.Remove(filepath.Join(j.dir, j.name+journalExt))
	}
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	j.f = nil
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return err
}

// soloGate runs a suspect alone among a server's deliveries (a
// kernel.Lane of its own per Serve), with every wait bounded by soloWait,
// so that a handler that calls a service of the same server while a
// suspect waits (or a suspect that calls one) delays things by at most
// soloWait instead of deadlocking: after it, a suspect runs beside the
// others and a delivery that waited for a suspect runs anyway.
type soloGate struct{ lane *kernel.Lane }

func newSoloGate() soloGate { return soloGate{lane: kernel.NewLane()} }

// soloWait bounds every wait of soloGate.
const soloWait = 5 * time.Second

// solo waits (up to twice soloWait for another suspect, then as long for
// the deliveries in flight, so that deliveries held back for it give up
// first, or until ctx ends) to run alone and returns the function that
// ends the delivery; alone reports whether it got to (otherwise it runs
// beside the others).
func (g soloGate) solo(ctx context.Context) (leave func(), alone bool) {
	leave, alone, err := g.lane.Enter(ctx, 2*soloWait)
	if err != nil {
		return func() {}, false
	}
	return leave, alone
}

// shared waits for a suspect running alone, up to soloWait (or until ctx
// ends), then runs beside the other deliveries; it returns the function
// that ends the delivery.
func (g soloGate) shared(ctx context.Context) func() { return g.lane.Shared(ctx, soloWait) }
