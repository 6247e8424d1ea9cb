// Package dedupstore groups the shared stores of middleware.Dedup, which
// make effectively-once hold when a retry or a redelivery of a request
// lands on another server process than the first attempt (after a crash,
// a redeploy, or simply on a competing consumer):
//
//   - redisstore: Redis 7.0 or later, through go-redis/v9.
//   - natskv: a NATS JetStream key-value bucket, for NATS users.
//   - storetest: the conformance suite a store of your own can run.
//
// Each is a package of its own, so a program links only the client it
// uses. middleware.MemoryDedupStore, the default, covers one process.
//
// # What a shared store promises
//
// Every server process that competes for a service's requests uses Dedup
// with the same store (same Redis database and prefix, or same bucket).
// Then, for each request key (Message.ID by default):
//
//   - the method runs in one process at a time: the run claims the key
//     atomically and renews the claim while it runs;
//   - a repeat that arrives anywhere while the run goes on waits for its
//     outcome, and a repeat that arrives after it gets the stored reply
//     (marked middleware.HeaderReplayed), for the store's TTL;
//   - when a process dies mid-request (SIGKILL included), its claim
//     expires after the lease (middleware.WithDedupLease, 15 s by
//     default) and a repeat then runs the request in another process;
//   - when the store cannot be reached, requests wait for it (for
//     middleware.WithDedupStoreWait), then are refused with Unavailable,
//     never run unguarded: a durable broker redelivers them.
//
// A process that dies after the method's effect but before its outcome
// is stored (one store round trip) cannot be told from one that died
// before the effect: the request runs again after the lease. Methods whose
// effect must happen exactly once even then commit their effect and a
// record of the request key in one transaction of their own.
package dedupstore
