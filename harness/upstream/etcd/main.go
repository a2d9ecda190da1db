// Command etcd is a thin entry point around the pinned upstream etcd server,
// built only for Signpost's tests and benchmarks.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
