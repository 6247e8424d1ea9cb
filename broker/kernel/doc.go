// Package kernel is what every broker does the same way, so that a broker
// implements only its wire. It owns:
//
//   - the preamble of Request and Send: [Prepare] fills the message ID and
//     makes the earlier of the ctx deadline and the message deadline govern
//     both the wait and the message; [TTL] turns a deadline into a clamped
//     time to live; [WaitError] says why a wait ended;
//   - the delivery pipeline: decode → expired? → admit → delivery ctx →
//     recover → handler → reply / ack / nack, run by [Serve] over a
//     [Driver]; a durable broker's driver has a say through optional
//     abilities ([Admitter], [CauseSettler], [Abandoner]), and runs the
//     deliveries suspected of crashing their process in a [Lane];
//   - the Serve / Stop / drain / abort lifecycle and the worker pool
//     (package dispatch), with the lazy delivery context (package
//     deliveryctx) and pooled request messages (package msgpool);
//   - mapping a service name onto a name a broker accepts ([MapName]);
//   - the table of a connection's stream inboxes ([Inboxes]): one
//     subscription or queue per connection, a token per inbox, each inbox
//     fed in order, for a broker implementing [broker.Streamer];
//   - for a [broker.Broadcaster]: the caller's end of a Gather
//     ([Replies]: each reply to the caller's function, until it or max
//     says stop) and, for a broker that fans broadcasts out itself, the
//     table of ServeEach subscriptions by subject ([EachTable]).
//
// The broker packages of mqrpc (broker/memory, ...) are built on it, and so
// can a broker of your own (examples/custom-broker).
package kernel
