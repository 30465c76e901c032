// Command referrers-registry serves go-containerregistry's registry (the one behind
// 'crane registry serve') with its OCI 1.1 referrers API switched on, which crane's own
// command leaves off.
//
// Usage: referrers-registry --address 127.0.0.1:PORT [--disk DIR]
//
// Manifests always live in memory; blobs too unless --disk names a directory. Test harness for
// trustd: built from a pinned module version, meant for loopback addresses only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	address := flag.String("address", "127.0.0.1:0", "address to listen on")
	disk := flag.String("disk", "", "directory for blobs (default: memory)")
	flag.Parse()

	listener, err := net.Listen("tcp", *address)
	if err != nil {
		log.Fatalf("listen on %s: %v", *address, err)
	}
	blobs := registry.NewInMemoryBlobHandler()
	if *disk != "" {
		blobs = registry.NewDiskBlobHandler(*disk)
	}
	server := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: registry.New(
			registry.WithBlobHandler(blobs),
			registry.WithReferrersSupport(true),
		),
	}
	// The address line is what a harness waits for when it asked for port 0.
	fmt.Fprintf(os.Stderr, "serving on %s\n", listener.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	failed := make(chan error, 1)
	go func() { failed <- server.Serve(listener) }()
	select {
	case err := <-failed:
		log.Fatalf("serve: %v", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := server.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("shutdown: %v", err)
	}
}
