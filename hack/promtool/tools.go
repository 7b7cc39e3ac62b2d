//go:build tools

// Package tools pins promtool, which `make tools` builds to check and unit-test the chart's
// alerting rules.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
