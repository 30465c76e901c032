// Command containers-policy asks containers/image whether its signature policy admits an image
// in a registry, the way skopeo, podman and CRI-O decide before they pull: it reads the policy
// (containers-policy.json, e.g. sigstoreSigned), the registries.d configuration (e.g.
// use-sigstore-attachments) and the image's signatures from the registry.
//
// Usage: containers-policy --policy FILE --registries.d DIR [--tls-verify=false] docker://REF
//
// Exit status: 0 admitted (prints "admitted"), 1 refused (prints the reason), 2 usage or
// other errors. Test harness for trustd: built from pinned module versions, loopback only.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containers/image/v5/docker"
	"github.com/containers/image/v5/image"
	"github.com/containers/image/v5/signature"
	"github.com/containers/image/v5/types"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	flags := flag.NewFlagSet("containers-policy", flag.ContinueOnError)
	policyPath := flags.String("policy", "", "containers-policy.json to evaluate")
	registriesDir := flags.String("registries.d", "", "registries.d directory")
	registriesConf := flags.String("registries-conf", "", "registries.conf (default: none)")
	tlsVerify := flags.Bool("tls-verify", true, "require HTTPS with a verified certificate")
	timeout := flags.Duration("timeout", time.Minute, "give up after this long")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *policyPath == "" || flags.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: containers-policy --policy FILE [--registries.d DIR] "+
			"[--tls-verify=false] docker://REFERENCE")
		return 2
	}
	name := flags.Arg(0)
	if !strings.HasPrefix(name, "docker://") {
		fmt.Fprintf(os.Stderr, "containers-policy: %q: only docker:// references\n", name)
		return 2
	}

	// Nothing from the machine's own configuration: an empty registries.conf and auth file
	// unless given, so the result depends only on the arguments.
	scratch, err := os.MkdirTemp("", "containers-policy-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "containers-policy: %v\n", err)
		return 2
	}
	defer os.RemoveAll(scratch)
	if *registriesConf == "" {
		*registriesConf = filepath.Join(scratch, "registries.conf")
		if err := os.WriteFile(*registriesConf, nil, 0o600); err != nil {
			fmt.Fprintf(os.Stderr, "containers-policy: %v\n", err)
			return 2
		}
	}
	sys := &types.SystemContext{
		SignaturePolicyPath:      *policyPath,
		RegistriesDirPath:        *registriesDir,
		SystemRegistriesConfPath: *registriesConf,
		// An empty drop-in directory: nothing from /etc/containers/registries.conf.d.
		SystemRegistriesConfDirPath: filepath.Join(scratch, "registries.conf.d"),
		AuthFilePath:                filepath.Join(scratch, "auth.json"),
	}
	if !*tlsVerify {
		// containers/image then also falls back to plain HTTP, as skopeo --tls-verify=false.
		sys.DockerInsecureSkipTLSVerify = types.OptionalBoolTrue
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	admitted, err := evaluate(ctx, sys, strings.TrimPrefix(name, "docker:"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "containers-policy: %v\n", err)
		return 2
	}
	if admitted != nil {
		fmt.Printf("refused: %v\n", admitted)
		return 1
	}
	fmt.Println("admitted")
	return 0
}

// evaluate returns (nil, nil) when the policy admits the image, (refusal, nil) when it refuses
// it, and (nil, err) when the question could not be asked.
func evaluate(ctx context.Context, sys *types.SystemContext, reference string) (error, error) {
	ref, err := docker.ParseReference(reference)
	if err != nil {
		return nil, fmt.Errorf("reference %q: %w", reference, err)
	}
	policy, err := signature.NewPolicyFromFile(sys.SignaturePolicyPath)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", sys.SignaturePolicyPath, err)
	}
	policyContext, err := signature.NewPolicyContext(policy)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", sys.SignaturePolicyPath, err)
	}
	defer policyContext.Destroy()
	source, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", reference, err)
	}
	defer source.Close()
	allowed, err := policyContext.IsRunningImageAllowed(ctx, image.UnparsedInstance(source, nil))
	if allowed && err == nil {
		return nil, nil
	}
	if err == nil {
		err = fmt.Errorf("policy refused %s without a reason", reference)
	}
	return err, nil
}
