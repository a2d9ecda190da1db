//go:build tools

// Keeps the node tools' modules in go.mod and go.sum; ci/upstream builds
// them with `go build <package>`.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
