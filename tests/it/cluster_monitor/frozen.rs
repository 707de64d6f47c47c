//! Freezing a node with SIGSTOP, to show that a hung node delays nobody.

use pgsidecar::demo::Node;

/// Every process of a node stopped with SIGSTOP (the postmaster alone would
/// leave existing sessions answering); SIGCONT on drop, also on panic.
pub struct Frozen(Vec<i32>);

impl Frozen {
    pub fn new(node: &Node) -> Frozen {
        let postmaster = node.pid().unwrap_or_else(|e| panic!("postmaster pid: {e}")) as i32;
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        for pid in &pids {
            // SAFETY: kill has no memory preconditions; the pids are this
            // test's own server processes.
            unsafe { libc::kill(*pid, libc::SIGSTOP) };
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: as above.
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
    }
}

/// Pids whose parent is `parent`, from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // "pid (comm) state ppid ...": comm may hold spaces, so split
            // after its closing parenthesis.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            ppid == Some(parent)
        })
        .collect()
}
