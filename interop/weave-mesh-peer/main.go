// Copyright The Weft Authors
// SPDX-License-Identifier: Apache-2.0

// Command weave-mesh-peer runs one peer of the reference Go mesh library,
// github.com/weaveworks/mesh (the library Weave Net is built on), so that
// Weft's interoperability tests can put it in a mesh with Weft routers.
//
// It joins the mesh with the library's defaults (protocol versions, the null
// overlay), registers one gossip channel, "weft-interop", and writes a JSON
// snapshot of its state every -interval: to -status (replaced atomically) or,
// without it, as one line on stdout. The snapshot holds mesh.NewStatus (peers,
// connections, routes, targets), every gossip message received on the channel,
// and the library's recent log lines (handshake errors show up there).
//
// With -gossip-every, it broadcasts a message on the channel and unicasts one
// to every other known peer at that period, so that relaying through other
// peers can be observed at the receivers.
//
// Usage: weave-mesh-peer -name 02:00:00:00:00:01 [-nickname n] [-listen
// host:port] [-password p] [-status file] [peer host:port ...]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/weaveworks/mesh"
)

// ChannelName is the gossip channel the interop tests use.
const ChannelName = "weft-interop"

// maxLog and maxReceived bound what the snapshot keeps.
const (
	maxLog      = 200
	maxReceived = 1000
)

// ringLogger is a mesh.Logger that prints to stderr and keeps the last lines.
type ringLogger struct {
	mu    sync.Mutex
	lines []string
}

func (l *ringLogger) Printf(format string, args ...interface{}) {
	line := fmt.Sprintf(format, args...)
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.000"), line)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
	if len(l.lines) > maxLog {
		l.lines = l.lines[len(l.lines)-maxLog:]
	}
}

func (l *ringLogger) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// Received is one gossip message that arrived on the channel.
type Received struct {
	Kind    string // "unicast", "broadcast" or "gossip"
	From    string // the originating peer (the relaying peer's name for "gossip")
	Message string
}

// messages is the channel's GossipData: a set of opaque messages, each sent
// as its own encoded part.
type messages map[string]struct{}

func (m messages) Encode() [][]byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = []byte(k)
	}
	return out
}

func (m messages) Merge(other mesh.GossipData) mesh.GossipData {
	merged := messages{}
	for k := range m {
		merged[k] = struct{}{}
	}
	for k := range other.(messages) {
		merged[k] = struct{}{}
	}
	return merged
}

// peer is the channel's Gossiper: it records what arrives.
type peer struct {
	mu       sync.Mutex
	seen     messages
	received []Received
}

func (p *peer) record(kind, from string, msg []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.received = append(p.received, Received{kind, from, string(msg)})
	if len(p.received) > maxReceived {
		p.received = p.received[len(p.received)-maxReceived:]
	}
	if _, dup := p.seen[string(msg)]; dup {
		return false
	}
	p.seen[string(msg)] = struct{}{}
	return true
}

func (p *peer) OnGossipUnicast(src mesh.PeerName, msg []byte) error {
	p.record("unicast", src.String(), msg)
	return nil
}

func (p *peer) OnGossipBroadcast(src mesh.PeerName, update []byte) (mesh.GossipData, error) {
	p.record("broadcast", src.String(), update)
	// Handed back so that the library relays it along the broadcast routes.
	return messages{string(update): {}}, nil
}

func (p *peer) Gossip() mesh.GossipData {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.seen) == 0 {
		return nil
	}
	return p.seen.Merge(messages{})
}

func (p *peer) OnGossip(msg []byte) (mesh.GossipData, error) {
	if !p.record("gossip", "", msg) {
		return nil, nil
	}
	return messages{string(msg): {}}, nil
}

// Snapshot is what gets written every interval.
type Snapshot struct {
	Time     string
	Status   *mesh.Status
	Received []Received
	Log      []string
}

func main() {
	name := flag.String("name", "", "peer name, a MAC address (required)")
	nick := flag.String("nickname", "", "nickname (default: the host name)")
	listen := flag.String("listen", "0.0.0.0:6783", "mesh listen address host:port")
	password := flag.String("password", "", "encrypt connections with this password")
	status := flag.String("status", "", "write the JSON snapshot to this file (default: a line on stdout)")
	interval := flag.Duration("interval", 250*time.Millisecond, "how often to write the snapshot")
	gossipEvery := flag.Duration("gossip-every", 0, "broadcast and unicast a message at this period (0: never)")
	noDiscovery := flag.Bool("no-discovery", false, "connect only to the given peers, not to peers learnt from the topology")
	flag.Parse()

	if err := run(*name, *nick, *listen, *password, *status, *interval, *gossipEvery, !*noDiscovery, flag.Args()); err != nil {
		fmt.Fprintf(os.Stderr, "weave-mesh-peer: %v\n", err)
		os.Exit(2)
	}
}

func run(nameStr, nick, listen, password, statusPath string, interval, gossipEvery time.Duration, discovery bool, peers []string) error {
	if nameStr == "" {
		return fmt.Errorf("-name is required (a MAC address such as 02:00:00:00:00:01)")
	}
	name, err := mesh.PeerNameFromString(nameStr)
	if err != nil {
		return fmt.Errorf("-name %q: %v", nameStr, err)
	}
	if nick == "" {
		nick, _ = os.Hostname()
	}
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("-listen %q is not host:port: %v", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 || port > 65535 {
		return fmt.Errorf("-listen %q: bad port", listen)
	}
	if interval <= 0 {
		return fmt.Errorf("-interval must be positive")
	}
	cfg := mesh.Config{
		Host:               host,
		Port:               port,
		ConnLimit:          64,
		ProtocolMinVersion: mesh.ProtocolMinVersion,
		PeerDiscovery:      discovery,
	}
	if password != "" {
		cfg.Password = []byte(password)
	}
	logger := &ringLogger{}
	router, err := mesh.NewRouter(cfg, name, nick, mesh.NullOverlay{}, logger)
	if err != nil {
		return fmt.Errorf("creating the router: %v", err)
	}
	state := &peer{seen: messages{}}
	channel, err := router.NewGossip(ChannelName, state)
	if err != nil {
		return fmt.Errorf("registering channel %s: %v", ChannelName, err)
	}
	router.Start()
	defer router.Stop()
	if errs := router.ConnectionMaker.InitiateConnections(peers, true); len(errs) > 0 {
		return fmt.Errorf("peer addresses: %v", errs)
	}
	logger.Printf("weave-mesh-peer %s(%s) listening on %s, peers %v", name, nick, listen, peers)

	if gossipEvery > 0 {
		go func() {
			for n := 1; ; n++ {
				time.Sleep(gossipEvery)
				channel.GossipBroadcast(messages{fmt.Sprintf("broadcast %d from %s", n, name): {}})
				for _, d := range router.Peers.Descriptions() {
					if d.Self {
						continue
					}
					msg := fmt.Sprintf("unicast %d from %s to %s", n, name, d.Name)
					if err := channel.GossipUnicast(d.Name, []byte(msg)); err != nil {
						logger.Printf("unicast to %s: %v", d.Name, err)
					}
				}
			}
		}()
	}

	for {
		state.mu.Lock()
		received := append([]Received(nil), state.received...)
		state.mu.Unlock()
		snap := Snapshot{
			Time:     time.Now().UTC().Format(time.RFC3339Nano),
			Status:   mesh.NewStatus(router),
			Received: received,
			Log:      logger.snapshot(),
		}
		data, err := json.Marshal(snap)
		if err != nil {
			return fmt.Errorf("encoding the snapshot: %v", err)
		}
		if statusPath == "" {
			fmt.Println(string(data))
		} else if err := writeAtomically(statusPath, data); err != nil {
			return err
		}
		time.Sleep(interval)
	}
}

// writeAtomically replaces path with data, so that readers never see a partial file.
func writeAtomically(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".weave-mesh-peer-*")
	if err != nil {
		return fmt.Errorf("writing the snapshot: %v", err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), path)
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing the snapshot to %s: %v", path, werr)
	}
	return nil
}
