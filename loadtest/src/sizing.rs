//! From what one run measured to how many nodes a target needs.
//!
//! The model is deliberately plain, and its assumptions are printed with every answer: a
//! node is a machine like this one; memory grows linearly with streams and CPU linearly with
//! deliveries; each server process can hold at most its open-files limit of streams.

use serde::Serialize;

/// Share of a node's memory planned for stream state; the rest covers the kernel's socket
/// buffers (not in the server's RSS), the OS and bursts.
pub const MEMORY_SHARE: f64 = 0.5;
/// Share of a node's CPU planned for deliveries, leaving headroom for reconnect storms.
pub const CPU_SHARE: f64 = 0.7;

/// Why memory per stream reads 0 B and the sizing's memory `-`: RSS did not grow while the
/// streams connected. A server reused from an earlier run with as many streams shows exactly
/// that (its allocator kept the memory those streams had), so the run measured nothing.
pub const NO_GROWTH: &str = "RSS did not grow while the streams connected: a server reused \
    from an earlier run keeps that run's memory; start a fresh one to measure memory per stream";

/// Whether a measured memory per stream is no measurement: it rounds to 0 B ([`NO_GROWTH`]).
pub fn grew_nothing(bytes_per_conn: Option<f64>) -> bool {
    bytes_per_conn.is_some_and(|b| b < 0.5)
}

/// What the run measured about one node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    /// Server RSS per established stream, bytes.
    pub bytes_per_conn: Option<f64>,
    /// Deliveries per second of server CPU time.
    pub deliveries_per_cpu_sec: Option<f64>,
    /// Streams one node can hold by open-files limits (sum over its server processes).
    pub fd_streams_per_node: Option<u64>,
    /// Memory of a node, bytes.
    pub node_memory_bytes: u64,
    /// Cores of a node.
    pub node_cores: u64,
}

/// The sizing report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sizing {
    /// Streams one GiB of server memory holds.
    pub streams_per_gib: Option<f64>,
    /// Deliveries per server CPU-second.
    pub deliveries_per_cpu_sec: Option<f64>,
    /// Nodes for the `--plan` target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<NodePlan>,
}

/// Nodes needed for a target, by each limit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodePlan {
    /// Target streams.
    pub streams: u64,
    /// Target messages per second (each goes to every stream).
    pub msgs_per_sec: f64,
    /// Streams × messages per second.
    pub deliveries_per_sec: f64,
    /// Streams one node holds within `MEMORY_SHARE` of its memory.
    pub streams_per_node_by_memory: Option<u64>,
    /// Deliveries per second one node makes within `CPU_SHARE` of its cores.
    pub deliveries_per_node_by_cpu: Option<f64>,
    /// Streams one node holds by open-files limits.
    pub streams_per_node_by_fds: Option<u64>,
    /// Nodes for memory, CPU and descriptors; the answer is the largest.
    pub nodes_for_memory: Option<u64>,
    /// See `nodes_for_memory`.
    pub nodes_for_cpu: Option<u64>,
    /// See `nodes_for_memory`.
    pub nodes_for_fds: Option<u64>,
    /// Nodes needed (before any redundancy you want on top).
    pub nodes: Option<u64>,
    /// The assumptions, in words.
    pub assumptions: Vec<String>,
}

/// Builds the sizing report.
pub fn size(m: &Measured, target: Option<(u64, f64)>) -> Sizing {
    let gib = (1u64 << 30) as f64;
    let bytes_per_conn = m.bytes_per_conn.filter(|_| !grew_nothing(m.bytes_per_conn));
    let streams_per_gib = bytes_per_conn.map(|b| gib / b);
    let plan = target.map(|(streams, msgs_per_sec)| {
        let deliveries_per_sec = streams as f64 * msgs_per_sec;
        let by_memory = bytes_per_conn.map(|b| (m.node_memory_bytes as f64 * MEMORY_SHARE / b) as u64);
        let by_cpu = m
            .deliveries_per_cpu_sec
            .map(|d| d * m.node_cores as f64 * CPU_SHARE);
        let nodes_for = |capacity: Option<f64>, need: f64| {
            capacity.map(|c| if need <= 0.0 { 1 } else { (need / c.max(1e-9)).ceil().max(1.0) as u64 })
        };
        let nodes_for_memory = nodes_for(by_memory.map(|s| s as f64), streams as f64);
        let nodes_for_cpu = nodes_for(by_cpu, deliveries_per_sec);
        let nodes_for_fds = nodes_for(m.fd_streams_per_node.map(|s| s as f64), streams as f64);
        let nodes = [nodes_for_memory, nodes_for_cpu, nodes_for_fds].into_iter().flatten().max();
        let mut assumptions = vec![
            format!(
                "a node is this machine: {} cores, {:.1} GiB",
                m.node_cores,
                m.node_memory_bytes as f64 / gib
            ),
            format!(
                "stream state may use {:.0} % of a node's memory (the rest: kernel socket buffers, OS, bursts)",
                MEMORY_SHARE * 100.0
            ),
            format!(
                "deliveries may use {:.0} % of a node's CPU, so the server must use every core (--shards auto, or a process per core)",
                CPU_SHARE * 100.0
            ),
            "server memory grows linearly with streams and CPU with deliveries, as measured here"
                .to_owned(),
            "the load generator shared this machine's CPU with the server during the run".to_owned(),
            "no redundancy: add nodes for the failure of one".to_owned(),
        ];
        if let Some(fds) = m.fd_streams_per_node {
            assumptions.push(format!(
                "each server process holds at most its open-files limit of streams: {fds} per node with the processes measured"
            ));
        }
        if grew_nothing(m.bytes_per_conn) {
            assumptions.push(
                "memory per stream was not measured (RSS did not grow while the streams \
                 connected, as on a server reused from an earlier run): that limit is left out"
                    .to_owned(),
            );
        }
        if m.bytes_per_conn.is_none() || m.deliveries_per_cpu_sec.is_none() {
            assumptions.push(
                "memory or CPU was not measured (--server-pid, a publisher): that limit is left out"
                    .to_owned(),
            );
        }
        NodePlan {
            streams,
            msgs_per_sec,
            deliveries_per_sec,
            streams_per_node_by_memory: by_memory,
            deliveries_per_node_by_cpu: by_cpu,
            streams_per_node_by_fds: m.fd_streams_per_node,
            nodes_for_memory,
            nodes_for_cpu,
            nodes_for_fds,
            nodes,
            assumptions,
        }
    });
    Sizing {
        streams_per_gib,
        deliveries_per_cpu_sec: m.deliveries_per_cpu_sec,
        plan,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tightest_limit_decides() {
        let m = Measured {
            bytes_per_conn: Some(8192.0),
            deliveries_per_cpu_sec: Some(1_000_000.0),
            fd_streams_per_node: Some(19_990),
            node_memory_bytes: 24 << 30,
            node_cores: 2,
        };
        let s = size(&m, Some((200_000, 5.0)));
        assert_eq!(s.streams_per_gib, Some(131_072.0));
        let p = s.plan.unwrap();
        // Memory: 12 GiB / 8 KiB = 1.57M streams per node → 1 node.
        assert_eq!(p.nodes_for_memory, Some(1));
        // CPU: 1M streams·msgs/s need 1M / 1.4M per node → 1 node.
        assert_eq!(p.nodes_for_cpu, Some(1));
        // Descriptors: 200k / 19,990 → 11 nodes.
        assert_eq!(p.nodes_for_fds, Some(11));
        assert_eq!(p.nodes, Some(11));
        assert!(p.assumptions.iter().any(|a| a.contains("2 cores")));
    }

    #[test]
    fn unmeasured_limits_are_left_out() {
        let m = Measured {
            node_memory_bytes: 1 << 30,
            node_cores: 1,
            ..Measured::default()
        };
        let s = size(&m, Some((10, 1.0)));
        assert_eq!(s.streams_per_gib, None);
        assert_eq!(s.plan.unwrap().nodes, None);
        assert!(size(&m, None).plan.is_none());
    }

    #[test]
    fn a_server_whose_memory_did_not_grow_says_why_memory_is_left_out() {
        let m = Measured {
            bytes_per_conn: Some(0.0),
            deliveries_per_cpu_sec: Some(1_000_000.0),
            node_memory_bytes: 1 << 30,
            node_cores: 1,
            ..Measured::default()
        };
        let s = size(&m, Some((10_000, 1.0)));
        assert_eq!(s.streams_per_gib, None);
        let p = s.plan.unwrap();
        assert_eq!(p.nodes_for_memory, None);
        assert_eq!(p.nodes, Some(1), "CPU still decides");
        assert!(
            p.assumptions
                .iter()
                .any(|a| a.contains("reused from an earlier run")),
            "{:?}",
            p.assumptions
        );
    }
}
