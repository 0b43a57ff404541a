//! Nodes on separate hosts: network namespaces joined by a virtual bridge,
//! one node process in each (`plexus-netns-node`, run with `ip netns
//! exec`). Shows beacon discovery across hosts (multicast stays inside the
//! namespaces), role wiring, a broadcast, a host lost when its link goes
//! down, a listener on a name of two addresses, and a dial that moves on
//! from a dead address.
//!
//! Needs root and `ip` (iproute2); skips with a message where namespaces
//! cannot be made. Ignored in the default run; `.ci/run` runs it with
//! `cargo test -p plexus-tests --test multi_host -- --ignored`.
//!
//! Everything it makes has a name unique to this process and is removed
//! when the test ends, pass or fail (see [`Lab`]'s `Drop`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest any one step may take.
const STEP: Duration = Duration::from_secs(20);

/// Runs `ip` with `args`; the error says what failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces, links and files of one test; removed on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    hosts_files: Vec<PathBuf>,
    created_netns_dir: bool,
    nodes: Vec<Child>,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            prefix: format!("pxmh{}", std::process::id()),
            namespaces: Vec::new(),
            hosts_files: Vec::new(),
            created_netns_dir: false,
            nodes: Vec::new(),
        }
    }

    fn netns(&mut self, suffix: &str) -> Result<String, String> {
        let name = format!("{}{suffix}", self.prefix);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        Ok(name)
    }

    /// The bridge namespace, and `n` hosts on it at 10.77.0.1, .2, …
    fn build(&mut self, n: usize) -> Result<(String, Vec<String>), String> {
        let switch = self.netns("s")?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        // No IGMP querier here: flood multicast to every port.
        ip(&[
            "-n",
            &switch,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        let mut hosts = Vec::new();
        for i in 0..n {
            let host = self.netns(&format!("h{i}"))?;
            let port = format!("p{i}");
            ip(&[
                "link", "add", &port, "netns", &switch, "type", "veth", "peer", "name", "eth0",
                "netns", &host,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
            let addr = format!("10.77.0.{}/24", i + 1);
            ip(&["-n", &host, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            hosts.push(host);
        }
        Ok((switch, hosts))
    }

    /// Gives `ns` its own `/etc/hosts` (what `ip netns exec` mounts).
    fn hosts_file(&mut self, ns: &str, text: &str) -> Result<(), String> {
        let root = PathBuf::from("/etc/netns");
        if !root.exists() {
            self.created_netns_dir = true;
        }
        let dir = root.join(ns);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let file = dir.join("hosts");
        std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        self.hosts_files.push(dir);
        Ok(())
    }

    /// Starts a node process in `ns`.
    fn node(&mut self, ns: &str, args: &[&str]) -> Host {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_plexus-netns-node")])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the node process starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.nodes.push(child);
        let mut host = Host {
            stdin,
            lines,
            id: String::new(),
            seen: Vec::new(),
        };
        let ready = host.expect("READY", |l| l.starts_with("READY "));
        host.id = ready
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        host
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace removes its links (and a veth's other end).
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
        for dir in &self.hosts_files {
            let _ = std::fs::remove_dir_all(dir);
        }
        if self.created_netns_dir {
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }
}

/// One node process: commands in, report lines out.
struct Host {
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    id: String,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Host {
    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("the node reads commands");
    }

    /// The first line (already seen, or coming within the bound) that
    /// `want` accepts.
    fn wait_for(&mut self, what: &str, bound: Duration, want: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| want(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no {what} within {bound:?}; saw {:#?}", self.seen),
            }
        }
    }

    fn expect(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        self.wait_for(what, STEP, want)
    }

    /// Sends `command` and collects its answer up to the line `last` accepts.
    fn ask(&mut self, command: &str, last: impl Fn(&str) -> bool) -> Vec<String> {
        let from = self.seen.len();
        self.send(command);
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {command}; saw {:#?}", self.seen));
            self.seen.push(line.clone());
            if last(&line) {
                return self.seen[from..].to_vec();
            }
        }
    }
}

#[test]
#[ignore = "makes network namespaces (needs root and iproute2); .ci/run runs it"]
fn nodes_on_three_hosts_discover_wire_broadcast_and_notice_a_lost_host() {
    let mut lab = Lab::new();
    let (switch, hosts) = match lab.build(3) {
        Ok(built) => built,
        Err(why) => {
            eprintln!("skipping the multi-host test: cannot make network namespaces here ({why})");
            return;
        }
    };
    // Host 0 may call host 2 by a name that also stands for host 1's
    // address (in that order); host 1 listens on a name of two addresses.
    lab.hosts_file(&hosts[0], "10.77.0.3 both-hosts\n10.77.0.2 both-hosts\n")
        .expect("hosts file");
    ip(&[
        "-n",
        &hosts[1],
        "addr",
        "add",
        "10.77.0.12/24",
        "dev",
        "eth0",
    ])
    .expect("second address");
    lab.hosts_file(&hosts[1], "10.77.0.2 me\n10.77.0.12 me\n")
        .expect("hosts file");
    let group = "239.255.77.7";
    let common = ["--multicast-group", group, "--port", "47477"];
    let mut nodes: Vec<Host> = Vec::new();
    for (i, ns) in hosts.iter().enumerate() {
        let name = format!("host-{i}");
        let ip_addr = format!("10.77.0.{}", i + 1);
        let role = if i == 0 { "publisher" } else { "subscriber" };
        let listen = if i == 1 {
            "tcp://me:47100".to_owned()
        } else {
            format!("tcp://{ip_addr}:47100")
        };
        let mut args = vec![
            "--name", &name, "--ip", &ip_addr, "--role", role, "--listen", &listen,
        ];
        args.extend_from_slice(&common);
        let node = lab.node(ns, &args);
        nodes.push(node);
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let name_of: BTreeMap<String, String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("host-{i}")))
        .collect();

    // Discovery across hosts: each hears the other two by beacon.
    for (i, node) in nodes.iter_mut().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                node.expect(&format!("host-{i} discovers host-{j}"), |l| {
                    l == format!("DISCOVERED {id} host-{j}")
                });
                node.expect(&format!("host-{i} links host-{j}"), |l| {
                    l == format!("LINKED multihost.Site {id}")
                });
            }
        }
    }

    // Role wiring: subscribers link the publisher, never each other.
    let feed = |node: &mut Host| -> BTreeSet<String> {
        let answer = node.ask("feed", |l| l.starts_with("FEED"));
        answer
            .last()
            .expect("a FEED line")
            .split_whitespace()
            .skip(1)
            .map(|id| name_of.get(id).cloned().unwrap_or_else(|| id.to_owned()))
            .collect()
    };
    for (i, id) in ids.iter().enumerate().skip(1) {
        nodes[0].expect(&format!("the publisher links host-{i}"), |l| {
            l == format!("LINKED multihost.Feed {id}")
        });
    }
    assert_eq!(
        feed(&mut nodes[0]),
        BTreeSet::from(["host-1".to_owned(), "host-2".to_owned()])
    );
    assert_eq!(feed(&mut nodes[1]), BTreeSet::from(["host-0".to_owned()]));
    assert_eq!(feed(&mut nodes[2]), BTreeSet::from(["host-0".to_owned()]));

    // A broadcast reaches the other hosts.
    let answer = nodes[0].ask("broadcast", |l| l.starts_with("BROADCAST"));
    let replies: BTreeSet<String> = answer
        .iter()
        .filter_map(|l| l.strip_prefix("REPLY "))
        .map(|r| r.split_whitespace().nth(1).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        replies,
        BTreeSet::from(["host-1".to_owned(), "host-2".to_owned()])
    );
    assert_eq!(answer.last().map(String::as_str), Some("BROADCAST 2 0"));

    // A listener on a name binds every address; both reach host 1.
    for addr in ["10.77.0.2", "10.77.0.12"] {
        let answer = nodes[0].ask(&format!("dial tcp://{addr}:47100"), |l| {
            l.starts_with("DIAL")
        });
        assert_eq!(
            answer.last().cloned(),
            Some(format!("DIALED {}", ids[1])),
            "host 1 at {addr}"
        );
    }

    // Host 2's link goes down: the others report it lost within the
    // beacon's bound (lost after 5 intervals of 200 ms, checked every
    // 100 ms), with slack for a loaded machine.
    let started = Instant::now();
    ip(&["-n", &switch, "link", "set", "p2", "down"]).expect("link down");
    for node in nodes.iter_mut().take(2) {
        let lost = format!("LOST {}", ids[2]);
        node.wait_for("host 2 lost", Duration::from_secs(10), |l| l == lost);
    }
    let took = started.elapsed();
    eprintln!("host 2 reported lost by both others {took:?} after its link went down");

    // Dialing a name whose first address is that dead host moves on to
    // the next address: host 1 answers.
    let answer = nodes[0].ask("dial tcp://both-hosts:47100", |l| l.starts_with("DIAL"));
    assert_eq!(answer.last().cloned(), Some(format!("DIALED {}", ids[1])));

    for node in &mut nodes {
        node.send("quit");
    }
}
