// Package depstest pins what a program that depends on mqrpc downloads and
// links (README, "Modules"): its test builds small programs in a temporary
// module that requires this checkout, as a user's go.mod would, and checks
// `go list -m all` and the modules of the packages they link.
package depstest
