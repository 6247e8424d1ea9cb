package redisstore_test

import (
	"github.com/redis/go-redis/v9"

	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/redisstore"
	"github.com/mqrpc/mqrpc/rpc"
)

// Every server process of a service uses the same Redis database (and
// prefix), so a call retried or redelivered to any of them runs once.
func ExampleNew() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()
	store := redisstore.New(rdb, redisstore.WithPrefix("payments:dedup:"))
	srv := rpc.NewServer(rpc.WithServerMiddleware(middleware.Dedup(middleware.WithDedupStore(store))))
	_ = srv // rpc.Handle(srv, ...), then serve it on a broker
}
