module github.com/mqrpc/mqrpc

go 1.24.0
