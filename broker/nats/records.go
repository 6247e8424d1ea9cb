package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Delivery counting. JetStream's NumDelivered counts every delivery to a
// server, also those a server had only prefetched when a crash of another
// request took its process down; counting it would dead-letter the healthy
// requests of the same pull batch with the one that crashes. So a request
// is charged only for the deliveries whose handler started:
//
//   - A first delivery writes nothing (the fast path pays nothing). It is
//     counted as started, since nothing says whether it did.
//   - A redelivery reads its record from the delivery bucket and writes
//     "<n> running" before its handler starts. A redelivery without such a
//     record did not start, whatever NumDelivered says.
//   - A handler error writes "<n> failed: <error>", so the next delivery
//     knows the last start ended in the handler, not in a crash.
//
// A redelivery whose last start has no known outcome (no record after a
// first delivery, or "running") may have crashed its process: it is a
// suspect and runs in suspectLane, alone among suspects, so a crash there is
// charged to it and to no other suspect. When the bucket cannot be used the
// broker falls back to NumDelivered.

// deliveryRecordTTL is how long the delivery bucket keeps a record after its
// last change: records are not deleted when their request is done, they
// expire.
const deliveryRecordTTL = 24 * time.Hour

// attempt is what a server knows about the earlier handler starts of the
// request it was just delivered.
type attempt struct {
	key     string             // of the record; "" without metadata
	kv      jetstream.KeyValue // nil: no record read (a first delivery, or the bucket failed)
	rev     uint64             // revision of the record; 0 when there is none
	started uint64             // handler starts counted before this delivery
	suspect bool               // the last start may have crashed its process
	reason  string             // the last handler error, when it ended in one
	counted bool               // started is JetStream's count: records are not used
}

// recordKey names the record of a stored request: its stream sequence and
// store time, which stay unique even when a lost memory stream is made
// again and its sequences start over.
func recordKey(md *jetstream.MsgMetadata) string {
	return strconv.FormatUint(md.Sequence.Stream, 10) + "." + strconv.FormatInt(md.Timestamp.UnixNano(), 10)
}

// loadAttempt reads what is known about the earlier deliveries of the
// request md describes.
func (d *jsDriver) loadAttempt(ctx context.Context, md *jetstream.MsgMetadata) attempt {
	if md.Sequence.Stream == 0 {
		return attempt{started: md.NumDelivered - 1, counted: true}
	}
	if md.NumDelivered <= 1 {
		return attempt{} // its key is made only if it fails
	}
	key := recordKey(md)
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	kv, err := d.js.deliveries(ctx)
	if err == nil {
		var e jetstream.KeyValueEntry
		e, err = kv.Get(ctx, key)
		switch {
		case err == nil:
			a := attempt{key: key, kv: kv, rev: e.Revision(), started: 1, suspect: true}
			if n, failed, reason, ok := parseRecord(e.Value()); ok {
				a.started, a.suspect, a.reason = n, !failed, reason
			}
			return a
		case errors.Is(err, jetstream.ErrKeyNotFound):
			// Nothing recorded since the first delivery: count that one
			// as started, and suspect it.
			return attempt{key: key, kv: kv, started: 1, suspect: true}
		}
		d.js.resetDeliveries(err)
	}
	d.log.Warn("nats: delivery records unavailable, counting every delivery", "subject", d.subject, "error", err)
	return attempt{started: md.NumDelivered - 1, counted: true}
}

// recordStart writes that a's handler starts now. It reports false when
// another server wrote the record meanwhile (it holds the same request
// after an ack timeout): then this delivery must not run. When the record
// cannot be written, a falls back to JetStream's count.
func (d *jsDriver) recordStart(ctx context.Context, a *attempt, md *jetstream.MsgMetadata) bool {
	if a.kv == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	rev, err := d.putRecord(ctx, a, strconv.FormatUint(a.started+1, 10)+" running")
	switch {
	case err == nil:
		a.rev = rev
		return true
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		return false
	}
	d.js.resetDeliveries(err)
	d.log.Warn("nats: delivery record not written, counting every delivery", "subject", d.subject, "error", err)
	a.kv, a.counted = nil, true
	a.started = max(a.started, md.NumDelivered-1)
	return true
}

// recordFailure writes that the handler start number started ended in an
// error. A record that cannot be written is left as it was: the next
// delivery then suspects this one, which still counts it.
func (d *jsDriver) recordFailure(a *attempt, md *jetstream.MsgMetadata, started uint64, reason string) {
	if a.counted {
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, setupTimeout)
	defer cancel()
	if a.kv == nil {
		kv, err := d.js.deliveries(ctx)
		if err != nil {
			d.log.Warn("nats: delivery records unavailable", "subject", d.subject, "error", err)
			return
		}
		a.kv, a.key = kv, recordKey(md)
	}
	const maxReason = 1024
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	if _, err := d.putRecord(ctx, a, strconv.FormatUint(started, 10)+" failed: "+reason); err != nil {
		d.js.resetDeliveries(err)
		d.log.Warn("nats: delivery record not written", "subject", d.subject, "error", err)
	}
}

func (d *jsDriver) putRecord(ctx context.Context, a *attempt, value string) (uint64, error) {
	if a.rev == 0 {
		return a.kv.Create(ctx, a.key, []byte(value))
	}
	return a.kv.Update(ctx, a.key, []byte(value), a.rev)
}

// parseRecord reads "<n> running" or "<n> failed: <reason>".
func parseRecord(v []byte) (started uint64, failed bool, reason string, ok bool) {
	num, rest, _ := strings.Cut(string(v), " ")
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n == 0 {
		return 0, false, "", false
	}
	switch {
	case rest == "running":
		return n, false, "", true
	case strings.HasPrefix(rest, "failed: "):
		return n, true, rest[len("failed: "):], true
	}
	return 0, false, "", false
}

// bucketOpenWait bounds one attempt to open (or make) the bucket of
// delivery records, and bucketRetry is how long after a failed attempt
// the next may be made. Opening looks the bucket's stream up, which a
// cluster answers only once the stream (or the meta group) has a leader
// again; meanwhile a redelivery must not hold its handler slot waiting,
// nor queue the others behind it: they count deliveries as JetStream does.
const (
	bucketOpenWait = 2 * time.Second
	bucketRetry    = time.Second
)

// errBucketPaused is the error of a redelivery that came within
// bucketRetry of a failed attempt to open the bucket.
var errBucketPaused = errors.New("opening the bucket failed less than a second ago")

// deliveries returns the bucket of delivery records, made on first use.
func (b *jetStream) deliveries(ctx context.Context) (jetstream.KeyValue, error) {
	b.kvMu.Lock()
	defer b.kvMu.Unlock()
	if b.kv != nil {
		return b.kv, nil
	}
	js := &b.cfg
	if time.Since(b.kvFailed) < bucketRetry {
		return nil, fmt.Errorf("delivery bucket %s: %w", js.DeliveryBucket, errBucketPaused)
	}
	ctx, cancel := context.WithTimeout(ctx, bucketOpenWait)
	defer cancel()
	kv, err := b.js.KeyValue(ctx, js.DeliveryBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		storage := jetstream.FileStorage
		if js.MemoryStorage {
			storage = jetstream.MemoryStorage
		}
		kv, err = b.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      js.DeliveryBucket,
			Description: "mqrpc handler starts of redelivered requests of stream " + js.Stream,
			History:     1,
			TTL:         deliveryRecordTTL,
			Storage:     storage,
			Replicas:    js.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = b.js.KeyValue(ctx, js.DeliveryBucket)
		}
	}
	if err != nil {
		b.kvFailed = time.Now()
		return nil, fmt.Errorf("delivery bucket %s: %w", js.DeliveryBucket, err)
	}
	b.kv = kv
	return kv, nil
}

// resetDeliveries forgets the bucket after an error that says it may be
// gone (a memory bucket lost in a server restart), so it is made again.
func (b *jetStream) resetDeliveries(err error) {
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, natsgo.ErrNoResponders) {
		b.kvMu.Lock()
		b.kv = nil
		b.kvMu.Unlock()
	}
}
